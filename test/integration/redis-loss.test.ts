import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deleteRedisKeys } from '../../bench/env.js';
import { redisStatus } from '../../ops/status.js';
import { Relay } from '../../relay/relay.js';
import { setFaultHook } from '../../shared/crash-points.js';
import { insertOutboxMessages, type OutboxMessage } from '../../shared/outbox.js';
import { waitUntil } from '../../shared/wait.js';
import { createTestEnv, randomName, type TestEnv, urls } from '../support/services.js';

// Losses are confined to this file's BullMQ prefix on the shared Redis: its keys are deleted (a
// FLUSHDB for this installation) or put back as they were earlier (an older snapshot).
let env: TestEnv;
let redis: Redis;
let relay: Relay;

beforeAll(async () => {
  env = await createTestEnv();
  redis = new Redis(urls.redis);
  redis.on('error', () => {});
  relay = await Relay.start({ config: env.config, batchSize: 25, concurrency: 2, pollIntervalMs: 100 });
});

afterAll(async () => {
  await relay?.stop(5000);
  redis?.disconnect();
  await env?.teardown();
});

const rows = (queue: string, n: number): OutboxMessage[] =>
  Array.from({ length: n }, (_, i) => ({
    messageId: randomUUID(),
    destination: { kind: 'bullmq', queue },
    type: 'Numbered',
    payload: { i },
    headers: { correlationId: 'c' },
  }));

const prefixKeys = () => redis.keys(`${env.config.bullmqPrefix}:*`);
/** A FLUSHDB of this installation only. */
const deletePrefixKeys = () => deleteRedisKeys(urls.redis, `${env.config.bullmqPrefix}:*`);

async function snapshot(): Promise<Array<[string, Buffer]>> {
  const keys = await prefixKeys();
  return Promise.all(keys.map(async (k) => [k, (await redis.dumpBuffer(k)) as Buffer] as [string, Buffer]));
}

/** One MULTI, as a restart from a snapshot would be: the relay never sees the keys half restored. */
async function restore(saved: Array<[string, Buffer]>): Promise<void> {
  const keys = await prefixKeys();
  const tx = redis.multi();
  if (keys.length) tx.del(...keys);
  for (const [key, value] of saved) tx.restore(key, 0, value, 'REPLACE');
  await tx.exec();
}

async function deliver(queue: Queue, messages: OutboxMessage[], total: number): Promise<void> {
  await insertOutboxMessages(env.knex, messages);
  await waitUntil(async () => (await queue.count()) === total, `${total} jobs in ${queue.name}`);
}

/** Every message has its job, once. */
async function expectAllJobs(queue: Queue, messages: OutboxMessage[]): Promise<void> {
  await waitUntil(async () => (await queue.count()) === messages.length, 'the lost jobs to be back', {
    timeoutMs: 20_000,
  });
  const ids = new Set((await queue.getJobs(['waiting'])).map((j) => j.id));
  expect(ids.size).toBe(messages.length);
  for (const m of messages) expect(ids.has(m.messageId)).toBe(true);
}

describe('relay and partial Redis loss', () => {
  it('Redis back at an older snapshot: exactly the rows delivered since are delivered again', async () => {
    const queue = new Queue(randomName('snap-'), { connection: redis, prefix: env.config.bullmqPrefix });
    try {
      const before = rows(queue.name, 60);
      const after = rows(queue.name, 40);
      await deliver(queue, before, 60);
      const saved = await snapshot();
      await deliver(queue, after, 100);
      // The marker of the old scheme (the relay's keys exist) survives such a restore.
      await restore(saved);
      expect(await queue.count()).toBe(60);
      await expectAllJobs(queue, [...before, ...after]);
      const losses = await env.knex('dw_redis_losses').select();
      expect(losses).toHaveLength(1);
      expect(losses[0].rows_redelivered).toBe(40);
      const status = await redisStatus(env.knex, env.config, env.config.bullmqPrefix);
      expect(status).toMatchObject({ losses: 1, lastLoss: { rowsRedelivered: 40 } });
      expect(status.deliverySeq.redis).toBeGreaterThanOrEqual(status.deliverySeq.postgres);
    } finally {
      await queue.close();
    }
  });

  it('every key of the installation deleted (FLUSHDB) without a reconnect, while rows keep coming', async () => {
    await env.knex('dw_redis_losses').delete();
    const queue = new Queue(randomName('flush-'), { connection: redis, prefix: env.config.bullmqPrefix });
    try {
      const first = rows(queue.name, 50);
      await deliver(queue, first, 50);
      await deletePrefixKeys();
      const next = rows(queue.name, 30);
      await insertOutboxMessages(env.knex, next);
      await expectAllJobs(queue, [...first, ...next]);
      const losses = await env.knex('dw_redis_losses').select();
      expect(losses.length).toBeGreaterThanOrEqual(1);
      const status = await redisStatus(env.knex, env.config, env.config.bullmqPrefix);
      expect(status.lossPending).toBe(false);
      expect(status.losses).toBe(losses.length);
      // The shared test Redis: settings are read (or null where CONFIG is refused), never guessed.
      expect(Object.keys(status)).toEqual(
        expect.arrayContaining(['appendonly', 'appendfsync', 'save', 'maxmemoryPolicy', 'risks']),
      );
    } finally {
      await queue.close();
    }
  });

  it('FLUSHDB while idle: found by the idle check, no new row needed', async () => {
    await env.knex('dw_redis_losses').delete();
    const queue = new Queue(randomName('idle-'), { connection: redis, prefix: env.config.bullmqPrefix });
    try {
      const messages = rows(queue.name, 30);
      await deliver(queue, messages, 30);
      await deletePrefixKeys();
      await expectAllJobs(queue, messages);
      const losses = await env.knex('dw_redis_losses').select();
      expect(losses.map((l) => l.rows_redelivered).reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(30);
    } finally {
      await queue.close();
    }
  });

  it('every key deleted between a batch adding its jobs and its counter increment: that batch is added again', async () => {
    await env.knex('dw_redis_losses').delete();
    const queue = new Queue(randomName('inflight-'), { connection: redis, prefix: env.config.bullmqPrefix });
    let flushed = false;
    try {
      // Exactly once, after the first batch's addBulk and before its increment: the increment
      // lands on the emptied keys, above the repaired range, unless the relay notices.
      setFaultHook('relay:after-add-before-seq', async () => {
        if (flushed) return;
        flushed = true;
        await redis.del(...(await prefixKeys()));
      });
      const messages = rows(queue.name, 20);
      await insertOutboxMessages(env.knex, messages);
      await waitUntil(async () => flushed, 'a batch to reach the seam');
      await waitUntil(
        async () =>
          (
            await env
              .knex('dw_outbox')
              .whereIn(
                'message_id',
                messages.map((m) => m.messageId),
              )
              .whereNull('delivered_at')
          ).length === 0,
        'every row marked delivered',
      );
      await expectAllJobs(queue, messages);
    } finally {
      setFaultHook('relay:after-add-before-seq', undefined);
      await queue.close();
    }
  });
});
