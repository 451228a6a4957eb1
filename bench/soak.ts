import os from 'node:os';
import amqp from 'amqplib';
import type { BenchEnv } from './env.js';
import { truncateRunTables } from './env.js';
import { startLive } from './live.js';
import { progress } from './progress.js';
import { BenchPublisher, NOTE } from './publish.js';
import { goals } from './report.js';
import { round } from './stats.js';
import { countRows } from './wait.js';

export interface SoakSettings {
  minutes: number;
  concurrency: number;
  workerArgs: readonly string[];
  relayArgs: readonly string[];
  nodeArgs: readonly string[];
  /** Messages kept waiting in the work queue, so the worker never idles. Default 2000. */
  backlog?: number;
}

export interface SoakMinute {
  minute: number;
  handledPerSec: number;
  relayedPerSec: number;
  workerRssMb: number;
  relayRssMb: number;
  inboxRows: number;
  outboxRows: number;
}

export interface SoakReport {
  soak: {
    minutes: SoakMinute[];
    /** Mean of the second half of the minutes against the first half, in percent. */
    handledChangePct: number;
    relayedChangePct: number;
    workerRssChangePct: number;
    relayRssChangePct: number;
    machine: string;
  };
  /** Worker RSS flat: the second half's mean at most goals.soakRssGrowthPct above the first half's. */
  goals: { workerRssFlat: boolean };
}

/**
 * Steady load at saturation: the work queue is kept topped up (the worker never waits for work)
 * while the relay drains the outbox into BullMQ; the inbox and the outbox grow all along (nothing
 * prunes them within the run). Per minute: rates and the current RSS of both processes.
 */
export async function runSoak(
  env: BenchEnv,
  settings: SoakSettings,
): Promise<{ table: string; report: SoakReport }> {
  await truncateRunTables(env.knex);
  const backlog = settings.backlog ?? 2000;
  const live = await startLive(env, settings);
  const publisher = await BenchPublisher.open(env.services.amqpUrl, env.exchange, env.queueType);
  const connection = await amqp.connect(env.services.amqpUrl);
  // A broker-side error ends the top-up loop (its awaited call rejects), not the process.
  connection.on('error', () => {});
  const channel = await connection.createChannel();
  channel.on('error', () => {});
  const queue = `${env.exchange}.bench`;
  const minutes: SoakMinute[] = [];
  let seq = 0;
  let stop = false;
  const topUp = (async () => {
    while (!stop) {
      const { messageCount } = await channel.checkQueue(queue);
      const missing = Math.min(backlog - messageCount, 1000);
      if (missing > 0) {
        const sentAt = Date.now();
        await publisher.publishAll(
          Array.from({ length: missing }, () => ({
            type: 'BenchPipeline',
            payload: { seq: seq++, sentAt, note: NOTE },
          })),
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  })();
  const counts = async () => ({
    handled: await countRows(env.knex, 'select count(*)::int as n from bench_items'),
    relayed: await countRows(
      env.knex,
      'select count(*)::int as n from dw_outbox where delivered_at is not null',
    ),
    outbox: await countRows(env.knex, 'select count(*)::int as n from dw_outbox'),
    inbox: await countRows(env.knex, 'select count(*)::int as n from dw_inbox'),
  });
  try {
    let last = await counts();
    let lastAt = performance.now();
    for (let minute = 1; minute <= settings.minutes; minute++) {
      const until = lastAt + 60_000;
      while (performance.now() < until) {
        progress(
          `soak minute ${minute}/${settings.minutes}: worker RSS ${live.worker.rssMb().toFixed(0)} MB, relay RSS ${live.relay.rssMb().toFixed(0)} MB`,
        );
        await new Promise((resolve) => setTimeout(resolve, Math.min(5000, until - performance.now())));
      }
      const now = await counts();
      const at = performance.now();
      const seconds = (at - lastAt) / 1000;
      const row: SoakMinute = {
        minute,
        handledPerSec: round((now.handled - last.handled) / seconds, 1),
        relayedPerSec: round((now.relayed - last.relayed) / seconds, 1),
        workerRssMb: round(live.worker.rssMb(), 1),
        relayRssMb: round(live.relay.rssMb(), 1),
        inboxRows: now.inbox,
        outboxRows: now.outbox,
      };
      minutes.push(row);
      progress(
        `soak minute ${minute}: ${row.handledPerSec} handled/s, ${row.relayedPerSec} relayed/s, RSS ${row.workerRssMb} / ${row.relayRssMb} MB, inbox ${row.inboxRows} rows`,
      );
      last = now;
      lastAt = at;
    }
  } finally {
    stop = true;
    await topUp.catch(() => {});
    await channel.close().catch(() => {});
    await connection.close().catch(() => {});
    await publisher.close();
    await live.stop();
  }
  // Halves, not first and last minute: one noisy minute must not decide "flat".
  const half = Math.max(1, Math.floor(minutes.length / 2));
  const mean = (rows: SoakMinute[], key: keyof SoakMinute) =>
    rows.reduce((sum, m) => sum + m[key], 0) / rows.length;
  const firstHalf = minutes.slice(0, half);
  const secondHalf = minutes.slice(-half);
  const change = (key: keyof SoakMinute) =>
    round(((mean(secondHalf, key) - mean(firstHalf, key)) / mean(firstHalf, key)) * 100, 1);
  const report: SoakReport = {
    soak: {
      minutes,
      handledChangePct: change('handledPerSec'),
      relayedChangePct: change('relayedPerSec'),
      workerRssChangePct: change('workerRssMb'),
      relayRssChangePct: change('relayRssMb'),
      machine: `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}`,
    },
    goals: { workerRssFlat: change('workerRssMb') <= goals.soakRssGrowthPct },
  };
  const header =
    '| minute | handled/s | relayed/s | worker RSS MB | relay RSS MB | inbox rows | outbox rows |';
  const rule = '|---|---|---|---|---|---|---|';
  const lines = minutes.map(
    (m) =>
      `| ${m.minute} | ${m.handledPerSec} | ${m.relayedPerSec} | ${m.workerRssMb} | ${m.relayRssMb} | ${m.inboxRows} | ${m.outboxRows} |`,
  );
  const verdict = `worker RSS second half vs first half: ${report.soak.workerRssChangePct} % (goal: flat, at most +${goals.soakRssGrowthPct} %): ${report.goals.workerRssFlat ? 'met' : 'NOT met'}`;
  return { table: [header, rule, ...lines, '', verdict].join('\n'), report };
}
