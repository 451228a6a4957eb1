import type { Knex } from 'knex';

export const name = '003_sagas';

export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('dw_sagas', (t) => {
    t.text('id').primary();
    t.text('name').notNullable();
    t.text('status')
      .notNullable()
      .checkIn(['running', 'compensating', 'completed', 'compensated', 'failed'], 'dw_sagas_status');
    t.jsonb('state').notNullable().defaultTo('{}');
    // Optimistic concurrency: every change bumps it; a step that read an older version re-runs.
    t.integer('version').notNullable().defaultTo(0);
    t.text('correlation_id');
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.timestamp('updated_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.timestamp('deadline_at', { useTz: true });
    t.jsonb('last_error');
    // Bumped when the recovery sweep re-enqueues work, so the new jobs get fresh BullMQ ids.
    t.integer('generation').notNullable().defaultTo(0);
    t.index(['status', 'updated_at'], 'dw_sagas_status_updated_at');
  });

  await knex.schema.createTable('dw_saga_steps', (t) => {
    t.bigIncrements('id').primary();
    t.text('saga_id').notNullable().references('id').inTable('dw_sagas').onDelete('CASCADE');
    t.text('step').notNullable();
    t.integer('stage').notNullable();
    t.text('phase').notNullable().checkIn(['execute', 'compensate'], 'dw_saga_steps_phase');
    t.text('status').notNullable().checkIn(['running', 'completed', 'failed'], 'dw_saga_steps_status');
    t.integer('attempts').notNullable().defaultTo(0);
    t.timestamp('started_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.timestamp('finished_at', { useTz: true });
    t.jsonb('error');
    // One record per step and phase: a duplicated job finds the step completed and does nothing.
    t.unique(['saga_id', 'step', 'phase'], { indexName: 'dw_saga_steps_saga_step_phase' });
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTable('dw_saga_steps');
  await knex.schema.dropTable('dw_sagas');
}
