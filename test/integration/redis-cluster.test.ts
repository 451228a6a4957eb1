import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { app } from '../../examples/app/index.js';
import { exampleMigrations } from '../../examples/app/migrations.js';
import { createDashboard } from '../../ops/dashboard/server.js';
import { Relay } from '../../relay/relay.js';
import type { Config } from '../../shared/config.js';
import { RedisClusterPrefixError } from '../../shared/errors.js';
import { insertOutboxMessages, type OutboxMessage } from '../../shared/outbox.js';
import { createRedis, type RedisClient, relayRedisKeys } from '../../shared/redis.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { cliEnv, runCli } from '../support/cli.js';
import { type RedisCluster, startRedisCluster } from '../support/redis-cluster.js';
import { createTestEnv, randomName, type TestEnv } from '../support/services.js';

// A private 3-master Redis Cluster: the relay, a saga worker and `dw status` run against it in
// REDIS_MODE=cluster, with a hash-tagged prefix.
let cluster: RedisCluster;
let env: TestEnv;
let config: Config;
let redis: RedisClient;
let relay: Relay | undefined;
let worker: Worker | undefined;

beforeAll(async () => {
  cluster = await startRedisCluster();
  env = await createTestEnv(exampleMigrations);
  config = {
    ...env.config,
    redisUrl: cluster.url,
    redisMode: 'cluster',
    bullmqPrefix: `{${env.config.bullmqPrefix}}`,
  };
  redis = createRedis(config, { bullmqPrefix: config.bullmqPrefix });
  redis.on('error', () => {});
}, 120_000);

afterAll(async () => {
  await relay?.stop(5000);
  await worker?.stop(5000);
  redis?.disconnect();
  await env?.teardown();
  await cluster?.stop();
});

const rows = (queue: string, n: number): OutboxMessage[] =>
  Array.from({ length: n }, (_, i) => ({
    messageId: randomUUID(),
    destination: { kind: 'bullmq', queue },
    type: 'Numbered',
    payload: { i },
    headers: {},
  }));

async function jobIds(queue: Queue): Promise<Set<string | undefined>> {
  return new Set((await queue.getJobs(['waiting'])).map((j) => j.id));
}

