import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { waitUntil } from '../shared/wait.js';
import { BENCH_EVENTS_QUEUE } from './app.js';
import { DwProcess } from './children.js';
import { type BenchEnv, truncateRunTables } from './env.js';
import { BenchPublisher, NOTE } from './publish.js';
import { steadyRate } from './stats.js';
import { benchWait, countRows } from './wait.js';

export interface PipelineSettings {
  messages: number;
  warmup: number;
  concurrency: number;
  /** Extra `dw worker` arguments (tuning experiments). */
  workerArgs: readonly string[];
  nodeArgs: readonly string[];
}

/**
 * Worker drain rate: N messages are queued in RabbitMQ first, then a fresh `dw worker` drains them
 * (the relay is not running, so the outbox only grows). The rate is taken from the business rows'
 * clock_timestamp between the W-th and the last row: start-up and JIT warm-up are left out, every
 * per-message cost (consume, validate, transaction, ack) is in.
 */
export async function measureWorker(
  env: BenchEnv,
  settings: PipelineSettings,
): Promise<{ perSec: number; peakRssMb: number }> {
  await truncateRunTables(env.knex);
  const publisher = await BenchPublisher.open(env.services.amqpUrl, env.exchange);
  try {
    const total = settings.messages + settings.warmup;
    const sentAt = Date.now();
    await publisher.publishAll(
      (function* () {
        for (let seq = 0; seq < total; seq++) {
          yield { type: 'BenchPipeline', payload: { seq, sentAt, note: NOTE } };
        }
      })(),
    );
  } finally {
    await publisher.close();
  }
  const worker = await DwProcess.start(
    'worker',
    ['worker', '--concurrency', String(settings.concurrency), ...settings.workerArgs],
    env.childEnv(),
    'worker started',
    settings.nodeArgs,
  );
  try {
    const total = settings.messages + settings.warmup;
    await waitUntil(
      async () => (await countRows(env.knex, 'select count(*)::int as n from bench_items')) >= total,
      `the worker to handle ${total} messages`,
      { ...benchWait, intervalMs: 100 },
    );
  } finally {
    await worker.stop();
  }
  return { perSec: await rateFromItems(env, settings.warmup), peakRssMb: worker.peakRssMb() };
}

async function rateFromItems(env: BenchEnv, warmup: number): Promise<number> {
  const { rows } = await env.knex.raw<{ rows: Array<{ t: number }> }>(
    'select extract(epoch from committed_at) * 1000 as t from bench_items order by committed_at',
  );
  return steadyRate(
    rows.map((r) => Number(r.t)),
    warmup,
  );
}

/**
 * The baseline: the same three inserts (inbox, business row, outbox row with the same payload),
 * as raw `pg` transactions from this process at the same concurrency, measured the same way.
 */
export async function measurePipelineBaseline(env: BenchEnv, settings: PipelineSettings): Promise<number> {
  await truncateRunTables(env.knex);
  const pool = new pg.Pool({
    connectionString: env.databaseUrl,
    max: settings.concurrency,
    application_name: 'dw-bench-baseline',
  });
  const total = settings.messages + settings.warmup;
  const sentAt = Date.now();
  let next = 0;
  const loop = async () => {
    const client = await pool.connect();
    try {
      for (let seq = next++; seq < total; seq = next++) {
        const messageId = randomUUID();
        await client.query('begin');
        await client.query(
          'insert into dw_inbox (consumer, message_id) values ($1, $2) on conflict (consumer, message_id) do nothing returning message_id',
          ['baseline', messageId],
        );
        await client.query('insert into bench_items (message_id, seq, sent_at_ms) values ($1, $2, $3)', [
          messageId,
          seq,
          sentAt,
        ]);
        await client.query(
          `insert into dw_outbox (message_id, destination_kind, destination, routing_key, type, payload, headers, options)
           values ($1, 'bullmq', $2, null, 'BenchItemStored', $3, $4, '{}') on conflict (message_id) do nothing`,
          [
            randomUUID(),
            BENCH_EVENTS_QUEUE,
            JSON.stringify({ seq, note: NOTE }),
            JSON.stringify({ correlationId: messageId, causationId: messageId }),
          ],
        );
        await client.query('commit');
      }
    } finally {
      client.release();
    }
  };
  try {
    await Promise.all(Array.from({ length: settings.concurrency }, loop));
  } finally {
    await pool.end();
  }
  const done = await countRows(env.knex, 'select count(*)::int as n from bench_items');
  if (done !== total) throw new Error(`bench: the baseline stored ${done} of ${total} rows`);
  return rateFromItems(env, settings.warmup);
}
