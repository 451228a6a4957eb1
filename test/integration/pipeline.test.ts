import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { Relay } from '../../relay/relay.js';
import { defineApp, defineHandler } from '../../shared/app.js';
import type { Migration } from '../../shared/db/migrate.js';
import { NonRetryableError } from '../../shared/errors.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { closeAmqpConnections } from '../support/faults.js';
import { count, createTestEnv, randomName, type TestEnv } from '../support/services.js';

const tables: Migration = {
  name: 'pipeline_test_tables',
  async up(knex) {
    await knex.schema.createTable('notes', (t) => {
      t.bigIncrements('id');
      t.text('message_id').notNullable();
      t.text('text').notNullable();
      t.text('correlation_id');
      t.text('causation_id');
    });
    await knex.schema.createTable('hook_log', (t) => {
      t.bigIncrements('id');
      t.text('event').notNullable();
    });
  },
};

const Note = z.object({ text: z.string(), failAfterWrite: z.boolean().optional() });
const hookEvents: string[] = [];

const app = defineApp({
  name: randomName('app'),
  migrations: [tables],
  handlers: [
    defineHandler('AddNote', Note, async (msg, ctx) => {
      await ctx.trx('notes').insert({
        message_id: ctx.envelope.id,
        text: msg.text,
        correlation_id: ctx.envelope.correlationId,
        causation_id: ctx.envelope.causationId ?? null,
      });
      ctx.send('note_events', 'NoteAdded', { text: msg.text });
      ctx.onCommit(async () => {
        hookEvents.push(`commit:${msg.text}`);
        // Only the hook test reads back: other tests terminate this file's sessions under load.
        if (msg.text !== 'hooked') return;
        // Read from outside the transaction: a hook that ran before the commit would see no row.
        const [row] = await env.knex('notes').where({ message_id: ctx.envelope.id }).count({ n: '*' });
        hookEvents.push(`commit:${msg.text}:visible=${row?.n}`);
      });
      ctx.onRollback(() => hookEvents.push(`rollback:${msg.text}`));
      if (msg.failAfterWrite) throw new NonRetryableError('failing after the write, on purpose');
    }),
    // A second handler of the same type shares the transaction.
    defineHandler('AddNote', Note, async (msg, ctx) => {
      await ctx.trx('notes').insert({ message_id: ctx.envelope.id, text: `${msg.text}/second` });
    }),
    defineHandler(
      'Parent',
      z.object({ tag: z.string(), child: z.enum(['ok', 'fail-caught', 'fail-uncaught', 'nested']) }),
      async (msg, ctx) => {
        await ctx.trx('notes').insert({ message_id: ctx.envelope.id, text: `${msg.tag}:parent` });
        ctx.send('note_events', 'ParentDone', { tag: msg.tag });
        if (msg.child === 'fail-caught') {
          await ctx.dispatch('Child', { tag: msg.tag, fail: true }).catch(() => {});
        } else if (msg.child === 'fail-uncaught') {
          await ctx.dispatch('Child', { tag: msg.tag, fail: true });
        } else {
          await ctx.dispatch('Child', { tag: msg.tag, fail: false, nest: msg.child === 'nested' });
        }
        await ctx.trx('notes').insert({ message_id: ctx.envelope.id, text: `${msg.tag}:parent-after` });
      },
      { retry: { immediateRetries: 0, delayed: { count: 0 } } },
    ),
    defineHandler(
      'Child',
      z.object({ tag: z.string(), fail: z.boolean(), nest: z.boolean().optional() }),
      async (msg, ctx) => {
        await ctx.trx('notes').insert({
          message_id: ctx.envelope.id,
          text: `${msg.tag}:child`,
          causation_id: ctx.envelope.causationId ?? null,
        });
        ctx.send('note_events', 'ChildDone', { tag: msg.tag });
        ctx.onCommit(() => hookEvents.push(`commit:${msg.tag}:child`));
        ctx.onRollback(() => hookEvents.push(`rollback:${msg.tag}:child`));
        if (msg.nest) await ctx.dispatch('Grandchild', { tag: msg.tag });
        if (msg.fail) throw new Error('child fails');
      },
    ),
    defineHandler('Grandchild', z.object({ tag: z.string() }), async (msg, ctx) => {
      await ctx.trx('notes').insert({ message_id: ctx.envelope.id, text: `${msg.tag}:grandchild` });
    }),
  ],
});

let env: TestEnv;
let worker: Worker;

beforeAll(async () => {
  env = await createTestEnv(app.migrations);
  worker = await Worker.start({ app, config: env.config, concurrency: 4 });
});

afterAll(async () => {
  await worker?.stop(5000);
  await env?.teardown();
});

const notes = (text: string) => count(env.knex, 'notes', { text });

