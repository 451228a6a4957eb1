import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { app } from '../../examples/app/index.js';
import { exampleMigrations } from '../../examples/app/migrations.js';
import { Relay } from '../../relay/relay.js';
import type { Config } from '../../shared/config.js';
import { insertOutboxMessages, type OutboxMessage } from '../../shared/outbox.js';
import { createRedis, type RedisClient } from '../../shared/redis.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { cliEnv, runCli } from '../support/cli.js';
import { type RedisSentinelSetup, startRedisSentinel } from '../support/redis-sentinel.js';
import { createTestEnv, randomName, type TestEnv } from '../support/services.js';

// A private master and replica watched by two sentinels: the relay, a saga worker and `dw status`
// find the master through the sentinels (REDIS_MODE=sentinel) and follow it through a failover.
let sentinel: RedisSentinelSetup;
let env: TestEnv;
let config: Config;
let redis: RedisClient;
let relay: Relay | undefined;
let worker: Worker | undefined;

beforeAll(async () => {
  sentinel = await startRedisSentinel({ replica: true, sentinels: 2 });
  env = await createTestEnv(exampleMigrations);
  config = { ...env.config, redisUrl: sentinel.url, redisMode: 'sentinel', redisSentinelName: sentinel.name };
  redis = createRedis(config);
  redis.on('error', () => {});
}, 120_000);

afterAll(async () => {
  await relay?.stop(5000);
  await worker?.stop(5000);
  redis?.disconnect();
  await env?.teardown();
  await sentinel?.stop();
});

const rows = (queue: string, n: number): OutboxMessage[] =>
  Array.from({ length: n }, (_, i) => ({
    messageId: randomUUID(),
    destination: { kind: 'bullmq', queue },
    type: 'Numbered',
    payload: { i },
    headers: {},
  }));

async function bookTrip(customerId: string): Promise<string> {
  const tripId = randomUUID();
  await publishRaw(config.exchange, [
    {
      routingKey: 'BookTrip',
      body: { tripId, customerId, amount: 10 },
      properties: { messageId: randomUUID(), type: 'BookTrip', contentType: 'application/json' },
    },
  ]);
  return tripId;
}

async function tripStatus(tripId: string): Promise<string> {
  return waitUntil(
    async () => {
      const row = await env.knex('dw_sagas').where({ id: tripId }).first('status');
      return row && !['running', 'compensating'].includes(row.status) ? (row.status as string) : undefined;
    },
    `trip ${tripId} to finish`,
    { timeoutMs: 60_000 },
  );
}

describe('REDIS_MODE=sentinel', () => {
  it('the relay delivers and a saga completes through the sentinels', async () => {
    relay = await Relay.start({ config, batchSize: 20, concurrency: 2, pollIntervalMs: 100 });
    worker = await Worker.start({ app, config, sagaSweepIntervalMs: 0 });
    const queue = new Queue(randomName('se-'), { connection: redis, prefix: config.bullmqPrefix });
    try {
      const messages = rows(queue.name, 30);
      await insertOutboxMessages(env.knex, messages);
      await waitUntil(async () => (await queue.count()) === 30, '30 jobs on the master');
      // They are on the master the sentinels name.
      const master = await sentinel.master();
      expect(master.port).toBe(sentinel.nodes[0]!.port);
      expect(await tripStatus(await bookTrip('c-1'))).toBe('completed');
    } finally {
      await queue.close();
    }
  });

  it('dw status reads the master through the sentinels', async () => {
    const { code, stdout, stderr } = await runCli(['status', '--json'], cliEnv(config));
    expect(stderr).toBe('');
    expect(code).toBe(0);
    const status = JSON.parse(stdout);
    expect(status.redis.mode).toBe('sentinel');
    expect(status.redis.nodes).toHaveLength(1);
    expect(status.redis.nodes[0].node).toBe(`127.0.0.1:${(await sentinel.master()).port}`);
    expect(status.redis.deliverySeq.redis).toBeGreaterThanOrEqual(status.redis.deliverySeq.postgres);
  });

  it('refuses sentinel mode without REDIS_SENTINEL_NAME', async () => {
    const { code, stderr } = await runCli(['status'], cliEnv({ ...config, redisSentinelName: undefined }));
    expect(code).toBe(1);
    expect(stderr).toContain('REDIS_SENTINEL_NAME');
  });

  it('keeps working through SENTINEL FAILOVER: nothing lost, sagas complete on the new master', async () => {
    const queue = new Queue(randomName('fo-'), { connection: redis, prefix: config.bullmqPrefix });
    try {
      const before = rows(queue.name, 30);
      await insertOutboxMessages(env.knex, before);
      await waitUntil(async () => (await queue.count()) === 30, '30 jobs before the failover');
      const trips = [await bookTrip('c-2'), await bookTrip('c-3')];
      const promoted = await sentinel.failover();
      const after = rows(queue.name, 30);
      await insertOutboxMessages(env.knex, after);
      trips.push(await bookTrip('c-4'));
      for (const trip of trips) expect(await tripStatus(trip)).toBe('completed');
      await waitUntil(async () => (await queue.count()) === 60, 'all 60 jobs on the new master', {
        timeoutMs: 60_000,
      });
      const ids = new Set((await queue.getJobs(['waiting'])).map((j) => j.id));
      for (const m of [...before, ...after]) expect(ids.has(m.messageId)).toBe(true);
      expect((await sentinel.master()).port).toBe(promoted.port);
      // Each step committed once, whatever BullMQ re-ran around the failover.
      for (const trip of trips) {
        const ledger = await env
          .knex('trip_ledger')
          .where({ trip_id: trip, action: 'execute' })
          .orderBy('id');
        expect(ledger.map((r: { step: string }) => r.step)).toEqual([
          'debit-customer',
          'book-flight',
          'book-hotel',
          'email-customer',
        ]);
      }
      expect(await waitUntil(() => relay!.health().then((h) => h.redis), 'the relay to see Redis')).toBe(
        true,
      );
    } finally {
      await queue.close();
    }
  });
});
