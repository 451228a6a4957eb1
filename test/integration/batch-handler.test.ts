import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineApp, defineBatchHandler, defineHandler } from '../../shared/app.js';
import type { Migration } from '../../shared/db/migrate.js';
import { NonRetryableError } from '../../shared/errors.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { count, createTestEnv, randomName, type TestEnv } from '../support/services.js';
import { declareWorkQueue, drained } from '../support/work-queue.js';

// Batch handlers (defineBatchHandler): the messages of a batch in one call, each with its own
// context; a throw rolls the batch back and every message is handled again alone. Each test queues
// its messages before a worker starts, so batches form from the prefetch.

const tables: Migration = {
  name: 'batch_handler_test_tables',
  async up(knex) {
    await knex.schema.createTable('bh_effects', (t) => {
      t.bigIncrements('id');
      t.text('message_id').notNullable();
      t.text('key').notNullable();
      t.text('handler').notNullable();
      t.text('txid').notNullable();
      t.integer('attempt').notNullable();
    });
  },
};

const Item = z.object({ key: z.string(), fail: z.enum(['always', 'once']).optional() });
/** Sizes of the batch handler's calls, in call order. */
const calls: number[] = [];
const commits: string[] = [];

const app = defineApp({
  name: randomName('bh'),
  migrations: [tables],
  handlers: [
    defineBatchHandler(
      'Item',
      Item,
      async (batch) => {
        calls.push(batch.length);
        const trx = batch[0].ctx.trx;
        // One multi-row insert for the whole batch; the transaction id tells which rows shared one.
        await trx.raw(
          `insert into bh_effects (message_id, key, handler, txid, attempt)
           select m, k, 'batch', txid_current()::text, a
             from unnest(?::text[], ?::text[], ?::int[]) as t(m, k, a)`,
          [
            batch.map((e) => e.ctx.envelope.id),
            batch.map((e) => e.message.key),
            batch.map((e) => e.ctx.envelope.attempt),
          ],
        );
        for (const { message, ctx } of batch) {
          ctx.send('bh_events', 'ItemDone', { key: message.key });
          ctx.onCommit(() => commits.push(message.key));
        }
        for (const { message, ctx } of batch) {
          if (message.fail === 'always') throw new NonRetryableError(`${message.key} fails on purpose`);
          if (message.fail === 'once' && ctx.envelope.attempt === 1)
            throw new Error(`${message.key} fails once`);
        }
      },
      { retry: { immediateRetries: 1, delayed: { count: 0 } } },
    ),
    defineHandler('Note', Item, async (msg, ctx) => {
      await ctx.trx.raw(
        "insert into bh_effects (message_id, key, handler, txid, attempt) values (?, ?, 'note', txid_current()::text, 1)",
        [ctx.envelope.id, msg.key],
      );
    }),
    // A handler per message first, then a batch handler, for one type: each message gets both, in
    // that order, in the same transaction.
    defineHandler('Mixed', Item, async (msg, ctx) => {
      await ctx.trx.raw(
        "insert into bh_effects (message_id, key, handler, txid, attempt) values (?, ?, 'one', txid_current()::text, 1)",
        [ctx.envelope.id, msg.key],
      );
    }),
    defineBatchHandler('Mixed', Item, async (batch) => {
      for (const { message, ctx } of batch) {
        const before = await ctx.trx('bh_effects').where({ message_id: ctx.envelope.id, handler: 'one' });
        if (before.length !== 1) throw new Error(`${message.key}: the per-message handler did not run first`);
      }
      await batch[0].ctx.trx('bh_effects').insert(
        batch.map(({ message, ctx }) => ({
          message_id: ctx.envelope.id,
          key: message.key,
          handler: 'batch',
          txid: ctx.trx.raw('txid_current()::text'),
          attempt: 1,
        })),
      );
    }),
  ],
});

let env: TestEnv;
let worker: Worker | undefined;

beforeAll(async () => {
  env = await createTestEnv(app.migrations);
  await declareWorkQueue(app, env);
});

beforeEach(async () => {
  await env.knex.raw('truncate bh_effects, dw_inbox, dw_outbox, dw_dead_letters, dw_delivery_counts');
  calls.length = 0;
  commits.length = 0;
});

afterEach(async () => {
  await worker?.stop(5000);
  worker = undefined;
});

