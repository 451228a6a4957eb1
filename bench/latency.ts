import { randomUUID } from 'node:crypto';
import { waitUntil } from '../shared/wait.js';
import type { BenchEnv } from './env.js';
import { BenchPublisher, NOTE } from './publish.js';
import { sagasCompleted } from './saga.js';
import { percentile } from './stats.js';
import { benchWait, countRows } from './wait.js';

export interface LatencySettings {
  ratePerSec: number;
  durationSec: number;
  /** Samples published in the first second are left out (connections and JIT warming up). */
  warmupSec: number;
}

export interface LatencyResult {
  p50Ms: number;
  p99Ms: number;
  samples: number;
}

/** Publishes one message every 1/rate s, on a fixed schedule (no drift); returns id -> sentAt. */
async function paced(
  env: BenchEnv,
  settings: LatencySettings,
  make: (seq: number, sentAt: number) => { type: string; payload: unknown; id: string },
): Promise<Map<string, number>> {
  const publisher = await BenchPublisher.open(env.services.amqpUrl, env.exchange, env.queueType);
  const sent = new Map<string, number>();
  const confirms: Promise<void>[] = [];
  const count = Math.round(settings.ratePerSec * settings.durationSec);
  const interval = 1000 / settings.ratePerSec;
  const start = performance.now();
  try {
    for (let seq = 0; seq < count; seq++) {
      const wait = start + seq * interval - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      const sentAt = Date.now();
      const message = make(seq, sentAt);
      if (seq >= settings.warmupSec * settings.ratePerSec) sent.set(message.id, sentAt);
      confirms.push(publisher.publishNow(message));
    }
    await Promise.all(confirms);
  } finally {
    await publisher.close();
  }
  return sent;
}

/** Light load: publish -> the handler's business row committed (its clock_timestamp). */
export async function measureHandlerLatency(
  env: BenchEnv,
  settings: LatencySettings,
): Promise<LatencyResult> {
  const before = await countRows(env.knex, 'select count(*)::int as n from bench_items');
  const count = Math.round(settings.ratePerSec * settings.durationSec);
  const sent = await paced(env, settings, (seq, sentAt) => ({
    id: randomUUID(),
    type: 'BenchPipeline',
    payload: { seq, sentAt, note: NOTE },
  }));
  await waitUntil(
    async () => (await countRows(env.knex, 'select count(*)::int as n from bench_items')) >= before + count,
    'the latency messages to be handled',
    benchWait,
  );
  const { rows } = await env.knex.raw<{ rows: Array<{ message_id: string; t: number }> }>(
    'select message_id, extract(epoch from committed_at) * 1000 as t from bench_items where message_id = any(?)',
    [[...sent.keys()]],
  );
  const latencies = rows.map((r) => Number(r.t) - sent.get(r.message_id)!);
  return { p50Ms: percentile(latencies, 50), p99Ms: percentile(latencies, 99), samples: latencies.length };
}

/** Light load: publish -> the saga row says completed (its updated_at). */
export async function measureSagaLatency(env: BenchEnv, settings: LatencySettings): Promise<LatencyResult> {
  const sent = await paced(env, settings, (seq, sentAt) => ({
    id: randomUUID(),
    type: 'BenchSaga',
    payload: { seq, sentAt },
  }));
  const ids = [...sent.keys()];
  await sagasCompleted(env, ids, 'the latency sagas to complete');
  const { rows } = await env.knex.raw<{ rows: Array<{ id: string; t: number }> }>(
    'select id, extract(epoch from updated_at) * 1000 as t from dw_sagas where id = any(?)',
    [ids],
  );
  const latencies = rows.map((r) => Number(r.t) - sent.get(r.id)!);
  return { p50Ms: percentile(latencies, 50), p99Ms: percentile(latencies, 99), samples: latencies.length };
}
