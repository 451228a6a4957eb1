import amqp from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineApp, defineHandler } from '../../shared/app.js';
import { NonRetryableError } from '../../shared/errors.js';
import { silentLogger } from '../../shared/logger.js';
import { insertOutboxMessages } from '../../shared/outbox.js';
import { defineSaga } from '../../shared/saga/definition.js';
import { startSaga } from '../../shared/saga/start.js';
import { waitUntil } from '../../shared/wait.js';
import { SagaStepRunner } from '../../worker/saga/step-runner.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { count, createTestEnv, type TestEnv, urls } from '../support/services.js';

// Regressions of issue 9, item 1: input PostgreSQL cannot store (NUL, lone surrogates, deep
// nesting) used to loop forever between the failed insert and the failed dead-letter insert.

const app = defineApp({
  name: 'hostile',
  handlers: [
    // Permissive, as many real handlers are: whatever came in is written and sent on.
    defineHandler('Any', z.record(z.string(), z.unknown()), async (message, ctx) => {
      await ctx.trx('hostile_effects').insert({ message_id: ctx.envelope.id });
      ctx.send('hostile_out', 'Echo', message);
    }),
    defineHandler('Fail', z.object({ text: z.string() }), async (message) => {
      throw new NonRetryableError(message.text);
    }),
  ],
  migrations: [
    {
      name: 'hostile_001',
      up: (knex) => knex.schema.createTable('hostile_effects', (t) => t.text('message_id').notNullable()),
      down: (knex) => knex.schema.dropTable('hostile_effects'),
    },
  ],
});

let env: TestEnv;
let worker: Worker | undefined;

beforeAll(async () => {
  env = await createTestEnv(app.migrations);
  worker = await Worker.start({ app, config: env.config, knex: env.knex, housekeepingIntervalMs: 0 });
});

afterAll(async () => {
  await worker?.stop(5000);
  await env?.teardown();
});

const deadLetter = (id: string) =>
  waitUntil(() => env.knex('dw_dead_letters').where({ message_id: id }).first(), `the dead letter ${id}`, {
    timeoutMs: 15_000,
  });
const send = (messageId: string, body: string, properties: amqp.Options.Publish = {}, type = 'Any') =>
  publishRaw(env.config.exchange, [
    { routingKey: type, body: Buffer.from(body), properties: { messageId, type, ...properties } },
  ]);

