import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { jobIdFor } from '../relay/destinations.js';
import { insertOutboxMessages, type OutboxMessage } from '../shared/outbox.js';
import { waitUntil } from '../shared/wait.js';
import { DwProcess } from './children.js';
import { type BenchEnv, deleteRedisKeys, truncateRunTables } from './env.js';
import { NOTE } from './publish.js';
import { benchWait, countRows } from './wait.js';

export interface RelaySettings {
  rows: number;
  warmup: number;
  /** `dw relay --batch-size`; the baseline adds jobs in bulks of the same size. */
  batchSize: number;
  /** `dw relay --concurrency`; the baseline runs as many addBulk loops. */
  concurrency: number;
  relayArgs: readonly string[];
  nodeArgs: readonly string[];
}

const QUEUE = 'bench_relay';

function message(seq: number): OutboxMessage {
  const messageId = randomUUID();
  return {
    messageId,
    destination: { kind: 'bullmq', queue: QUEUE },
    type: 'BenchItemStored',
    payload: { seq, note: NOTE },
    headers: { correlationId: messageId, causationId: randomUUID() },
  };
}

/**
 * Relay rate: the outbox is filled with N + W pending rows first (multi-row inserts), then a fresh
 * `dw relay` drains them into BullMQ. The clock starts once W rows are delivered (start-up and
 * warm-up left out) and stops when none is pending.
 */
export async function measureRelay(
  env: BenchEnv,
  settings: RelaySettings,
  rep: number,
): Promise<{ perSec: number; peakRssMb: number }> {
  await truncateRunTables(env.knex);
  const total = settings.rows + settings.warmup;
  for (let start = 0; start < total; start += 1000) {
    const batch = Array.from({ length: Math.min(1000, total - start) }, (_, i) => message(start + i));
    await insertOutboxMessages(env.knex, batch);
  }
  await env.knex.raw('analyze dw_outbox');
  const prefix = `${env.bullmqPrefix}-relay${rep}`;
  // Polled every 20 ms while the relay runs, so it must not cost what the relay does: a count of the
  // pending rows takes a parallel scan of the table (150 ms on 150k rows, both cores), the lowest
  // pending id one index probe. The relay delivers in id order, so rows above it are about all pending.
  const lastId = await countRows(env.knex, 'select max(id)::int as n from dw_outbox');
  const lowestPending = () =>
    countRows(
      env.knex,
      `select coalesce((select id from dw_outbox where delivered_at is null order by id limit 1), ?)::int as n`,
      [lastId + 1],
    );
  const relay = await DwProcess.start(
    'relay',
    [
      'relay',
      '--batch-size',
      String(settings.batchSize),
      '--concurrency',
      String(settings.concurrency),
      ...settings.relayArgs,
    ],
    env.childEnv({ BULLMQ_PREFIX: prefix }),
    'relay started',
    settings.nodeArgs,
  );
  let warmedAt = 0;
  let remainingAtWarm = 0;
  let doneAt = 0;
  try {
    await waitUntil(
      async () => (await lowestPending()) > lastId - settings.rows,
      'the relay to deliver the warm-up rows',
      benchWait,
    );
    warmedAt = performance.now();
    // Counted once, exactly (the snapshot is taken as the count starts).
    remainingAtWarm = await countRows(
      env.knex,
      'select count(*)::int as n from dw_outbox where delivered_at is null',
    );
    await waitUntil(
      async () => (await lowestPending()) > lastId,
      `the relay to drain ${total} rows`,
      benchWait,
    );
    doneAt = performance.now();
  } finally {
    await relay.stop();
  }
  await deleteRedisKeys(env.services.redisUrl, `${prefix}:*`);
  return { perSec: (remainingAtWarm * 1000) / (doneAt - warmedAt), peakRssMb: relay.peakRssMb() };
}

/**
 * The baseline: BullMQ `addBulk` of the same jobs (same name, data, job id and options as the
 * relay's), in bulks of the same size, from as many loops as the relay runs, into its own queue.
 */
export async function measureRelayBaseline(
  env: BenchEnv,
  settings: RelaySettings,
  rep: number,
): Promise<number> {
  const prefix = `${env.bullmqPrefix}-base${rep}`;
  const redis = new Redis(env.services.redisUrl, { maxRetriesPerRequest: null });
  const queue = new Queue(QUEUE, { connection: redis, prefix });
  const total = settings.rows + settings.warmup;
  const messages = Array.from({ length: total }, (_, i) => message(i));
  let next = 0;
  let delivered = 0;
  let warmedAt = 0;
  let deliveredAtWarm = 0;
  const loop = async () => {
    for (let start = next; start < total; start = next) {
      next += settings.batchSize;
      const rows = messages.slice(start, start + settings.batchSize);
      await queue.addBulk(
        rows.map((m) => ({
          name: m.type,
          data: { messageId: m.messageId, type: m.type, payload: m.payload, headers: m.headers },
          opts: {
            jobId: jobIdFor(m.messageId),
            removeOnComplete: { age: 24 * 3600, count: 100_000 },
            removeOnFail: { age: 7 * 24 * 3600 },
          },
        })),
      );
      delivered += rows.length;
      if (!warmedAt && delivered >= settings.warmup) {
        warmedAt = performance.now();
        deliveredAtWarm = delivered;
      }
    }
  };
  let doneAt = 0;
  try {
    await queue.waitUntilReady();
    await Promise.all(
      Array.from({ length: settings.concurrency }, async () => {
        await loop();
      }),
    );
    doneAt = performance.now();
  } finally {
    await queue.close();
    redis.disconnect();
  }
  await deleteRedisKeys(env.services.redisUrl, `${prefix}:*`);
  return ((total - deliveredAtWarm) * 1000) / (doneAt - warmedAt);
}