describe('the transactional pipeline', () => {
  it('handles a message from any AMQP client once, even when it is delivered twice', async () => {
    const id = randomUUID();
    const message = {
      routingKey: 'AddNote',
      body: { text: 'twice' },
      properties: {
        messageId: id,
        type: 'AddNote',
        correlationId: 'corr-1',
        headers: { 'x-causation-id': 'cause-1' },
      },
    };
    await publishRaw(env.config.exchange, [message]);
    await waitUntil(async () => (await notes('twice')) === 1, 'the first delivery');
    await publishRaw(env.config.exchange, [message]);
    // A later message on the same queue proves the duplicate was consumed before we count.
    await publishRaw(env.config.exchange, [
      {
        routingKey: 'AddNote',
        body: { text: 'marker' },
        properties: { messageId: randomUUID(), type: 'AddNote' },
      },
    ]);
    await waitUntil(async () => (await notes('marker')) === 1, 'the marker message');
    await waitUntil(
      async () => (await count(env.knex, 'dw_inbox', { message_id: id })) === 1,
      'the inbox row',
    );

    expect(await notes('twice')).toBe(1);
    expect(await notes('twice/second')).toBe(1);
    expect(await count(env.knex, 'dw_inbox', { message_id: id })).toBe(1);
    const outbox = await env
      .knex('dw_outbox')
      .where({ type: 'NoteAdded' })
      .whereRaw("payload->>'text' = 'twice'");
    expect(outbox).toHaveLength(1);
    expect(outbox[0].headers).toEqual({ correlationId: 'corr-1', causationId: id });
    const [row] = await env.knex('notes').where({ text: 'twice' });
    expect(row).toMatchObject({ message_id: id, correlation_id: 'corr-1', causation_id: 'cause-1' });
  });

  it('uses the routing key as the type and the message id as correlation id when properties are missing', async () => {
    await publishRaw(env.config.exchange, [
      { routingKey: 'AddNote', body: { text: 'bare' }, properties: { messageId: 'bare-1' } },
    ]);
    await waitUntil(async () => (await notes('bare')) === 1, 'the bare message');
    const [row] = await env.knex('notes').where({ text: 'bare' });
    expect(row).toMatchObject({ message_id: 'bare-1', correlation_id: 'bare-1' });
  });

  it('leaves no business row, outbox row or inbox row when a handler throws after writing', async () => {
    const id = randomUUID();
    await publishRaw(env.config.exchange, [
      {
        routingKey: 'AddNote',
        body: { text: 'atomic', failAfterWrite: true },
        properties: { messageId: id, type: 'AddNote' },
      },
    ]);
    await waitUntil(
      async () => (await count(env.knex, 'dw_dead_letters', { message_id: id })) === 1,
      'the dead letter',
    );
    expect(await notes('atomic')).toBe(0);
    expect(await notes('atomic/second')).toBe(0);
    expect(await count(env.knex, 'dw_inbox', { message_id: id })).toBe(0);
    expect(await env.knex('dw_outbox').whereRaw("payload->>'text' = 'atomic'")).toHaveLength(0);
    expect(hookEvents).toContain('rollback:atomic');
    expect(hookEvents).not.toContain('commit:atomic');
  });

  it('runs onCommit hooks only after the commit', async () => {
    await publishRaw(env.config.exchange, [
      {
        routingKey: 'AddNote',
        body: { text: 'hooked' },
        properties: { messageId: randomUUID(), type: 'AddNote' },
      },
    ]);
    await waitUntil(() => hookEvents.some((e) => e.startsWith('commit:hooked:visible=')), 'the commit hook');
    // Both handlers' rows were visible to another connection when the hook ran.
    expect(hookEvents).toContain('commit:hooked:visible=2');
    expect(await notes('hooked')).toBe(1);
    expect(hookEvents).not.toContain('rollback:hooked');
  });
});

describe('dispatch runs local handlers under a savepoint', () => {
  const publishParent = async (tag: string, child: string) => {
    const id = randomUUID();
    await publishRaw(env.config.exchange, [
      { routingKey: 'Parent', body: { tag, child }, properties: { messageId: id, type: 'Parent' } },
    ]);
    return id;
  };
  const outboxTypes = async (tag: string) =>
    (await env.knex('dw_outbox').whereRaw("payload->>'tag' = ?", [tag]).orderBy('id')).map((r) => r.type);

  it('commits the child with the parent, in one transaction, with the parent as causation', async () => {
    const id = await publishParent('ok', 'ok');
    await waitUntil(async () => (await notes('ok:parent-after')) === 1, 'the parent to finish');
    expect(await notes('ok:parent')).toBe(1);
    expect(await notes('ok:child')).toBe(1);
    const [child] = await env.knex('notes').where({ text: 'ok:child' });
    expect(child.causation_id).toBe(id);
    expect(child.message_id).not.toBe(id);
    expect(await outboxTypes('ok')).toEqual(['ParentDone', 'ChildDone']);
    await waitUntil(() => hookEvents.includes('commit:ok:child'), 'the child commit hook');
  });

  it('rolls a failing child back to its savepoint when the parent catches the error', async () => {
    await publishParent('caught', 'fail-caught');
    await waitUntil(async () => (await notes('caught:parent-after')) === 1, 'the parent to finish');
    expect(await notes('caught:parent')).toBe(1);
    expect(await notes('caught:child')).toBe(0);
    expect(await outboxTypes('caught')).toEqual(['ParentDone']);
    expect(hookEvents).toContain('rollback:caught:child');
    expect(hookEvents).not.toContain('commit:caught:child');
  });

  it('rolls everything back when the child error propagates', async () => {
    const id = await publishParent('uncaught', 'fail-uncaught');
    await waitUntil(
      async () => (await count(env.knex, 'dw_dead_letters', { message_id: id })) === 1,
      'the dead letter',
    );
    expect(await notes('uncaught:parent')).toBe(0);
    expect(await notes('uncaught:child')).toBe(0);
    expect(await outboxTypes('uncaught')).toEqual([]);
    expect(await count(env.knex, 'dw_inbox', { message_id: id })).toBe(0);
  });

  it('nests dispatches as savepoints inside savepoints', async () => {
    await publishParent('nested', 'nested');
    await waitUntil(async () => (await notes('nested:parent-after')) === 1, 'the parent to finish');
    expect(await notes('nested:child')).toBe(1);
    expect(await notes('nested:grandchild')).toBe(1);
  });
});

