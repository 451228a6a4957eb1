import type { Knex } from 'knex';

export const name = '004_redis_delivery_seq';

export async function up(knex: Knex): Promise<void> {
  // The relay's Redis position of the batch that delivered the row (a counter Redis increments
  // after the batch's jobs): Redis holding a lower counter than a committed row means it lost them.
  await knex.schema.alterTable('dw_outbox', (t) => {
    t.bigInteger('redis_seq');
  });
  // The relay reads the highest position per batch and re-delivers by range after a loss.
  await knex.raw('create index dw_outbox_redis_seq on dw_outbox (redis_seq) where redis_seq is not null');

  // Each Redis data loss the relays found and repaired: the lost range of positions and the rows sent again.
  await knex.schema.createTable('dw_redis_losses', (t) => {
    t.bigIncrements('id').primary();
    t.bigInteger('seq_from').notNullable();
    t.bigInteger('seq_to').notNullable();
    t.integer('rows_redelivered').notNullable().defaultTo(0);
    t.timestamp('detected_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.unique(['seq_from', 'seq_to']);
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTable('dw_redis_losses');
  await knex.raw('drop index if exists dw_outbox_redis_seq');
  await knex.schema.alterTable('dw_outbox', (t) => {
    t.dropColumn('redis_seq');
  });
}
