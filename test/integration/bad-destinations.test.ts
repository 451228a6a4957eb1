import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { Relay } from '../../relay/relay.js';
import { defineApp, defineHandler } from '../../shared/app.js';
import { insertOutboxMessages, type OutboxMessage } from '../../shared/outbox.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { count, createTestEnv, randomName, type TestEnv, urls } from '../support/services.js';

const SendTo = z.object({ queue: z.string() });
const app = defineApp({
  name: 'dest',
  handlers: [
    defineHandler('SendTo', SendTo, async (message, ctx) => {
      ctx.send(message.queue, 'Sent', { to: message.queue });
    }),
  ],
});

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

const row = (queue: string, n: number): OutboxMessage => ({
  messageId: randomUUID(),
  destination: { kind: 'bullmq', queue },
  type: 'Numbered',
  payload: { n },
  headers: { correlationId: 'c' },
});

describe('a BullMQ queue name BullMQ refuses', () => {
  it('in the outbox (older version, SQL) is put aside alone; the rest of its batch is delivered', async () => {
    const good = randomName('good-');
    const rows = [row(good, 0), row('', 1), row(good, 2), row('a:b', 3), row(good, 4)];
    await insertOutboxMessages(env.knex, rows);
    const relay = await Relay.start({ config: env.config, batchSize: 500, concurrency: 1 });
    const q = new Queue(good, { connection: redis, prefix: env.config.bullmqPrefix });
    try {
      await waitUntil(async () => (await q.count()) === 3, 'the good rows to be delivered');
      const bad = await waitUntil(async () => {
        const found = await env
          .knex('dw_outbox')
          .whereIn('destination', ['', 'a:b'])
          .whereNotNull('last_error')
          .orderBy('id');
        return found.length === 2 ? found : undefined;
      }, 'the bad rows to be put aside');
      for (const b of bad) {
        expect(b.delivered_at).toBeNull();
        expect(b.attempts).toBe(1);
        expect(b.last_error).toMatch(/invalid BullMQ queue name/);
        // Backoff: not claimed again at once.
        expect(new Date(b.available_at).getTime()).toBeGreaterThan(Date.now());
      }
      const delivered = await env.knex('dw_outbox').where({ destination: good }).whereNotNull('delivered_at');
      expect(delivered).toHaveLength(3);
    } finally {
      await q.close();
      await relay.stop(5000);
    }
  });

  it('passed to ctx.send fails the handler at once with a clear, non-retryable error', async () => {
    const worker = await Worker.start({ app, config: env.config, knex: env.knex, housekeepingIntervalMs: 0 });
    try {
      const ids = { empty: randomUUID(), colon: randomUUID() };
      await publishRaw(env.config.exchange, [
        { routingKey: 'SendTo', body: { queue: '' }, properties: { messageId: ids.empty, type: 'SendTo' } },
        {
          routingKey: 'SendTo',
          body: { queue: 'a:b' },
          properties: { messageId: ids.colon, type: 'SendTo' },
        },
      ]);
      for (const [id, text] of [
        [ids.empty, /non-empty string/],
        [ids.colon, /cannot contain ":"/],
      ] as const) {
        const entry = await waitUntil(
          () => env.knex('dw_dead_letters').where({ message_id: id }).first(),
          'the dead letter',
        );
        // Retrying cannot help: one attempt, then the dead letters with the error's code.
        expect(entry).toMatchObject({ reason: 'handler-failed', attempts: 1 });
        expect(entry.error.code).toBe('DW_INVALID_DESTINATION');
        expect(entry.error.message).toMatch(text);
      }
      // Nothing of those handlers reached the outbox.
      expect(await count(env.knex, 'dw_outbox', { type: 'Sent' })).toBe(0);
    } finally {
      await worker.stop(5000);
    }
  });
});