describe('REDIS_MODE=cluster', () => {
  it('refuses a BULLMQ_PREFIX without a hash tag, saying why and how to fix it', async () => {
    const start = Relay.start({ config: { ...config, bullmqPrefix: 'plain' } });
    await expect(start).rejects.toBeInstanceOf(RedisClusterPrefixError);
    await expect(start).rejects.toMatchObject({ code: 'DW_REDIS_CLUSTER_PREFIX' });
    await expect(start).rejects.toThrow(/one slot.*BULLMQ_PREFIX=\{plain\}/s);
    const status = await runCli(['status'], cliEnv({ ...config, bullmqPrefix: 'plain' }));
    expect(status.code).toBe(1);
    expect(status.stderr).toContain('has no hash tag');
    // `{}` is no hash tag for Redis either: the whole key is hashed.
    await expect(Worker.start({ app, config: { ...config, bullmqPrefix: 'a{}b' } })).rejects.toBeInstanceOf(
      RedisClusterPrefixError,
    );
  });

  it('the relay delivers outbox rows into BullMQ queues on the cluster', async () => {
    relay = await Relay.start({ config, batchSize: 20, concurrency: 2, pollIntervalMs: 100 });
    const queue = new Queue(randomName('cl-'), { connection: redis, prefix: config.bullmqPrefix });
    try {
      const messages = rows(queue.name, 60);
      await insertOutboxMessages(env.knex, messages);
      await waitUntil(async () => (await queue.count()) === 60, '60 jobs on the cluster');
      const ids = await jobIds(queue);
      for (const m of messages) expect(ids.has(m.messageId)).toBe(true);
      // The relays' counter sits in the slot of the queues (the prefix's tag comes first).
      const keys = relayRedisKeys(config.bullmqPrefix);
      expect(Number(await redis.get(keys.counter))).toBeGreaterThan(0);
    } finally {
      await queue.close();
    }
  });

  it('runs a saga to completion (worker and relay on the cluster)', async () => {
    worker = await Worker.start({ app, config, sagaSweepIntervalMs: 0 });
    const tripId = randomUUID();
    await publishRaw(config.exchange, [
      {
        routingKey: 'BookTrip',
        body: { tripId, customerId: 'c-1', amount: 10 },
        properties: { messageId: randomUUID(), type: 'BookTrip', contentType: 'application/json' },
      },
    ]);
    const status = await waitUntil(async () => {
      const row = await env.knex('dw_sagas').where({ id: tripId }).first('status');
      return row && !['running', 'compensating'].includes(row.status) ? (row.status as string) : undefined;
    }, 'the trip to finish');
    expect(status).toBe('completed');
    const ledger = await env.knex('trip_ledger').where({ trip_id: tripId }).orderBy('id');
    expect(ledger.map((r: { step: string; action: string }) => `${r.action}:${r.step}`)).toEqual(
      ['debit-customer', 'book-flight', 'book-hotel', 'email-customer'].map((s) => `execute:${s}`),
    );
    expect(await worker.health()).toMatchObject({ redis: true });
    expect(await relay!.health()).toMatchObject({ redis: true });
  });

  it('dw status reads the queues and every master', async () => {
    const { code, stdout, stderr } = await runCli(['status', '--json'], cliEnv(config));
    expect(stderr).toBe('');
    expect(code).toBe(0);
    const status = JSON.parse(stdout);
    expect(status.redis.mode).toBe('cluster');
    expect(status.redis.nodes).toHaveLength(3);
    expect(status.redis.appendonly).toBe('no');
    // Every master runs without persistence: each says so, named.
    expect(status.redis.risks).toHaveLength(3);
    for (const node of status.redis.nodes) expect(status.redis.risks.join('\n')).toContain(node.node);
    expect(status.redis.deliverySeq.redis).toBeGreaterThanOrEqual(status.redis.deliverySeq.postgres);
    expect(status.redis.lossPending).toBe(false);
    expect(status.queues.bullmq.map((q: { name: string }) => q.name)).toContain('dw-sagas');
    const text = await runCli(['status'], cliEnv(config));
    expect(text.code).toBe(0);
    expect(text.stdout).toContain('cluster, 3 masters');
  });

  it('the dashboard and its bull-board read the queues on the cluster', async () => {
    const dashboard = await createDashboard({ config, app, knex: env.knex });
    try {
      const local = { host: '127.0.0.1:3000' };
      const overview = await dashboard.server.inject({ method: 'GET', url: '/api/overview', headers: local });
      expect(overview.statusCode).toBe(200);
      const body = overview.json();
      expect(body.errors ?? []).toEqual([]);
      const sagas = body.queues.bullmq.find((q: { name: string }) => q.name === 'dw-sagas');
      expect(sagas).toMatchObject({ failed: 0 });
      const board = await dashboard.server.inject({
        method: 'GET',
        url: '/queues/api/queues',
        headers: local,
      });
      expect(board.statusCode).toBe(200);
      expect(board.body).toContain('dw-sagas');
    } finally {
      await dashboard.close();
    }
  });

  it('notices a loss of the whole cluster (FLUSHALL on every master) and delivers the rows again', async () => {
    const queue = new Queue(randomName('loss-'), { connection: redis, prefix: config.bullmqPrefix });
    try {
      const messages = rows(queue.name, 40);
      await insertOutboxMessages(env.knex, messages);
      await waitUntil(async () => (await queue.count()) === 40, '40 jobs before the loss');
      await cluster.flushAll();
      await waitUntil(async () => (await queue.count()) === 40, 'the lost jobs to be delivered again', {
        timeoutMs: 30_000,
      });
      const ids = await jobIds(queue);
      for (const m of messages) expect(ids.has(m.messageId)).toBe(true);
      const losses = await waitUntil(
        async () => (await env.knex('dw_redis_losses').select('rows_redelivered')).length,
        'the loss to be recorded',
      );
      expect(losses).toBeGreaterThanOrEqual(1);
      // Work goes on after the loss: another saga completes.
      const tripId = randomUUID();
      await publishRaw(config.exchange, [
        {
          routingKey: 'BookTrip',
          body: { tripId, customerId: 'c-2', amount: 5 },
          properties: { messageId: randomUUID(), type: 'BookTrip', contentType: 'application/json' },
        },
      ]);
      await waitUntil(async () => {
        const row = await env.knex('dw_sagas').where({ id: tripId }).first('status');
        return row?.status === 'completed';
      }, 'a saga after the loss to complete');
    } finally {
      await queue.close();
    }
  });

  it('notices the master of the jobs restarted empty, and delivers its rows again', async () => {
    const queue = new Queue(randomName('restart-'), { connection: redis, prefix: config.bullmqPrefix });
    try {
      const messages = rows(queue.name, 30);
      await insertOutboxMessages(env.knex, messages);
      await waitUntil(async () => (await queue.count()) === 30, '30 jobs before the restart');
      const lossesBefore = Number((await env.knex('dw_redis_losses').count('* as n'))[0]?.n);
      const home = await cluster.masterOf(relayRedisKeys(config.bullmqPrefix).counter);
      // The queues share the counter's master (one hash tag).
      expect((await cluster.masterOf(`${config.bullmqPrefix}:${queue.name}:wait`)).port).toBe(home.port);
      await cluster.restartEmpty(home);
      await waitUntil(async () => (await queue.count().catch(() => 0)) === 30, 'the lost jobs to be back', {
        timeoutMs: 60_000,
      });
      const ids = await jobIds(queue);
      for (const m of messages) expect(ids.has(m.messageId)).toBe(true);
      await waitUntil(
        async () => Number((await env.knex('dw_redis_losses').count('* as n'))[0]?.n) > lossesBefore,
        'the loss to be recorded',
      );
      // The worker's BullMQ connections found the node again: a saga completes.
      const tripId = randomUUID();
      await publishRaw(config.exchange, [
        {
          routingKey: 'BookTrip',
          body: { tripId, customerId: 'c-3', amount: 5 },
          properties: { messageId: randomUUID(), type: 'BookTrip', contentType: 'application/json' },
        },
      ]);
      await waitUntil(
        async () =>
          (await env.knex('dw_sagas').where({ id: tripId }).first('status'))?.status === 'completed',
        'a saga after the restart to complete',
        { timeoutMs: 60_000 },
      );
    } finally {
      await queue.close();
    }
  });
});
