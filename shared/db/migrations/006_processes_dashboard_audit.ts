import type { Knex } from 'knex';

export const name = '006_processes_dashboard_audit';

export async function up(knex: Knex): Promise<void> {
  // One row per running worker or relay, refreshed every few seconds: the dashboard shows the live
  // ones and, for a while, those that stopped answering (a crash leaves its row behind).
  await knex.schema.createTable('dw_processes', (t) => {
    t.text('id').primary();
    t.text('kind').notNullable();
    t.text('host').notNullable();
    t.integer('pid').notNullable();
    t.text('version').notNullable();
    t.timestamp('started_at', { useTz: true }).notNullable();
    t.timestamp('last_seen_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
  });
  // Every replay and purge an operator did from the dashboard: who, when, what, and the preview it followed.
  await knex.schema.createTable('dw_dashboard_audit', (t) => {
    t.bigIncrements('id').primary();
    t.timestamp('at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.text('actor').notNullable();
    t.text('action').notNullable();
    t.jsonb('selection').notNullable();
    t.jsonb('entries').notNullable().defaultTo('[]');
    t.jsonb('preview');
    t.jsonb('result').notNullable();
  });
  // The replay history of one message: entries @> [{"messageId": …}].
  await knex.raw(
    'create index dw_dashboard_audit_entries on dw_dashboard_audit using gin (entries jsonb_path_ops)',
  );
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTable('dw_dashboard_audit');
  await knex.schema.dropTable('dw_processes');
}
