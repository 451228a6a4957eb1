import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { waitUntil } from '../shared/wait.js';
import { BENCH_EVENTS_QUEUE } from './app.js';
import { busyPct, machineCpuTimes } from './children.js';
import { type BenchEnv, truncateRunTables } from './env.js';
import { BenchPublisher, NOTE } from './publish.js';
import { steadyRate } from './stats.js';
import { benchWait, countRows } from './wait.js';
import { peakRssMb, startWorkers, stopWorkers } from './workers.js';

export interface PipelineSettings {
  messages: number;
  warmup: number;
  /** `dw worker --concurrency` of each worker process. */
  concurrency: number;
  /** `dw worker` processes draining the queue side by side; the baselines run workers x concurrency loops. */
  workers: number;
  /** Messages per transaction of the raw batched baseline (the worker's batch size). */
  batchSize: number;
  /**
   * The message type the worker drains: `BenchPipeline` (a handler per message) or
   * `BenchPipelineBatch` (a batch handler, one multi-row business insert per batch).
   * @defaultValue 'BenchPipeline'
   */
  type?: PipelineType;
  /** Extra `dw worker` arguments (`--batch-size` when given, tuning experiments). */
  workerArgs: readonly string[];
  nodeArgs: readonly string[];
}

export type PipelineType = 'BenchPipeline' | 'BenchPipelineBatch';

export interface WorkerRun {
  perSec: number;
  peakRssMb: number;
  /** Busy share of all cores (whole machine) while the workers drained the queue, in percent. */
  machineBusyPct: number;
  /** CPU time of the worker processes per message handled meanwhile (start-up left out). */
  workerCpuMsPerMessage: number;
}

/**
 * Worker drain rate: N messages are queued in RabbitMQ first, then fresh `dw worker` processes drain
 * them (the relay is not running, so the outbox only grows). The rate is taken from the business rows'
 * clock_timestamp from the W-th row committed after the last worker was ready to the last row:
 * start-up and JIT warm-up are left out, every per-message cost (consume, validate, transaction, ack)
 * is in.
 */
export async function measureWorker(env: BenchEnv, settings: PipelineSettings): Promise<WorkerRun> {
  await truncateRunTables(env.knex);
  const total = settings.messages + settings.warmup;
  const type = settings.type ?? 'BenchPipeline';
  await publishPipeline(env, type, 0, total);
  const stored = () => countRows(env.knex, 'select count(*)::int as n from bench_items');
  const { workers, readyAtMs } = await startWorkers(
    env,
    settings.workers,
    ['--concurrency', String(settings.concurrency), ...settings.workerArgs],
    settings.nodeArgs,
  );
  let cpu = { machineBusyPct: Number.NaN, workerCpuMsPerMessage: Number.NaN };
  try {
    const cpuAtReady = workers.reduce((sum, w) => sum + w.cpuSeconds(), 0);
    const machineAtReady = machineCpuTimes();
    // Workers become ready one after the other: what the first ones drained before the last was
    // ready is published again (behind the rest of the queue), so that the whole measured window,
    // which starts then, still holds `total` messages.
    const storedAtReady = await stored();
    await publishPipeline(env, type, total, storedAtReady);
    const target = total + storedAtReady;
    await waitUntil(async () => (await stored()) >= target, `the worker to handle ${target} messages`, {
      ...benchWait,
      intervalMs: 100,
    });
    const workerCpu = workers.reduce((sum, w) => sum + w.cpuSeconds(), 0) - cpuAtReady;
    cpu = {
      machineBusyPct: busyPct(machineAtReady, machineCpuTimes()),
      workerCpuMsPerMessage: (workerCpu * 1000) / (target - storedAtReady),
    };
  } finally {
    await stopWorkers(workers);
  }
  return {
    perSec: await rateFromItems(env, settings.warmup, readyAtMs),
    peakRssMb: peakRssMb(workers),
    ...cpu,
  };
}

/** `count` pipeline messages of `type` with seq from `first`, published and confirmed. */
async function publishPipeline(
  env: BenchEnv,
  type: PipelineType,
  first: number,
  count: number,
): Promise<void> {
  if (count === 0) return;
  const publisher = await BenchPublisher.open(env.services.amqpUrl, env.exchange, env.queueType);
  try {
    const sentAt = Date.now();
    await publisher.publishAll(
      (function* () {
        for (let seq = first; seq < first + count; seq++) {
          yield { type, payload: { seq, sentAt, note: NOTE } };
        }
      })(),
    );
  } finally {
    await publisher.close();
  }
}

async function rateFromItems(env: BenchEnv, warmup: number, notBeforeMs?: number): Promise<number> {
  const { rows } = await env.knex.raw<{ rows: Array<{ t: number }> }>(
    'select extract(epoch from committed_at) * 1000 as t from bench_items order by committed_at',
  );
  return steadyRate(
    rows.map((r) => Number(r.t)),
    warmup,
    notBeforeMs,
  );
}