describe('input PostgreSQL cannot store (worker in process)', () => {
  it('a lone surrogate in a value: invalid-payload dead letter, body byte-exact', async () => {
    const body = '{"userId":"\\ud800","meetingId":"m1"}';
    await send('surrogate', body);
    const entry = await deadLetter('surrogate');
    expect(entry.reason).toBe('invalid-payload');
    expect(entry.error.message).toMatch(/^PostgreSQL refused what handling this message wrote/);
    expect(entry.body.toString()).toBe(body);
    expect(entry.payload).toEqual({ userId: '\uFFFD', meetingId: 'm1' });
    expect(await count(env.knex, 'hostile_effects', { message_id: 'surrogate' })).toBe(0);
  });

  it('a NUL in a key: invalid-payload dead letter with the key made storable', async () => {
    const body = '{"a\\u0000b":1}';
    await send('nul-key', body);
    const entry = await deadLetter('nul-key');
    expect(entry.reason).toBe('invalid-payload');
    expect(entry.payload).toEqual({ 'a\uFFFDb': 1 });
    expect(entry.body.toString()).toBe(body);
  });

  it('a NUL in the messageId: invalid-payload dead letter under the storable id', async () => {
    await send('nul\0id', '{"x":1}');
    const entry = await deadLetter('nul\uFFFDid');
    expect(entry.reason).toBe('invalid-payload');
    expect(entry.error.message).toMatch(/messageId contains a NUL/);
  });

  it('a NUL in the type: unknown-type dead letter with the type made storable', async () => {
    await publishRaw(env.config.exchange, [
      { routingKey: 'Any', body: Buffer.from('{}'), properties: { messageId: 'nul-type', type: 'A\0ny' } },
    ]);
    const entry = await deadLetter('nul-type');
    expect(entry).toMatchObject({ reason: 'unknown-type', type: 'A\uFFFDny' });
  });

  it('NUL in a header name and in the correlation id and traceparent: stored, or dead-lettered', async () => {
    await send('nul-header', '{"x":1}', {
      correlationId: 'c\0id',
      headers: { 'x-a\0b': 'v\0w', traceparent: 't\0p' },
    });
    const entry = await deadLetter('nul-header');
    expect(entry.reason).toBe('invalid-payload');
    expect(entry.headers).toMatchObject({ 'x-a\uFFFDb': 'v\uFFFDw', traceparent: 't\uFFFDp' });
    expect(entry.properties.correlationId).toBe('c\uFFFDid');
  });

  it('a handler error with NUL and a lone surrogate: handler-failed dead letter', async () => {
    await send('bad-error', '{"text":"no\\u0000pe\\udc00"}', {}, 'Fail');
    const entry = await deadLetter('bad-error');
    expect(entry.reason).toBe('handler-failed');
    expect(entry.error.message).toBe('no\uFFFDpe\uFFFD');
  });

  it('deep nesting JSON.parse accepts: dead-lettered with the body, payload left out', async () => {
    const depth = 100_000;
    const body = `{"deep":${'['.repeat(depth)}${']'.repeat(depth)}}`;
    await send('deep', body);
    const entry = await deadLetter('deep');
    expect(entry.reason).toBe('invalid-payload');
    expect(entry.payload).toBeNull();
    expect(entry.body.toString()).toBe(body);
  });

  it('goes on: a normal message is handled, and nothing is left in the queue after a stop', async () => {
    await send('normal', '{"userId":"u1"}');
    await waitUntil(
      async () => (await count(env.knex, 'hostile_effects', { message_id: 'normal' })) === 1,
      'normal',
    );
    await worker?.stop(5000);
    worker = undefined;
    const connection = await amqp.connect(urls.amqp);
    try {
      const channel = await connection.createChannel();
      const queue = await channel.checkQueue(`${env.config.exchange}.hostile`);
      // Unacked deliveries return to "ready" once the consumer is gone: a looping message shows here.
      expect(queue.messageCount).toBe(0);
    } finally {
      await connection.close();
    }
    expect(await count(env.knex, 'dw_dead_letters')).toBe(7);
  });
});

describe('a saga step error PostgreSQL cannot store', () => {
  it('is recorded made storable and the saga compensates', async () => {
    const saga = defineSaga<Record<string, unknown>>('hostile-saga', { retry: { attempts: 3, backoffMs: 1 } })
      .step('a', [
        async (ctx) => {
          await ctx.trx('hostile_effects').insert({ message_id: `${ctx.sagaId}/a` });
        },
        async (ctx) => {
          await ctx.trx('hostile_effects').insert({ message_id: `${ctx.sagaId}/a-undone` });
        },
      ])
      .step('b', () => {
        throw new NonRetryableError('refused\0by \ud800 the API');
      });
    const sagaApp = defineApp({ name: 'hostile-sagas', sagas: [saga] });
    const runner = new SagaStepRunner({
      app: sagaApp,
      knex: env.knex,
      log: silentLogger,
      signal: new AbortController().signal,
    });
    await env.knex.transaction(async (trx) => {
      const started = await startSaga(trx, { saga, input: {}, id: 'hs-1', correlationId: 'hs-1' });
      await insertOutboxMessages(trx, started.outbox);
    });
    const job = (step: string, phase: 'execute' | 'compensate' = 'execute') => ({
      kind: 'step' as const,
      sagaId: 'hs-1',
      saga: 'hostile-saga',
      phase,
      step,
    });
    expect(await runner.runStep(job('a'))).toBe('completed');
    expect(await runner.runStep(job('b'))).toBe('failed');
    const step = await env.knex('dw_saga_steps').where({ saga_id: 'hs-1', step: 'b' }).first();
    expect(step).toMatchObject({ status: 'failed', attempts: 1 });
    expect(step.error.message).toBe('refused\uFFFDby \uFFFD the API');
    expect((await env.knex('dw_sagas').where({ id: 'hs-1' }).first()).status).toBe('compensating');
    expect(await runner.runStep(job('a', 'compensate'))).toBe('completed');
    expect((await env.knex('dw_sagas').where({ id: 'hs-1' }).first()).status).toBe('compensated');
    expect(await count(env.knex, 'hostile_effects', { message_id: 'hs-1/a-undone' })).toBe(1);
    const [dead] = await env.knex('dw_dead_letters').where({ saga_id: 'hs-1' });
    expect(dead.reason).toBe('step-failed');
  });
});
