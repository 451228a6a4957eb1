import { randomUUID } from 'node:crypto';
import amqp, { type ChannelModel } from 'amqplib';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { z } from 'zod';
import { Relay } from '../../relay/relay.js';
import { ResilientAmqpConnection } from '../../shared/amqp.js';
import { defineApp, defineHandler } from '../../shared/app.js';
import type { Migration } from '../../shared/db/migrate.js';
import { silentLogger } from '../../shared/logger.js';
import { insertOutboxMessages } from '../../shared/outbox.js';
import { startHealthServer } from '../../shared/process-lifecycle.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { freePort } from '../chaos/support/processes.js';
import { publishRaw } from '../support/amqp.js';
import { count, createTestEnv, randomName, type TestEnv, urls } from '../support/services.js';

const tables: Migration = {
  name: 'amqp_channel_faults_tables',
  async up(knex) {
    await knex.schema.createTable('seen', (t) => {
      t.text('message_id').primary();
    });
  },
};

// Named `app` so the test env's teardown deletes its work queue.
const app = defineApp({
  name: 'app',
  migrations: [tables],
  handlers: [
    defineHandler('Seen', z.object({ n: z.number() }), async (_msg, ctx) => {
      await ctx.trx('seen').insert({ message_id: ctx.envelope.id });
    }),
  ],
});

let env: TestEnv;
let admin: ChannelModel;

beforeAll(async () => {
  env = await createTestEnv(app.migrations);
  admin = await amqp.connect(urls.amqp);
});

afterAll(async () => {
  await admin?.close();
  await env?.teardown();
});

/** A channel of the test's own connection whose broker errors (expected here) are not thrown. */
async function adminChannel() {
  const channel = await admin.createChannel();
  channel.on('error', () => {});
  return channel;
}

async function publishSeen(prefix: string, n: number): Promise<string[]> {
  const ids = Array.from({ length: n }, (_, i) => `${prefix}-${i}`);
  await publishRaw(
    env.config.exchange,
    ids.map((id, i) => ({ routingKey: 'Seen', body: { n: i }, properties: { messageId: id, type: 'Seen' } })),
  );
  return ids;
}

async function healthz(port: number): Promise<{ status: number; body: { problems?: string[] } }> {
  const res = await fetch(`http://127.0.0.1:${port}/healthz`);
  return { status: res.status, body: (await res.json()) as { problems?: string[] } };
}

describe('confirm channel', () => {
  it('opens one channel for many concurrent first publishes', async () => {
    const connection = new ResilientAmqpConnection(env.config.amqpUrl);
    await connection.start();
    let model: ChannelModel | undefined;
    await connection.onConnected(async (c) => {
      model = c;
    });
    const created = vi.spyOn(model!, 'createConfirmChannel');
    try {
      const channel = await adminChannel();
      await channel.assertExchange(env.config.exchange, 'topic', { durable: true });
      await channel.close();
      await Promise.all(
        Array.from({ length: 20 }, (_, n) =>
          connection.publish(env.config.exchange, 'nobody', Buffer.from('{}'), { messageId: `c-${n}` }),
        ),
      );
      expect(created).toHaveBeenCalledTimes(1);
    } finally {
      created.mockRestore();
      await connection.close();
    }
  });
});

describe('relay publishes to exchanges as mandatory', () => {
  it('does not mark a message nothing is bound to as delivered; delivers it once a queue is bound', async () => {
    const routingKey = randomName('Unbound');
    const queue = `${env.config.exchange}.test`;
    const channel = await adminChannel();
    await channel.assertExchange(env.config.exchange, 'topic', { durable: true });
    const messageId = randomUUID();
    await insertOutboxMessages(env.knex, [
      {
        messageId,
        destination: { kind: 'amqp', exchange: env.config.exchange, routingKey },
        type: routingKey,
        payload: { hello: 'world' },
        headers: { correlationId: messageId },
      },
    ]);
    const row = () => env.knex('dw_outbox').where({ message_id: messageId }).first();
    const relay = await Relay.start({ config: env.config, pollIntervalMs: 100 });
    try {
      const failed = await waitUntil(
        async () => ((await row())?.attempts > 0 ? row() : undefined),
        'the relay to record the return',
      );
      expect(failed.delivered_at).toBeNull();
      expect(failed.last_error).toContain(
        `no queue bound for routing key ${routingKey} on exchange ${env.config.exchange}`,
      );

      await channel.assertQueue(queue, { durable: true });
      await channel.bindQueue(queue, env.config.exchange, routingKey);
      await waitUntil(
        async () => (await row())?.delivered_at,
        'the row to be delivered once a queue is bound',
        {
          timeoutMs: 30_000,
        },
      );
      const got = await waitUntil(
        async () => (await channel.get(queue, { noAck: true })) || undefined,
        'the message',
      );
      expect(got.properties.messageId).toBe(messageId);
    } finally {
      await relay.stop(5000);
      await channel.deleteQueue(queue).catch(() => {});
      await channel.close().catch(() => {});
    }
  });
});

