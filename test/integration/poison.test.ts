import amqp from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineApp, defineHandler } from '../../shared/app.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { count, createTestEnv, type TestEnv, urls } from '../support/services.js';

const app = defineApp({
  name: 'test',
  handlers: [
    defineHandler('Good', z.object({ n: z.number().int() }), async (message, ctx) => {
      await ctx.trx('good_messages').insert({ n: message.n });
    }),
    defineHandler('Text', z.object({ text: z.string() }), async () => {}),
  ],
  migrations: [
    {
      name: 'test_001_good',
      up: (knex) => knex.schema.createTable('good_messages', (t) => t.integer('n').notNullable()),
      down: (knex) => knex.schema.dropTable('good_messages'),
    },
  ],
});

let env: TestEnv;
let worker: Worker;

beforeAll(async () => {
  env = await createTestEnv(app.migrations);
  worker = await Worker.start({
    app,
    config: env.config,
    knex: env.knex,
    maxMessageBytes: 2000,
    housekeepingIntervalMs: 0,
  });
});

afterAll(async () => {
  await worker?.stop(5000);
  await env?.teardown();
});

const deadLetter = (id: string) => env.knex('dw_dead_letters').where({ message_id: id }).first();
const good = (n: number) => ({
  routingKey: 'Good',
  body: { n },
  properties: { messageId: `good-${n}`, type: 'Good' },
});

describe('poison input from an independent AMQP client', () => {
  it('dead-letters each kind at once with its reason while good messages are handled', async () => {
    await publishRaw(env.config.exchange, [
      good(1),
      {
        routingKey: 'Good',
        body: Buffer.from('{"n": 1,'),
        properties: { messageId: 'bad-json', type: 'Good' },
      },
      good(2),
      // Routed by a bound key but typed as something no handler knows.
      { routingKey: 'Good', body: { n: 3 }, properties: { messageId: 'unknown', type: 'NoSuchType' } },
      { routingKey: 'Good', body: { n: 'three' }, properties: { messageId: 'bad-payload', type: 'Good' } },
      {
        routingKey: 'Good',
        body: { n: 4, pad: 'x'.repeat(3000) },
        properties: { messageId: 'too-big', type: 'Good' },
      },
      // Valid JSON Postgres cannot hold in jsonb (NUL): must still be stored, not loop forever.
      {
        routingKey: 'Text',
        body: Buffer.from('{"text": 5, "nul": "a\\u0000b"}'),
        properties: { messageId: 'nul', type: 'Text' },
      },
      good(3),
    ]);
    await waitUntil(async () => (await count(env.knex, 'dw_dead_letters')) === 5, 'five dead letters');
    await waitUntil(async () => (await count(env.knex, 'good_messages')) === 3, 'the good messages');

    const badJson = await deadLetter('bad-json');
    expect(badJson).toMatchObject({ reason: 'invalid-json', attempts: 1, payload: null });
    expect(badJson.body.toString()).toBe('{"n": 1,');
    expect(badJson.error.message).toMatch(/^body is not JSON/);

    const unknown = await deadLetter('unknown');
    expect(unknown).toMatchObject({ reason: 'unknown-type', type: 'NoSuchType', payload: { n: 3 } });
    expect(unknown.error.message).toContain('NoSuchType');

    const badPayload = await deadLetter('bad-payload');
    expect(badPayload).toMatchObject({ reason: 'invalid-payload', attempts: 1, payload: { n: 'three' } });
    expect(badPayload.error.message).toMatch(/^Good payload does not match its schema: n: /);

    const tooBig = await deadLetter('too-big');
    expect(tooBig.reason).toBe('invalid-payload');
    expect(tooBig.error.message).toMatch(/over the limit of 2000/);
    expect(tooBig.body.length).toBeGreaterThan(2000);

    const nul = await deadLetter('nul');
    expect(nul.reason).toBe('invalid-payload');
    expect(nul.body.toString()).toBe('{"text": 5, "nul": "a\\u0000b"}');
    expect(nul.payload).toEqual({ text: 5, nul: 'a\uFFFDb' });

    expect(await env.knex('good_messages').orderBy('n').pluck('n')).toEqual([1, 2, 3]);
  });

  it('handles a message sent straight to the work queue with neither type nor routing key it knows', async () => {
    const connection = await amqp.connect(urls.amqp);
    try {
      const channel = await connection.createConfirmChannel();
      channel.publish('', `${env.config.exchange}.test`, Buffer.from('{}'), { messageId: 'untyped' });
      await channel.waitForConfirms();
    } finally {
      await connection.close();
    }
    const entry = await waitUntil(() => deadLetter('untyped'), 'the dead letter');
    expect(entry.reason).toBe('unknown-type');
    await publishRaw(env.config.exchange, [good(4)]);
    await waitUntil(async () => (await count(env.knex, 'good_messages')) === 4, 'the next good message');
  });
});