afterAll(async () => {
  await env?.teardown();
});

type Message = Parameters<typeof publishRaw>[1][number];

const message = (type: 'Item' | 'Mixed' | 'Note', id: string, body: z.input<typeof Item>): Message => ({
  routingKey: type,
  body,
  properties: { messageId: id, type, contentType: 'application/json', correlationId: `corr-${id}` },
});

async function start(batchSize: number, concurrency = 2) {
  worker = await Worker.start({ app, config: env.config, concurrency, batchSize });
  return worker;
}

async function effects(handler = 'batch') {
  return env.knex('bh_effects').where({ handler }).select('message_id', 'key', 'txid', 'attempt');
}

describe('batch handlers', () => {
  it('get the messages at hand in one call; each message has one effect and its own outbox row', async () => {
    const n = 60;
    await publishRaw(
      env.config.exchange,
      Array.from({ length: n }, (_, i) => message('Item', `form-${i}`, { key: `form-${i}` })),
    );
    const w = await start(10);
    await waitUntil(async () => (await count(env.knex, 'bh_effects')) >= n, 'every message handled');
    await drained(w);

    expect(calls.reduce((a, b) => a + b, 0)).toBe(n);
    expect(Math.max(...calls)).toBeGreaterThan(1);
    expect(Math.max(...calls)).toBeLessThanOrEqual(10);
    const rows = await effects();
    expect(new Set(rows.map((r) => r.key)).size).toBe(n);
    expect(rows).toHaveLength(n);
    expect(new Set(rows.map((r) => r.txid)).size).toBe(calls.length);
    expect(await count(env.knex, 'dw_inbox')).toBe(n);
    // Each entry's send carries its own message's causation and correlation.
    const outbox = await env.knex('dw_outbox').select('payload', 'headers');
    expect(outbox).toHaveLength(n);
    for (const row of outbox) {
      const id = `form-${(row.payload as { key: string }).key.slice(5)}`;
      expect(row.headers).toMatchObject({ causationId: id, correlationId: `corr-${id}` });
    }
    expect(new Set(commits).size).toBe(n);
  });

  it('a throw rolls the batch back and each message is handled alone: only the failing one is retried or dead-lettered', async () => {
    const n = 40;
    const fail = (i: number) => (i % 10 === 4 ? 'always' : i % 10 === 7 ? 'once' : undefined);
    await publishRaw(
      env.config.exchange,
      Array.from({ length: n }, (_, i) => message('Item', `mid-${i}`, { key: `mid-${i}`, fail: fail(i) })),
    );
    const w = await start(10);
    const failing = Array.from({ length: n }, (_, i) => i).filter((i) => fail(i) === 'always');
    await waitUntil(
      async () =>
        (await count(env.knex, 'dw_inbox')) >= n - failing.length &&
        (await count(env.knex, 'dw_dead_letters')) >= failing.length,
      'every message handled or dead-lettered',
    );
    await drained(w);

    const rows = await effects();
    const perKey = new Map<string, number>();
    for (const r of rows) perKey.set(r.key, (perKey.get(r.key) ?? 0) + 1);
    for (let i = 0; i < n; i++) {
      expect(perKey.get(`mid-${i}`) ?? 0, `mid-${i}`).toBe(fail(i) === 'always' ? 0 : 1);
    }
    // After a rolled-back batch its messages came one per call.
    expect(calls).toContain(1);
    expect(Math.max(...calls)).toBeGreaterThan(1);
    // The message that failed once succeeded on its second attempt: the batch's run is not counted.
    expect(rows.filter((r) => fail(Number(r.key.slice(4))) === 'once').every((r) => r.attempt === 2)).toBe(
      true,
    );
    const dead = await env.knex('dw_dead_letters').select('message_id', 'reason', 'attempts');
    expect(dead.map((d) => d.message_id).sort()).toEqual(failing.map((i) => `mid-${i}`).sort());
    expect(dead.every((d) => d.reason === 'handler-failed' && d.attempts === 1)).toBe(true);
    expect(await count(env.knex, 'dw_outbox')).toBe(n - failing.length);
    expect(new Set(commits).size).toBe(n - failing.length);
  });

  it('never sees a duplicate: a message id repeated inside a batch and across batches has one effect', async () => {
    const ids = Array.from({ length: 30 }, (_, i) => `dup-${i}`);
    const plan: Message[] = [];
    for (const id of ids.slice(0, 10))
      plan.push(message('Item', id, { key: id }), message('Item', id, { key: id }));
    for (const id of ids.slice(10)) plan.push(message('Item', id, { key: id }));
    for (const id of ids) plan.push(message('Item', id, { key: id }));
    await publishRaw(env.config.exchange, plan);
    const w = await start(10);
    await waitUntil(async () => (await count(env.knex, 'dw_inbox')) >= ids.length, 'every id handled');
    await drained(w);

    const rows = await effects();
    expect(rows).toHaveLength(ids.length);
    expect(new Set(rows.map((r) => r.key)).size).toBe(ids.length);
    expect(calls.reduce((a, b) => a + b, 0)).toBe(ids.length);
    expect(await count(env.knex, 'dw_outbox')).toBe(ids.length);
  });

  it('keep delivery order in a batch mixing types: a run of the type goes to one call, the other messages keep their place', async () => {
    // Runs of 1-3 Items between Notes; one handler slot, so batches run one after the other.
    const plan: Message[] = [];
    for (let i = 0; i < 40; i++) {
      const type = i % 4 === 3 || i % 7 === 0 ? 'Note' : 'Item';
      plan.push(message(type, `ord-${i}`, { key: `ord-${i}` }));
    }
    await publishRaw(env.config.exchange, plan);
    const w = await start(10, 1);
    await waitUntil(async () => (await count(env.knex, 'dw_inbox')) >= plan.length, 'every message handled');
    await drained(w);

    // Row ids follow the order the handlers wrote in.
    const written = await env.knex('bh_effects').orderBy('id').select('key', 'txid');
    expect(written.map((r) => r.key)).toEqual(plan.map((_, i) => `ord-${i}`));
    expect(new Set(written.map((r) => r.txid)).size).toBeLessThan(plan.length);
    expect(Math.max(...calls)).toBeGreaterThan(1);
  });

  it('hostile values PostgreSQL refuses in the multi-row insert (NUL, lone surrogate) dead-letter only their message; the rest of the batch is handled once', async () => {
    const hostile = ['nul\0key', 'lone\ud800key'];
    const plan: Message[] = Array.from({ length: 30 }, (_, i) =>
      message('Item', `hv-${i}`, { key: `hv-${i}` }),
    );
    plan.splice(5, 0, message('Item', 'h-nul', { key: hostile[0]! }));
    plan.splice(17, 0, message('Item', 'h-surrogate', { key: hostile[1]! }));
    await publishRaw(env.config.exchange, plan);
    const w = await start(10);
    await waitUntil(
      async () =>
        (await count(env.knex, 'dw_inbox')) >= 30 && (await count(env.knex, 'dw_dead_letters')) >= 2,
      'every valid message handled and both hostile ones dead-lettered',
    );
    await drained(w);

    const rows = await effects();
    expect(rows).toHaveLength(30);
    expect(new Set(rows.map((r) => r.key)).size).toBe(30);
    const dead = await env.knex('dw_dead_letters').select('message_id', 'reason');
    expect(Object.fromEntries(dead.map((d) => [d.message_id, d.reason]))).toEqual({
      'h-nul': 'invalid-payload',
      'h-surrogate': 'invalid-payload',
    });
    expect(await count(env.knex, 'dw_outbox')).toBe(30);
  });

  it('beside a handler per message of the same type: each message gets both, in registration order, in one transaction', async () => {
    const n = 30;
    await publishRaw(
      env.config.exchange,
      Array.from({ length: n }, (_, i) => message('Mixed', `mix-${i}`, { key: `mix-${i}` })),
    );
    const w = await start(10);
    await waitUntil(async () => (await count(env.knex, 'dw_inbox')) >= n, 'every message handled');
    await drained(w);

    const one = await effects('one');
    const batch = await effects('batch');
    expect(one).toHaveLength(n);
    expect(batch).toHaveLength(n);
    const txOf = new Map(one.map((r) => [r.message_id, r.txid]));
    for (const r of batch) expect(r.txid, r.key).toBe(txOf.get(r.message_id));
    // Several messages shared a transaction, so the batch path ran.
    expect(new Set(batch.map((r) => r.txid)).size).toBeLessThan(n);
    expect(await count(env.knex, 'dw_dead_letters')).toBe(0);
  });
});
