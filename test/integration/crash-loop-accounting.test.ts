import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineApp, defineHandler } from '../../shared/app.js';
import type { IncomingMessage } from '../../shared/envelope.js';
import { silentLogger } from '../../shared/logger.js';
import { MessageProcessor } from '../../worker/message-processor.js';
import type { RetryQueues } from '../../worker/retry-queues.js';
import { count, createTestEnv, type TestEnv } from '../support/services.js';

// Regressions of issue 9, item 2: the crash-loop guard counted every redelivery as one that died.
// The processor is driven directly with redelivered messages, as the consumer hands them over.
// This is the Postgres accounting of classic queues; quorum queues count deliveries in the broker
// (test/integration/quorum-queues.test.ts).

let abortNext: AbortController | undefined;
let outageRounds = 0;
const app = defineApp({
  name: 'accounting',
  handlers: [
    defineHandler('Note', z.object({ n: z.number() }), async (message, ctx) => {
      if (outageRounds > 0) {
        outageRounds--;
        // The database goes away and shutdown starts while the message waits for it: requeued.
        abortNext?.abort();
        throw Object.assign(new Error('terminating connection due to administrator command'), {
          code: '57P01',
        });
      }
      await ctx.trx('accounting_notes').insert({ n: message.n });
    }),
  ],
  migrations: [
    {
      name: 'accounting_001',
      up: (knex) => knex.schema.createTable('accounting_notes', (t) => t.integer('n').notNullable()),
      down: (knex) => knex.schema.dropTable('accounting_notes'),
    },
  ],
});

let env: TestEnv;
const queue = 'accounting-queue';
const maxDeliveries = 3;

beforeAll(async () => {
  env = await createTestEnv(app.migrations);
});
afterAll(async () => {
  await env?.teardown();
});

function processor(signal = new AbortController().signal): MessageProcessor {
  return new MessageProcessor({
    app,
    knex: env.knex,
    queue,
    exchange: 'accounting-exchange',
    retryQueues: {} as RetryQueues,
    maxMessageBytes: 10_000,
    maxDeliveries,
    queueType: 'classic',
    log: silentLogger,
    signal,
  });
}
const redelivery = (id: string, n: number): IncomingMessage => ({
  id,
  type: 'Note',
  correlationId: id,
  attempt: 1,
  timestamp: new Date(),
  headers: {},
  body: Buffer.from(JSON.stringify({ n })),
  redelivered: true,
});

describe('crash-loop accounting', () => {
  it('acks an already-committed message as a duplicate, however many deliveries died', async () => {
    expect(await processor().process({ ...redelivery('committed', 1), redelivered: false })).toBe('handled');
    // Deliveries of it died past the limit (a crash after the commit, before the ack, again and again).
    await env.knex('dw_delivery_counts').insert({ consumer: queue, message_id: 'committed', count: 10 });
    expect(await processor().process(redelivery('committed', 1))).toBe('duplicate');
    expect(await count(env.knex, 'dw_dead_letters')).toBe(0);
    expect(await count(env.knex, 'accounting_notes', { n: 1 })).toBe(1);
  });

  it('a redelivery that ends requeued (shutdown during an outage) did not die: never poison', async () => {
    const rounds = maxDeliveries + 3;
    outageRounds = rounds;
    for (let i = 0; i < rounds; i++) {
      abortNext = new AbortController();
      expect(await processor(abortNext.signal).process(redelivery('requeued', 2))).toBe('requeue');
    }
    expect(await processor().process(redelivery('requeued', 2))).toBe('handled');
    expect(await count(env.knex, 'dw_dead_letters')).toBe(0);
    expect(await count(env.knex, 'accounting_notes', { n: 2 })).toBe(1);
    // Settled: nothing is left counting against it.
    expect(await count(env.knex, 'dw_delivery_counts', { message_id: 'requeued' })).toBe(0);
  });

  it('redeliveries that started and died past the limit: poison, with what happened', async () => {
    // maxDeliveries recorded redeliveries started and never finished (their worker died).
    await env
      .knex('dw_delivery_counts')
      .insert({ consumer: queue, message_id: 'killer', count: maxDeliveries });
    expect(await processor().process(redelivery('killer', 3))).toBe('dead-lettered');
    const entry = await env.knex('dw_dead_letters').where({ message_id: 'killer' }).first();
    expect(entry.reason).toBe('handler-failed');
    expect(entry.error).toMatchObject({ name: 'PoisonMessageError', code: 'DW_POISON_MESSAGE' });
    expect(entry.error.message).toMatch(
      /^poison message: 3 redeliveries started handling and never finished .*limit 3, WorkerOptions.maxDeliveries/,
    );
    expect(await count(env.knex, 'accounting_notes', { n: 3 })).toBe(0);
  });

  it('one fewer death is not poison', async () => {
    await env
      .knex('dw_delivery_counts')
      .insert({ consumer: queue, message_id: 'survivor', count: maxDeliveries - 1 });
    expect(await processor().process(redelivery('survivor', 4))).toBe('handled');
  });
});
