import amqp from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineApp, defineHandler } from '../../shared/app.js';
import { retryQueueName, workQueueName } from '../../shared/defaults.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { createTestEnv, type TestEnv, urls } from '../support/services.js';

// A retry queue the broker refuses to declare as the worker wants it (it exists with other
// arguments): the retry can never be scheduled. The message must not spin for ever.
let handled = 0;
const app = defineApp({
  name: 'test',
  handlers: [
    defineHandler(
      'AlwaysFails',
      z.object({ n: z.number() }),
      async () => {
        handled++;
        throw new Error('fails, to be retried after a delay');
      },
      { retry: { immediateRetries: 0, delayed: { count: 2, initialMs: 50 } } },
    ),
  ],
});

let env: TestEnv;
let worker: Worker;

beforeAll(async () => {
  env = await createTestEnv();
  const connection = await amqp.connect(urls.amqp);
  const channel = await connection.createChannel();
  // Other arguments than the worker's (no dead-letter exchange): its declaration fails with a 406.
  await channel.assertQueue(retryQueueName(workQueueName(env.config.exchange, 'test'), 50), {
    durable: true,
    arguments: { 'x-max-length': 5 },
  });
  await connection.close();
  worker = await Worker.start({ app, config: env.config, knex: env.knex, housekeepingIntervalMs: 0 });
});

afterAll(async () => {
  await worker?.stop(5000);
  await env?.teardown();
});

describe('a retry the broker refuses to schedule', () => {
  it('is paused and counted, then dead-lettered saying why, instead of redelivered for ever', async () => {
    await publishRaw(env.config.exchange, [
      {
        routingKey: 'AlwaysFails',
        body: { n: 1 },
        properties: { messageId: 'refused', type: 'AlwaysFails' },
      },
    ]);
    const entry = await waitUntil(
      () => env.knex('dw_dead_letters').where({ message_id: 'refused' }).first(),
      'the dead letter',
      { timeoutMs: 45_000 },
    );
    expect(entry).toMatchObject({ reason: 'handler-failed', type: 'AlwaysFails' });
    expect(entry.error.code).toBe('DW_REPEATED_FAILURE');
    // One handler run per delivery, each paused a second: five deliveries (maxDeliveries), not a spin.
    expect(handled).toBe(5);
  });
});