describe('worker consumer', () => {
  it('subscribes again after its queue is deleted and its channel refused; /healthz 503 meanwhile', async () => {
    // Classic: the test replaces the worker's queue by one with other arguments while the worker
    // declares it again; with a quorum queue that race hung RabbitMQ 3.10.8 here (connections and
    // rabbitmqctl stopped answering). Consumer recovery is the same code for both types.
    const worker = await Worker.start({
      app,
      config: { ...env.config, queueType: 'classic' },
      concurrency: 2,
    });
    const port = await freePort();
    const server = await startHealthServer(worker, port, silentLogger);
    const queue = worker.options.queue;
    try {
      const before = await publishSeen('before', 10);
      await waitUntil(async () => (await count(env.knex, 'seen')) === before.length, 'the first messages');
      expect((await healthz(port)).status).toBe(200);

      // The broker cancels the consumer (queue deleted); the queue comes back at once with other
      // arguments, so the worker's own declaration is refused (406, its channel closed) until the
      // queue goes again: the worker keeps trying and says why on /healthz.
      const channel = await adminChannel();
      void channel.deleteQueue(queue);
      await channel.assertQueue(queue, { durable: true, arguments: { 'x-max-length': 1_000_000 } });
      const degraded = await waitUntil(async () => {
        const h = await healthz(port);
        return h.status === 503 && h.body.problems?.some((p) => /PRECONDITION|406/.test(p)) ? h : undefined;
      }, '/healthz to report the worker not consuming, with the 406');
      expect(degraded.body.problems?.[0]).toContain(`not consuming from queue ${queue}`);
      expect((await worker.health()).consuming).toBe(false);

      await channel.deleteQueue(queue);
      await channel.close();
      await waitUntil(async () => (await healthz(port)).status === 200, '/healthz 200 once consuming again');
      const after = await publishSeen('after', 10);
      await waitUntil(
        async () => (await count(env.knex, 'seen')) === before.length + after.length,
        'the messages published after the recovery',
      );
    } finally {
      server.close();
      await worker.stop(5000);
    }
    // Stopped for good: no consumer comes back on the queue.
    const channel = await adminChannel();
    expect((await channel.checkQueue(queue)).consumerCount).toBe(0);
    await channel.close();
  });

  it('stops cleanly while it is trying to subscribe again, and does not subscribe after', async () => {
    // Whatever the previous test left behind.
    await (await adminChannel()).deleteQueue(`${env.config.exchange}.app`);
    // Classic: the test replaces the worker's queue by one with other arguments while the worker
    // declares it again; with a quorum queue that race hung RabbitMQ 3.10.8 here (connections and
    // rabbitmqctl stopped answering). Consumer recovery is the same code for both types.
    const worker = await Worker.start({
      app,
      config: { ...env.config, queueType: 'classic' },
      concurrency: 2,
    });
    const queue = worker.options.queue;
    const channel = await adminChannel();
    try {
      void channel.deleteQueue(queue);
      await channel.assertQueue(queue, { durable: true, arguments: { 'x-max-length': 1_000_000 } });
      await waitUntil(
        async () => worker.problems().some((p) => /406|PRECONDITION/.test(p)),
        'the refused channel',
      );
      expect(await worker.stop(5000)).toBe(true);
      // The queue can be declared as the worker wants now; a stopped worker must not come back.
      await channel.deleteQueue(queue);
      await channel.assertQueue(queue, { durable: true });
      expect((await channel.checkQueue(queue)).consumerCount).toBe(0);
    } finally {
      await worker.stop(0);
      await channel.close().catch(() => {});
    }
  });
});
