import type { Migration } from '../../index.js';

/** Tables of the example app; `dw migrate` applies them after durable-worker's own. */
export const exampleMigrations: Migration[] = [
  {
    name: 'example_001_tables',
    async up(knex) {
      await knex.schema.createTable('meeting_participants', (t) => {
        t.bigIncrements('id').primary();
        t.text('user_id').notNullable();
        t.text('meeting_id').notNullable();
        t.timestamp('joined_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
        t.index(['meeting_id']);
      });
      await knex.schema.createTable('trip_ledger', (t) => {
        t.bigIncrements('id').primary();
        t.text('trip_id').notNullable();
        t.text('step').notNullable();
        t.text('action').notNullable().checkIn(['execute', 'compensate']);
        t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
        t.index(['trip_id']);
      });
      await knex.schema.createTable('invoices_sent', (t) => {
        t.bigIncrements('id').primary();
        t.text('invoice_id').notNullable();
        t.timestamp('sent_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
        t.index(['invoice_id']);
      });
      // Any row here means the (pretend) invoicing service is down.
      await knex.schema.createTable('invoice_outage', (t) => {
        t.bigIncrements('id').primary();
        t.timestamp('since', { useTz: true }).notNullable().defaultTo(knex.fn.now());
      });
    },
    async down(knex) {
      for (const table of ['invoice_outage', 'invoices_sent', 'trip_ledger', 'meeting_participants']) {
        await knex.schema.dropTableIfExists(table);
      }
    },
  },
];
