import amqp from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { exampleMigrations } from '../../examples/app/migrations.js';
import { sendInvoiceHandlers } from '../../examples/app/send-invoice.js';
import { defineApp, defineHandler } from '../../shared/app.js';
import { NonRetryableError } from '../../shared/errors.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { count, createTestEnv, type TestEnv, urls } from '../support/services.js';

// Attempts each message id was handled with, as the handler saw them (ctx.envelope.attempt).
const seen = new Map<string, number[]>();
const Flaky = z.object({
  key: z.string(),
  failTimes: z.number().int(),
  permanent: z.boolean().optional(),
  // Fail the way fetch does when the HTTP API it calls is down (the database is fine).
  network: z.boolean().optional(),
});

const app = defineApp({
  name: 'test',
  handlers: [
    ...sendInvoiceHandlers,
    defineHandler(
      'Flaky',
      Flaky,
      async (message, ctx) => {
        seen.set(message.key, [...(seen.get(message.key) ?? []), ctx.envelope.attempt]);
        if (message.permanent) throw new NonRetryableError(`${message.key}: cannot ever work`);
        if (ctx.envelope.attempt <= message.failTimes && message.network) {
          const cause = Object.assign(new Error('connect ECONNREFUSED 10.0.0.1:443'), {
            code: 'ECONNREFUSED',
          });
          throw new TypeError('fetch failed', { cause });
        }
        if (ctx.envelope.attempt <= message.failTimes) {
          throw new Error(`${message.key}: attempt ${ctx.envelope.attempt} fails`);
        }
        await ctx.trx('invoices_sent').insert({ invoice_id: message.key });
      },
      // Small delays so the test is quick; tiers 50 and 100 ms (queues the teardown knows).
      { retry: { immediateRetries: 1, delayed: { count: 2, initialMs: 50, factor: 2 } } },
    ),
  ],
  migrations: exampleMigrations,
});

let env: TestEnv;
let worker: Worker;

beforeAll(async () => {
  env = await createTestEnv(exampleMigrations);
  worker = await Worker.start({ app, config: env.config, knex: env.knex, housekeepingIntervalMs: 0 });
});

afterAll(async () => {
  await worker?.stop(5000);
  await env?.teardown();
});

const publish = (id: string, type: string, body: object) =>
  publishRaw(env.config.exchange, [{ routingKey: type, body, properties: { messageId: id, type } }]);

const deadLetter = (id: string) => env.knex('dw_dead_letters').where({ message_id: id }).first();

describe('retries', () => {
  it('retries at once, then after delays, then dead-letters with the attempt count and the last error', async () => {
    await publish('always-fails', 'Flaky', { key: 'always-fails', failTimes: 99 });
    const entry = await waitUntil(() => deadLetter('always-fails'), 'the dead letter');
    expect(entry).toMatchObject({ reason: 'handler-failed', attempts: 4, type: 'Flaky', source: 'amqp' });
    expect(entry.error.message).toBe('always-fails: attempt 4 fails');
    expect(entry.error.stack).toContain('always-fails: attempt 4 fails');
    expect(seen.get('always-fails')).toEqual([1, 2, 3, 4]);
    expect(entry.payload).toEqual({ key: 'always-fails', failTimes: 99 });
    expect(entry.first_failed_at.getTime()).toBeLessThanOrEqual(entry.last_failed_at.getTime());
    // The retry bookkeeping of the broker does not end up in the entry.
    expect(Object.keys(entry.headers).filter((h) => h.startsWith('x-death'))).toEqual([]);
  });

  it("a handler's own ECONNREFUSED (its HTTP API is down) follows the retry policy, not the database-outage hold", async () => {
    await publish('api-down', 'Flaky', { key: 'api-down', failTimes: 99, network: true });
    const entry = await waitUntil(() => deadLetter('api-down'), 'the dead letter');
    expect(entry).toMatchObject({ reason: 'handler-failed', attempts: 4, type: 'Flaky' });
    expect(entry.error.message).toBe('fetch failed');
    expect(seen.get('api-down')).toEqual([1, 2, 3, 4]);
  });

  it('a transient failure succeeds on a delayed retry, once, and leaves no dead letter', async () => {
    await publish('transient', 'Flaky', { key: 'transient', failTimes: 2 });
    await waitUntil(() => count(env.knex, 'invoices_sent', { invoice_id: 'transient' }), 'the success');
    expect(seen.get('transient')).toEqual([1, 2, 3]);
    expect(await count(env.knex, 'invoices_sent', { invoice_id: 'transient' })).toBe(1);
    expect(await deadLetter('transient')).toBeUndefined();
  });

  it('loses nothing when a retry queue disappears under a running worker', async () => {
    // One delayed retry makes the worker declare the 50 ms tier queue...
    await publish('warm-up', 'Flaky', { key: 'warm-up', failTimes: 2 });
    await waitUntil(() => count(env.knex, 'invoices_sent', { invoice_id: 'warm-up' }), 'the warm-up');
    // ...which is then deleted, as an operator might. A delayed retry must not vanish.
    const connection = await amqp.connect(urls.amqp);
    try {
      const channel = await connection.createChannel();
      await channel.deleteQueue(`${env.config.exchange}.test.retry.50ms`);
    } finally {
      await connection.close();
    }
    await publish('queue-gone', 'Flaky', { key: 'queue-gone', failTimes: 99 });
    const entry = await waitUntil(() => deadLetter('queue-gone'), 'the dead letter');
    expect(entry).toMatchObject({ reason: 'handler-failed', attempts: 4 });
  });

  it('a non-retryable error goes straight to the dead letters', async () => {
    await publish('permanent', 'Flaky', { key: 'permanent', failTimes: 0, permanent: true });
    const entry = await waitUntil(() => deadLetter('permanent'), 'the dead letter');
    expect(entry).toMatchObject({ reason: 'handler-failed', attempts: 1 });
    expect(entry.error.message).toBe('permanent: cannot ever work');
    expect(seen.get('permanent')).toEqual([1]);
  });

  it('SendInvoice follows its contract (docs/contracts.md): 5 attempts through an outage, then handler-failed', async () => {
    await env.knex('invoice_outage').insert({});
    try {
      await publish('invoice-1', 'SendInvoice', { invoiceId: 'inv-1' });
      const entry = await waitUntil(() => deadLetter('invoice-1'), 'the dead letter', { timeoutMs: 45_000 });
      expect(entry).toMatchObject({ reason: 'handler-failed', attempts: 5, type: 'SendInvoice' });
      expect(entry.error.message).toContain('the invoicing service is down');
      expect(await count(env.knex, 'invoices_sent', { invoice_id: 'inv-1' })).toBe(0);
    } finally {
      await env.knex('invoice_outage').delete();
    }
  });

  it('SendInvoice with failTimes succeeds on the attempt after them', async () => {
    await publish('invoice-2', 'SendInvoice', { invoiceId: 'inv-2', failTimes: 2 });
    await waitUntil(() => count(env.knex, 'invoices_sent', { invoice_id: 'inv-2' }), 'the invoice');
    expect(await count(env.knex, 'invoices_sent', { invoice_id: 'inv-2' })).toBe(1);
    expect(await deadLetter('invoice-2')).toBeUndefined();
  });
});
