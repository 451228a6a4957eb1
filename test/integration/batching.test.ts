import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineApp, defineHandler } from '../../shared/app.js';
import type { Migration } from '../../shared/db/migrate.js';
import { NonRetryableError } from '../../shared/errors.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { count, createTestEnv, randomName, type TestEnv } from '../support/services.js';
import { declareWorkQueue, drained } from '../support/work-queue.js';

// Issue 11, item 1: deliveries at hand are handled in one transaction; a failure falls back to one
// by one. Each test queues its messages before a worker starts, so batches form from the prefetch.

const tables: Migration = {
  name: 'batching_test_tables',
  async up(knex) {
    await knex.schema.createTable('effects', (t) => {
      t.bigIncrements('id');
      t.text('message_id').notNullable();
      t.text('key').notNullable();
      t.text('txid').notNullable();
      t.integer('attempt').notNullable();
    });
  },
};

const Item = z.object({
  key: z.string(),
  fail: z.enum(['always', 'once']).optional(),
  /** Goes into the outbox row's jsonb: a NUL or lone surrogate here is refused by PostgreSQL. */
  text: z.string().optional(),
});
const commits: string[] = [];
const rollbacks: string[] = [];

const app = defineApp({
  name: randomName('batch'),
  migrations: [tables],
  handlers: [
    defineHandler(
      'Item',
      Item,
      async (msg, ctx) => {
        // The transaction id tells which messages shared a transaction.
        await ctx.trx.raw(
          'insert into effects (message_id, key, txid, attempt) values (?, ?, txid_current()::text, ?)',
          [ctx.envelope.id, msg.key, ctx.envelope.attempt],
        );
        ctx.send('batch_events', 'ItemDone', { key: msg.key, text: msg.text ?? '' });
        ctx.onCommit(() => commits.push(msg.key));
        ctx.onRollback(() => rollbacks.push(msg.key));
        if (msg.fail === 'always') throw new NonRetryableError(`${msg.key} fails on purpose`);
        if (msg.fail === 'once' && ctx.envelope.attempt === 1) throw new Error(`${msg.key} fails once`);
      },
      { retry: { immediateRetries: 1, delayed: { count: 0 } } },
    ),
  ],
});

let env: TestEnv;
let worker: Worker | undefined;

beforeAll(async () => {
  env = await createTestEnv(app.migrations);
  await declareWorkQueue(app, env);
});

beforeEach(async () => {
  await env.knex.raw('truncate effects, dw_inbox, dw_outbox, dw_dead_letters, dw_delivery_counts');
  commits.length = 0;
  rollbacks.length = 0;
});

afterEach(async () => {
  await worker?.stop(5000);
  worker = undefined;
});

afterAll(async () => {
  await env?.teardown();
});

type Message = Parameters<typeof publishRaw>[1][number];

const item = (id: string, body: z.input<typeof Item>): Message => ({
  routingKey: 'Item',
  body,
  properties: { messageId: id, type: 'Item', contentType: 'application/json' },
});

async function start(options: { concurrency: number; batchSize?: number; maxMessageBytes?: number }) {
  worker = await Worker.start({ app, config: env.config, ...options });
  return worker;
}

/** How many effect rows each transaction wrote. */
async function transactions(): Promise<number[]> {
  const rows = await env
    .knex('effects')
    .select('txid')
    .count<{ txid: string; n: string }[]>('* as n')
    .groupBy('txid');
  return rows.map((r) => Number(r.n));
}

async function effectsPerKey(): Promise<Map<string, number>> {
  const rows = await env
    .knex('effects')
    .select('key')
    .count<{ key: string; n: string }[]>('* as n')
    .groupBy('key');
  return new Map(rows.map((r) => [r.key, Number(r.n)]));
}

const outboxKeys = async () =>
  (await env.knex('dw_outbox').select(env.knex.raw("payload->>'key' as key"))).map((r) => r.key as string);