describe('recovery', () => {
  it('reconnects after the broker drops its connection, losing nothing and applying nothing twice', async () => {
    const before = 20;
    await publishRaw(
      env.config.exchange,
      Array.from({ length: before }, (_, i) => ({
        routingKey: 'AddNote',
        body: { text: `before-${i}` },
        properties: { messageId: `reconnect-before-${i}`, type: 'AddNote' },
      })),
    );
    expect(await closeAmqpConnections(`dw-worker ${app.name}`)).toBeGreaterThan(0);
    const after = 20;
    await publishRaw(
      env.config.exchange,
      Array.from({ length: after }, (_, i) => ({
        routingKey: 'AddNote',
        body: { text: `after-${i}` },
        properties: { messageId: `reconnect-after-${i}`, type: 'AddNote' },
      })),
    );
    await waitUntil(
      async () =>
        (
          await env
            .knex('dw_inbox')
            .where('message_id', 'like', 'reconnect-%')
            .count<{ c: number }[]>('* as c')
        )[0]?.c ===
        before + after,
      'every message to be handled after the reconnection',
    );
    const rows = await env
      .knex('notes')
      .where('message_id', 'like', 'reconnect-%')
      .select('message_id')
      .count<{ message_id: string; count: number }[]>('* as count')
      .groupBy('message_id');
    expect(rows).toHaveLength(before + after);
    // Two rows per message (two handlers), never more.
    expect(rows.every((r) => Number(r.count) === 2)).toBe(true);
    expect((await worker.health()).rabbitmq).toBe(true);
  });
});

describe('database outage', () => {
  it('carries on after its Postgres sessions are terminated mid-load, nothing lost, nothing twice', async () => {
    const total = 60;
    const relay = await Relay.start({ config: env.config, pollIntervalMs: 200 });
    try {
      const publishing = publishRaw(
        env.config.exchange,
        Array.from({ length: total }, (_, i) => ({
          routingKey: 'AddNote',
          body: { text: `outage-${i}` },
          properties: { messageId: `outage-${i}`, type: 'AddNote' },
        })),
      );
      await waitUntil(
        async () =>
          (await env.knex('notes').where('text', 'like', 'outage-%').count<{ c: number }[]>('* as c'))[0]?.c,
        'the first messages to be handled',
      );
      // Everything of this database but our own test session: the worker's pool and the relay's sessions.
      await env.knex.raw(
        'select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()',
      );
      await publishing;
      await waitUntil(
        async () =>
          (
            await env
              .knex('dw_inbox')
              .where('message_id', 'like', 'outage-%')
              .count<{ c: number }[]>('* as c')
          )[0]?.c === total,
        'every message to be handled after the outage',
      );
      await waitUntil(
        async () =>
          (await env.knex('dw_outbox').whereNull('delivered_at').count<{ c: number }[]>('* as c'))[0]?.c ===
          0,
        'the relay to drain the outbox after the outage',
      );
    } finally {
      await relay.stop(5000);
    }
    const perMessage = await env
      .knex('notes')
      .where('message_id', 'like', 'outage-%')
      .select('message_id')
      .count<{ message_id: string; count: number }[]>('* as count')
      .groupBy('message_id');
    expect(perMessage).toHaveLength(total);
    expect(perMessage.every((r) => Number(r.count) === 2)).toBe(true);
    expect(await count(env.knex, 'dw_dead_letters')).toBe(2);
    expect((await worker.health()).postgres).toBe(true);
  });
});

describe('the relay', () => {
  it('delivers what the pipeline wrote into BullMQ, one job per outbox row', async () => {
    const relay = await Relay.start({ config: env.config, pollIntervalMs: 200 });
    try {
      await waitUntil(
        async () =>
          (await env.knex('dw_outbox').whereNull('delivered_at').count<{ c: number }[]>('* as c'))[0]?.c ===
          0,
        'the outbox to drain',
      );
    } finally {
      await relay.stop(5000);
    }
    const delivered = await count(env.knex, 'dw_outbox');
    expect(delivered).toBeGreaterThan(0);
  });
});
