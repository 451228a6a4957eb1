import type { Knex } from 'knex';

export const name = '001_inbox_outbox';

export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('dw_inbox', (t) => {
    t.text('consumer').notNullable();
    t.text('message_id').notNullable();
    t.timestamp('processed_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.primary(['consumer', 'message_id']);
    t.index(['processed_at'], 'dw_inbox_processed_at');
  });

  await knex.schema.createTable('dw_outbox', (t) => {
    t.bigIncrements('id').primary();
    t.text('message_id').notNullable().unique();
    t.text('destination_kind').notNullable().checkIn(['bullmq', 'amqp'], 'dw_outbox_destination_kind');
    // BullMQ queue name, or AMQP exchange name ('' is the default exchange).
    t.text('destination').notNullable();
    t.text('routing_key');
    t.text('type').notNullable();
    t.jsonb('payload').notNullable();
    // correlation id, causation id, traceparent, ...
    t.jsonb('headers').notNullable().defaultTo('{}');
    // BullMQ job options (delay, attempts, priority) or AMQP publish options.
    t.jsonb('options').notNullable().defaultTo('{}');
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.timestamp('available_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.integer('attempts').notNullable().defaultTo(0);
    t.text('last_error');
    t.timestamp('delivered_at', { useTz: true });
  });
  // Claiming scans pending rows in id order; the partial index stays small however many
  // delivered rows are kept, so the claim stays fast with millions of rows in the table.
  await knex.raw('create index dw_outbox_pending on dw_outbox (id) where delivered_at is null');
  await knex.raw(
    'create index dw_outbox_delivered on dw_outbox (delivered_at) where delivered_at is not null',
  );

  // One notification per inserting statement wakes idle relays at once (LISTEN dw_outbox).
  await knex.raw(`
    create function dw_outbox_notify() returns trigger language plpgsql as $$
    begin
      perform pg_notify('dw_outbox', '');
      return null;
    end $$`);
  await knex.raw(`
    create trigger dw_outbox_notify after insert on dw_outbox
    for each statement execute function dw_outbox_notify()`);

  // Counts deliveries of a message that started handling without finishing (the process died):
  // a message that keeps killing the worker is recognised and dead-lettered.
  await knex.schema.createTable('dw_delivery_counts', (t) => {
    t.text('consumer').notNullable();
    t.text('message_id').notNullable();
    t.integer('count').notNullable().defaultTo(0);
    t.timestamp('updated_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.primary(['consumer', 'message_id']);
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTable('dw_delivery_counts');
  await knex.raw('drop trigger if exists dw_outbox_notify on dw_outbox');
  await knex.raw('drop function if exists dw_outbox_notify()');
  await knex.schema.dropTable('dw_outbox');
  await knex.schema.dropTable('dw_inbox');
}
