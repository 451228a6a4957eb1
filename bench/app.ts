import { z } from 'zod';
import { defineApp, defineBatchHandler, defineHandler } from '../shared/app.js';
import type { Migration } from '../shared/db/migrate.js';
import { defineSaga } from '../shared/saga/definition.js';

/**
 * The app the benchmark's worker serves (DW_APP=dist/bench/app.js): the smallest realistic work per
 * message, so the figures show the runtime's overhead rather than an app's.
 */

/** BullMQ queue the pipeline handler's outbox row goes to; nothing consumes it. */
export const BENCH_EVENTS_QUEUE = 'bench_events';

export const BenchPipeline = z.object({ seq: z.number().int(), sentAt: z.number(), note: z.string() });

/** One business row and one outbox row, in the message's transaction (with its inbox row). */
export const benchPipeline = defineHandler('BenchPipeline', BenchPipeline, async (message, ctx) => {
  await ctx.trx('bench_items').insert({
    message_id: ctx.envelope.id,
    seq: message.seq,
    sent_at_ms: message.sentAt,
  });
  ctx.send(BENCH_EVENTS_QUEUE, 'BenchItemStored', { seq: message.seq, note: message.note });
});

/**
 * The same work through a batch handler: the business rows of a batch in one multi-row insert, as
 * the raw batched baseline writes them, so the two differ by the runtime alone.
 */
export const benchPipelineBatch = defineBatchHandler('BenchPipelineBatch', BenchPipeline, async (batch) => {
  await batch[0].ctx.trx('bench_items').insert(
    batch.map(({ message, ctx }) => ({
      message_id: ctx.envelope.id,
      seq: message.seq,
      sent_at_ms: message.sentAt,
    })),
  );
  for (const { message, ctx } of batch) {
    ctx.send(BENCH_EVENTS_QUEUE, 'BenchItemStored', { seq: message.seq, note: message.note });
  }
});

export interface BenchSagaState {
  seq: number;
  sentAt: number;
}

/** Three steps, each inserting one ledger row in its own transaction (like book-trip's steps). */
const ledger = (step: string) => async (ctx: { trx: import('knex').Knex.Transaction; sagaId: string }) => {
  await ctx.trx('bench_ledger').insert({ saga_id: ctx.sagaId, step });
};

export const benchSaga = defineSaga<BenchSagaState>('bench-saga')
  .step('one', ledger('one'))
  .step('two', ledger('two'))
  .step('three', ledger('three'));

export const BenchSaga = z.object({ seq: z.number().int(), sentAt: z.number() });

/** Starts one bench saga per message; the saga id is the message id. */
export const benchSagaHandler = defineHandler('BenchSaga', BenchSaga, async (message, ctx) => {
  await ctx.startSaga(benchSaga, message, { id: ctx.envelope.id });
});

export const benchMigrations: Migration[] = [
  {
    name: 'bench_001_tables',
    async up(knex) {
      await knex.schema.createTable('bench_items', (t) => {
        t.bigIncrements('id').primary();
        t.text('message_id').notNullable();
        t.integer('seq').notNullable();
        t.double('sent_at_ms').notNullable();
        // clock_timestamp, not now(): the time of this insert, not of the transaction's start.
        t.timestamp('committed_at', { useTz: true }).notNullable().defaultTo(knex.raw('clock_timestamp()'));
      });
      await knex.schema.createTable('bench_ledger', (t) => {
        t.bigIncrements('id').primary();
        t.text('saga_id').notNullable();
        t.text('step').notNullable();
        t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.raw('clock_timestamp()'));
      });
    },
  },
];

export const app = defineApp({
  name: 'bench',
  handlers: [benchPipeline, benchPipelineBatch, benchSagaHandler],
  sagas: [benchSaga],
  migrations: benchMigrations,
});

export default app;