describe('batched message handling', () => {
  it('handles deliveries at hand several to a transaction, each message once, at most batchSize each', async () => {
    const n = 60;
    await publishRaw(
      env.config.exchange,
      Array.from({ length: n }, (_, i) => item(`form-${i}`, { key: `form-${i}` })),
    );
    const w = await start({ concurrency: 2, batchSize: 10 });
    expect(w.options.batchSize).toBe(10);
    expect(w.options.prefetch).toBe(2 * 2 * 10);
    await waitUntil(async () => (await count(env.knex, 'effects')) >= n, 'every message handled');
    await drained(w);

    const sizes = await transactions();
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(n);
    expect(Math.max(...sizes)).toBeGreaterThan(1);
    expect(Math.max(...sizes)).toBeLessThanOrEqual(10);
    expect(sizes.length).toBeLessThan(n);
    const effects = await effectsPerKey();
    expect(effects.size).toBe(n);
    expect([...effects.values()].every((c) => c === 1)).toBe(true);
    expect(await count(env.knex, 'dw_inbox')).toBe(n);
    expect((await outboxKeys()).sort()).toEqual([...effects.keys()].sort());
    expect(new Set(commits).size).toBe(n);
    expect(rollbacks).toEqual([]);
  });

  it('batchSize 1 handles every message in a transaction of its own, with the prefetch of before', async () => {
    const n = 20;
    await publishRaw(
      env.config.exchange,
      Array.from({ length: n }, (_, i) => item(`one-${i}`, { key: `one-${i}` })),
    );
    const w = await start({ concurrency: 2, batchSize: 1 });
    expect(w.options.prefetch).toBe(2 * 2);
    await waitUntil(async () => (await count(env.knex, 'effects')) >= n, 'every message handled');
    await drained(w);
    expect(await transactions()).toEqual(Array.from({ length: n }, () => 1));
    expect(await count(env.knex, 'dw_inbox')).toBe(n);
  });

  it('a message id repeated inside a batch and across batches has one effect', async () => {
    const ids = Array.from({ length: 30 }, (_, i) => `dup-${i}`);
    const plan: Message[] = [];
    // Back to back (same batch), then the rest, then every id again (later batches).
    for (const id of ids.slice(0, 10)) plan.push(item(id, { key: id }), item(id, { key: id }));
    for (const id of ids.slice(10)) plan.push(item(id, { key: id }));
    for (const id of ids) plan.push(item(id, { key: id }));
    await publishRaw(env.config.exchange, plan);
    const w = await start({ concurrency: 1, batchSize: 10 });
    await waitUntil(async () => (await count(env.knex, 'dw_inbox')) >= ids.length, 'every id handled');
    await drained(w);
    // Once more after they committed: absorbed by the inbox.
    await publishRaw(env.config.exchange, [
      ...ids.map((id) => item(id, { key: id })),
      item('dup-marker', { key: 'dup-marker' }),
    ]);
    await waitUntil(
      async () => (await count(env.knex, 'effects', { key: 'dup-marker' })) === 1,
      'the marker',
    );
    await drained(w);

    const effects = await effectsPerKey();
    expect(effects.size).toBe(ids.length + 1);
    expect([...effects.values()].every((c) => c === 1)).toBe(true);
    expect(await count(env.knex, 'dw_inbox')).toBe(ids.length + 1);
    expect((await outboxKeys()).length).toBe(ids.length + 1);
    expect(Math.max(...(await transactions()))).toBeGreaterThan(1);
    expect(await count(env.knex, 'dw_dead_letters')).toBe(0);
  });

  it('a handler failing in the middle of a batch: only that message is retried or dead-lettered, the others handled once', async () => {
    const n = 40;
    const fail = (i: number) => (i % 10 === 4 ? 'always' : i % 10 === 7 ? 'once' : undefined);
    await publishRaw(
      env.config.exchange,
      Array.from({ length: n }, (_, i) => item(`mid-${i}`, { key: `mid-${i}`, fail: fail(i) })),
    );
    const w = await start({ concurrency: 1, batchSize: 10 });
    const failing = Array.from({ length: n }, (_, i) => i).filter((i) => fail(i) === 'always');
    await waitUntil(
      async () =>
        (await count(env.knex, 'dw_inbox')) >= n - failing.length &&
        (await count(env.knex, 'dw_dead_letters')) >= failing.length,
      'every message handled or dead-lettered',
    );
    await drained(w);

    const effects = await effectsPerKey();
    for (let i = 0; i < n; i++) {
      expect(effects.get(`mid-${i}`) ?? 0, `mid-${i}`).toBe(fail(i) === 'always' ? 0 : 1);
    }
    // The message that failed once succeeded on its second attempt: the batch's run is not counted.
    const onceRows = await env.knex('effects').whereIn(
      'key',
      Array.from({ length: n }, (_, i) => i)
        .filter((i) => fail(i) === 'once')
        .map((i) => `mid-${i}`),
    );
    expect(onceRows.every((r) => r.attempt === 2)).toBe(true);
    const dead = await env.knex('dw_dead_letters').orderBy('message_id');
    expect(dead.map((d) => d.message_id).sort()).toEqual(failing.map((i) => `mid-${i}`).sort());
    for (const d of dead) {
      expect(d.reason).toBe('handler-failed');
      expect(d.attempts).toBe(1);
      expect(d.error.message).toMatch(/fails on purpose/);
    }
    expect(await count(env.knex, 'dw_inbox')).toBe(n - failing.length);
    expect((await outboxKeys()).sort()).toEqual([...effects.keys()].sort());
    // A batch rolled back around a failing message: good messages' rollback hooks ran, then they
    // committed one by one.
    expect(rollbacks.some((k) => fail(Number(k.slice(4))) === undefined)).toBe(true);
    expect(new Set(commits).size).toBe(n - failing.length);
  });

  it('hostile inputs mixed into batches are dead-lettered one each; the valid messages around them are handled once', async () => {
    const hostile: Message[] = [
      {
        routingKey: 'Item',
        body: Buffer.from('{not json'),
        properties: { messageId: 'h-json', type: 'Item' },
      },
      { routingKey: 'Item', body: { key: 'x' }, properties: { messageId: 'h-type', type: 'Nope' } },
      { routingKey: 'Item', body: { key: 42 }, properties: { messageId: 'h-schema', type: 'Item' } },
      {
        routingKey: 'Item',
        body: { key: 'big', text: 'x'.repeat(5000) },
        properties: { messageId: 'h-big', type: 'Item' },
      },
      { routingKey: 'Item', body: { key: 'nul-id' }, properties: { messageId: 'h-nul\0id', type: 'Item' } },
      // Valid JSON and schema, refused by PostgreSQL in the batch's outbox insert.
      item('h-nul-text', { key: 'h-nul-text', text: 'a\0b' }),
      item('h-surrogate', { key: 'h-surrogate', text: 'a\ud800b' }),
      // Fails in its handler, after writes of earlier messages in the same transaction.
      item('h-fails', { key: 'h-fails', fail: 'always' }),
    ];
    const valid = Array.from({ length: 40 }, (_, i) => item(`ok-${i}`, { key: `ok-${i}` }));
    const plan: Message[] = [];
    for (const [i, m] of valid.entries()) {
      plan.push(m);
      // One hostile message after every fifth valid one: 40 valid ones carry all 8.
      const hostileOne = i % 5 === 2 ? hostile[(i - 2) / 5] : undefined;
      if (hostileOne) plan.push(hostileOne);
    }
    expect(plan.length).toBe(valid.length + hostile.length);
    await publishRaw(env.config.exchange, plan);
    const w = await start({ concurrency: 2, batchSize: 10, maxMessageBytes: 2000 });
    await waitUntil(
      async () =>
        (await count(env.knex, 'dw_inbox')) >= valid.length &&
        (await count(env.knex, 'dw_dead_letters')) >= hostile.length,
      'every valid message handled and every hostile one dead-lettered',
    );
    await drained(w);

    const effects = await effectsPerKey();
    expect(effects.size).toBe(valid.length);
    for (let i = 0; i < valid.length; i++) expect(effects.get(`ok-${i}`), `ok-${i}`).toBe(1);
    expect(await count(env.knex, 'dw_inbox')).toBe(valid.length);
    expect((await outboxKeys()).length).toBe(valid.length);
    const dead = await env.knex('dw_dead_letters').select('message_id', 'reason');
    expect(dead).toHaveLength(hostile.length);
    const reasons = Object.fromEntries(dead.map((d) => [d.message_id, d.reason]));
    expect(reasons).toMatchObject({
      'h-json': 'invalid-json',
      'h-type': 'unknown-type',
      'h-schema': 'invalid-payload',
      'h-big': 'invalid-payload',
      'h-nul-text': 'invalid-payload',
      'h-surrogate': 'invalid-payload',
      'h-fails': 'handler-failed',
    });
    expect(Math.max(...(await transactions()))).toBeGreaterThan(1);
  });
});
