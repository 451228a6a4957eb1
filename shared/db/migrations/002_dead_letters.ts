import type { Knex } from 'knex';

export const name = '002_dead_letters';

export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('dw_dead_letters', (t) => {
    t.bigIncrements('id').primary();
    t.text('source').notNullable().checkIn(['amqp', 'saga'], 'dw_dead_letters_source');
    // Where a replay sends it: the AMQP work queue, or the BullMQ saga queue.
    t.text('queue').notNullable();
    t.text('message_id').notNullable();
    t.text('type');
    t.text('reason').notNullable();
    t.jsonb('error').notNullable();
    t.integer('attempts').notNullable().defaultTo(1);
    t.timestamp('first_failed_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.timestamp('last_failed_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    // Parsed JSON payload when the body was JSON; the raw body otherwise (invalid-json).
    t.jsonb('payload');
    t.binary('body');
    t.jsonb('headers').notNullable().defaultTo('{}');
    // AMQP properties (correlationId, timestamp, contentType, ...) needed to replay faithfully.
    t.jsonb('properties').notNullable().defaultTo('{}');
    t.text('saga_id');
    t.text('step');
    t.text('phase');
    // A redelivery after a crash between storing and acking updates the entry instead of adding one.
    t.unique(['queue', 'message_id'], { indexName: 'dw_dead_letters_queue_message' });
    t.index(['last_failed_at'], 'dw_dead_letters_last_failed_at');
    t.index(['type'], 'dw_dead_letters_type');
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTable('dw_dead_letters');
}