/**
 * The baseline a user would write by hand: the same three inserts (inbox, business row, outbox row
 * with the same payload), one `pg` transaction per message, from this process with as many
 * connections as the workers have handlers in all, measured the same way.
 */
export async function measurePipelineBaseline(env: BenchEnv, settings: PipelineSettings): Promise<number> {
  return runBaseline(env, settings, 1, async (client, items) => {
    const [item] = items;
    await client.query(
      'insert into dw_inbox (consumer, message_id) values ($1, $2) on conflict (consumer, message_id) do nothing returning message_id',
      ['baseline', item!.messageId],
    );
    await client.query('insert into bench_items (message_id, seq, sent_at_ms) values ($1, $2, $3)', [
      item!.messageId,
      item!.seq,
      item!.sentAt,
    ]);
    await client.query(
      `insert into dw_outbox (message_id, destination_kind, destination, routing_key, type, payload, headers, options)
       values ($1, 'bullmq', $2, null, 'BenchItemStored', $3, $4, '{}') on conflict (message_id) do nothing`,
      outboxValues(item!),
    );
  });
}

/**
 * The physical limit: the same three inserts for `batchSize` messages at once, each one multi-row
 * statement (the inbox insert returning the new ids, as a batch must, to tell duplicates apart), in
 * one transaction: five round trips and one WAL flush per batch instead of per message. Same
 * connections as the per-message baseline.
 */
export async function measurePipelineBatchedBaseline(
  env: BenchEnv,
  settings: PipelineSettings,
): Promise<number> {
  return runBaseline(env, settings, settings.batchSize, async (client, items) => {
    const rows = (columns: number) =>
      items
        .map((_, i) => `(${Array.from({ length: columns }, (_, c) => `$${i * columns + c + 1}`).join(', ')})`)
        .join(', ');
    await client.query(
      `insert into dw_inbox (consumer, message_id) values ${rows(2)}
       on conflict (consumer, message_id) do nothing returning message_id`,
      items.flatMap((item) => ['baseline', item.messageId]),
    );
    await client.query(
      `insert into bench_items (message_id, seq, sent_at_ms) values ${rows(3)}`,
      items.flatMap((item) => [item.messageId, item.seq, item.sentAt]),
    );
    const outbox = items
      .map(
        (_, i) =>
          `($${4 * i + 1}, 'bullmq', $${4 * i + 2}, null, 'BenchItemStored', $${4 * i + 3}, $${4 * i + 4}, '{}')`,
      )
      .join(', ');
    await client.query(
      `insert into dw_outbox (message_id, destination_kind, destination, routing_key, type, payload, headers, options)
       values ${outbox} on conflict (message_id) do nothing`,
      items.flatMap(outboxValues),
    );
  });
}

interface BaselineItem {
  messageId: string;
  seq: number;
  sentAt: number;
}

function outboxValues(item: BaselineItem): string[] {
  return [
    randomUUID(),
    BENCH_EVENTS_QUEUE,
    JSON.stringify({ seq: item.seq, note: NOTE }),
    JSON.stringify({ correlationId: item.messageId, causationId: item.messageId }),
  ];
}

/**
 * `workers x concurrency` loops, each on its own connection, take `perTransaction` messages at a
 * time and write them in one transaction (`begin`, `write`, `commit`) until all are stored.
 */
async function runBaseline(
  env: BenchEnv,
  settings: PipelineSettings,
  perTransaction: number,
  write: (client: pg.PoolClient, items: readonly BaselineItem[]) => Promise<void>,
): Promise<number> {
  await truncateRunTables(env.knex);
  const loops = settings.workers * settings.concurrency;
  const pool = new pg.Pool({
    connectionString: env.databaseUrl,
    max: loops,
    application_name: 'dw-bench-baseline',
  });
  const total = settings.messages + settings.warmup;
  const sentAt = Date.now();
  let next = 0;
  const loop = async () => {
    const client = await pool.connect();
    try {
      while (next < total) {
        const items: BaselineItem[] = [];
        for (; items.length < perTransaction && next < total; next++) {
          items.push({ messageId: randomUUID(), seq: next, sentAt });
        }
        await client.query('begin');
        await write(client, items);
        await client.query('commit');
      }
    } finally {
      client.release();
    }
  };
  try {
    await Promise.all(Array.from({ length: loops }, loop));
  } finally {
    await pool.end();
  }
  const done = await countRows(env.knex, 'select count(*)::int as n from bench_items');
  if (done !== total) throw new Error(`bench: the baseline stored ${done} of ${total} rows`);
  return rateFromItems(env, settings.warmup);
}
