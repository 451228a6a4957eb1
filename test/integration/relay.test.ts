import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Destinations } from '../../relay/destinations.js';
import { Relay } from '../../relay/relay.js';
import { ResilientAmqpConnection } from '../../shared/amqp.js';
import { createKnex } from '../../shared/db/knex.js';
import { claimOutboxBatch, insertOutboxMessages, type OutboxMessage } from '../../shared/outbox.js';
import { waitUntil } from '../../shared/wait.js';
import { createTestEnv, randomName, type TestEnv, urls } from '../support/services.js';

let env: TestEnv;
let redis: Redis;

beforeAll(async () => {
  env = await createTestEnv();
  redis = new Redis(urls.redis);
  redis.on('error', () => {});
});

afterAll(async () => {
  redis?.disconnect();
  await env?.teardown();
});

const job = (queue: string, n: number, extra: Partial<OutboxMessage> = {}): OutboxMessage => ({
  messageId: randomUUID(),
  destination: { kind: 'bullmq', queue },
  type: 'Numbered',
  payload: { n },
  headers: { correlationId: 'c' },
  ...extra,
});

const pending = async () =>
  Number((await env.knex('dw_outbox').whereNull('delivered_at').count<{ c: number }[]>('* as c'))[0]?.c);

/** BullMQ's event stream of a queue: every add, and every add refused as a duplicate job id. */
async function queueEvents(queue: string): Promise<Array<{ event: string; jobId: string }>> {
  const entries = await redis.xrange(`${env.config.bullmqPrefix}:${queue}:events`, '-', '+');
  return entries.map(([, fields]) => {
    const map = new Map<string, string>();
    for (let i = 0; i < fields.length; i += 2) map.set(fields[i]!, fields[i + 1]!);
    return { event: map.get('event') ?? '', jobId: map.get('jobId') ?? '' };
  });
}

async function waitDrained(): Promise<void> {
  await waitUntil(async () => (await pending()) === 0, 'the outbox to drain');
}

describe('relay', () => {
  it('keeps id order within each destination across batches', async () => {
    const [a, b] = [randomName('order-a-'), randomName('order-b-')];
    const rows = Array.from({ length: 300 }, (_, n) => job(n % 3 === 0 ? b : a, n));
    await insertOutboxMessages(env.knex, rows);
    // Several claim loops: they take turns claiming and each queue gets its batches in claim order.
    const relay = await Relay.start({ config: env.config, batchSize: 40, concurrency: 4 });
    try {
      await waitDrained();
    } finally {
      await relay.stop(5000);
    }
    for (const queue of [a, b]) {
      const added = (await queueEvents(queue)).filter((e) => e.event === 'added').map((e) => e.jobId);
      const expected = rows
        .filter((r) => r.destination.kind === 'bullmq' && r.destination.queue === queue)
        .map((r) => r.messageId);
      expect(added).toEqual(expected);
    }
  });

  it('writes more outbox messages in one transaction than one statement can bind', async () => {
    const queue = randomName('many-');
    const rows = Array.from({ length: 8000 }, (_, n) => job(queue, n));
    await env.knex.transaction((trx) => insertOutboxMessages(trx, rows));
    const written = await env
      .knex('dw_outbox')
      .where({ destination: queue })
      .count<{ c: number }[]>('* as c');
    expect(Number(written[0]?.c)).toBe(8000);
    await env.knex('dw_outbox').where({ destination: queue }).delete();
  });

  it('lets two relays share the outbox without adding any job twice', async () => {
    const queue = randomName('shared-');
    const rows = Array.from({ length: 2000 }, (_, n) => job(queue, n));
    for (let i = 0; i < rows.length; i += 500) await insertOutboxMessages(env.knex, rows.slice(i, i + 500));
    const relays = await Promise.all([
      Relay.start({ config: env.config, batchSize: 50, concurrency: 2 }),
      Relay.start({ config: env.config, batchSize: 50, concurrency: 2 }),
    ]);
    try {
      await waitDrained();
    } finally {
      await Promise.all(relays.map((r) => r.stop(5000)));
    }
    const events = await queueEvents(queue);
    expect(events.filter((e) => e.event === 'duplicated')).toEqual([]);
    const added = events.filter((e) => e.event === 'added').map((e) => e.jobId);
    expect(new Set(added).size).toBe(2000);
    expect(added.length).toBe(2000);
    const q = new Queue(queue, { connection: redis, prefix: env.config.bullmqPrefix });
    expect(await q.count()).toBe(2000);
    await q.close();
  });

  it('wakes on NOTIFY: a row committed while idle is delivered long before the next poll', async () => {
    const queue = randomName('notify-');
    const relay = await Relay.start({ config: env.config, pollIntervalMs: 120_000, concurrency: 1 });
    const q = new Queue(queue, { connection: redis, prefix: env.config.bullmqPrefix });
    try {
      await waitDrained();
      // Let the relay go idle (waiting for a notification), then commit a row.
      await new Promise((r) => setTimeout(r, 200));
      const row = job(queue, 1);
      await env.knex.transaction((trx) => insertOutboxMessages(trx, [row]));
      await waitUntil(async () => (await q.getJob(row.messageId)) !== undefined, 'the job to appear', {
        timeoutMs: 20_000,
      });
    } finally {
      await q.close();
      await relay.stop(5000);
    }
  });

  it('a leased row (an eager saga step) wakes no relay; a row the relay may deliver does', async () => {
    const listener = new pg.Client({ connectionString: env.config.databaseUrl });
    await listener.connect();
    const heard: string[] = [];
    listener.on('notification', (n) => heard.push(n.channel));
    await listener.query('listen dw_outbox');
    const queue = randomName('lease-notify-');
    try {
      await env.knex.transaction((trx) => insertOutboxMessages(trx, [job(queue, 1, { leaseMs: 600_000 })]));
      await env.knex.transaction((trx) => insertOutboxMessages(trx, [job(queue, 2)]));
      // Notifications come in commit order: once the second commit's arrived, the first's would have.
      await waitUntil(() => heard.length > 0, 'the notification of the deliverable row');
      expect(heard).toEqual(['dw_outbox']);
    } finally {
      await listener.end();
      await env.knex('dw_outbox').where({ destination: queue }).delete();
    }
  });

  it('stops at once with every claim loop idle, however long the poll interval', async () => {
    const relay = await Relay.start({ config: env.config, pollIntervalMs: 120_000, concurrency: 4 });
    await waitDrained();
    // Each notification wakes one loop; a stop must still wake all four at once.
    expect(await relay.stop(20_000)).toBe(true);
  });

  it('keeps exactly one LISTEN connection through an outage with refused connection attempts', async () => {
    const queue = randomName('outage-');
    const relay = await Relay.start({ config: env.config, pollIntervalMs: 60_000, concurrency: 1 });
    const database = new URL(env.config.databaseUrl).pathname.slice(1);
    // A database cannot refuse connections from a session of its own: alter it from another one.
    const admin = createKnex(`${urls.postgres}/postgres`, { poolMax: 1 });
    const listeners = async () =>
      Number(
        (
          await env.knex.raw(
            "select count(*)::int as n from pg_stat_activity where datname = ? and application_name = 'dw-relay-listen'",
            [database],
          )
        ).rows[0].n,
      );
    try {
      await waitUntil(async () => (await listeners()) === 1, 'the LISTEN connection');
      // Refuse new connections, drop the listening one, and let several reconnection attempts fail.
      await admin.raw('alter database ?? allow_connections false', [database]);
      await env.knex.raw(
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = ? and application_name = 'dw-relay-listen'",
        [database],
      );
      await waitUntil(async () => (await listeners()) === 0, 'the LISTEN connection to go');
      await new Promise((r) => setTimeout(r, 2000));
      await admin.raw('alter database ?? allow_connections true', [database]);
      await waitUntil(async () => (await listeners()) === 1, 'the LISTEN connection to come back');
      // Back for good: a row committed now wakes the relay long before its 60 s poll.
      const row = job(queue, 1);
      await insertOutboxMessages(env.knex, [row]);
      await waitUntil(async () => (await pending()) === 0, 'the row to be delivered', { timeoutMs: 20_000 });
      expect(await listeners()).toBe(1);
    } finally {
      await admin.raw('alter database ?? allow_connections true', [database]);
      await admin.destroy();
      await relay.stop(5000);
    }
  });

  it('absorbs a batch delivered again after a crash between the BullMQ add and the mark', async () => {
    const queue = randomName('again-');
    const rows = Array.from({ length: 50 }, (_, n) => job(queue, n));
    await insertOutboxMessages(env.knex, rows);
    // Deliver the batch but roll back instead of marking it: what a relay killed at that instant leaves.
    const amqp = new ResilientAmqpConnection(env.config.amqpUrl);
    await amqp.start();
    const destinations = new Destinations(redis, env.config.bullmqPrefix, amqp, { age: 3600, count: 1000 });
    await env.knex
      .transaction(async (trx) => {
        const claimed = await claimOutboxBatch(trx, 500);
        expect(claimed.map((r) => r.messageId)).toEqual(rows.map((r) => r.messageId));
        await destinations.deliver(claimed);
        throw new Error('crash before marking');
      })
      .catch(() => {});
    await destinations.close();
    await amqp.close();
    expect(await pending()).toBe(50);

    const relay = await Relay.start({ config: env.config });
    try {
      await waitDrained();
    } finally {
      await relay.stop(5000);
    }
    const events = await queueEvents(queue);
    expect(events.filter((e) => e.event === 'added')).toHaveLength(50);
    expect(events.filter((e) => e.event === 'duplicated')).toHaveLength(50);
  });

  it('does not let one undeliverable row block the others', async () => {
    const queue = randomName('mixed-');
    const good = [job(queue, 1), job(queue, 2)];
    const toExchange = job(queue, 3, {
      destination: { kind: 'amqp', exchange: env.config.exchange, routingKey: 'SomethingHappened' },
    });
    const bad = job(queue, 4, {
      destination: { kind: 'amqp', exchange: randomName('missing-exchange-'), routingKey: 'x' },
    });
    const numeric = job(queue, 5, { messageId: '12345' });
    // The good AMQP row needs its exchange and a queue bound for its type (publishes are mandatory).
    const amqp = new ResilientAmqpConnection(env.config.amqpUrl);
    await amqp.start();
    const channel = await amqp.confirmChannel();
    await channel.assertExchange(env.config.exchange, 'topic', { durable: true });
    await channel.assertQueue(`${env.config.exchange}.test`, { durable: true });
    await channel.bindQueue(`${env.config.exchange}.test`, env.config.exchange, 'SomethingHappened');
    await amqp.close();

    await insertOutboxMessages(env.knex, [good[0]!, bad, toExchange, good[1]!, numeric]);
    const relay = await Relay.start({ config: env.config, pollIntervalMs: 100 });
    try {
      await waitUntil(async () => (await pending()) === 1, 'all rows but the bad one to be delivered');
      const failed = await waitUntil(
        async () =>
          env.knex('dw_outbox').where({ message_id: bad.messageId }).where('attempts', '>', 0).first(),
        'the bad row to record its failure',
      );
      expect(failed.delivered_at).toBeNull();
      expect(failed.last_error).toMatch(/exchange|NOT_FOUND|404/i);
    } finally {
      await relay.stop(5000);
    }
    const q = new Queue(queue, { connection: redis, prefix: env.config.bullmqPrefix });
    const jobs = await q.getJobs(['waiting']);
    expect(jobs.map((j) => (j.data as { payload: { n: number } }).payload.n).sort()).toEqual([1, 2, 5]);
    expect(jobs.find((j) => j.data.messageId === '12345')?.id).not.toBe('12345');
    await q.close();
  });
});
