import type { Knex } from 'knex';

export const name = '005_saga_versions';

export async function up(knex: Knex): Promise<void> {
  // The saga definition version an instance started with (dw_sagas.version is the optimistic
  // concurrency counter, hence another name): it runs to the end on that version's stages.
  // Instances started before versions existed ran on the only definition there was: version 1.
  await knex.schema.alterTable('dw_sagas', (t) => {
    t.integer('definition_version').notNullable().defaultTo(1);
    // Hash of the version's stage layout when the instance started; null for older instances.
    t.text('definition_fingerprint');
    // Set when a worker that lacks the instance's version met it and left it alone.
    t.timestamp('unserved_at', { useTz: true });
    t.text('unserved_note');
  });
  // dw status counts in-flight instances per version; dw sagas list filters on it.
  await knex.raw(
    `create index dw_sagas_name_definition_version on dw_sagas (name, definition_version)
      where status in ('running', 'compensating')`,
  );

  // Each saga version any worker ran with: its stage layout, so that a changed layout under the
  // same version is refused at start instead of re-planning in-flight instances.
  await knex.schema.createTable('dw_saga_definitions', (t) => {
    t.text('name').notNullable();
    t.integer('version').notNullable();
    t.text('fingerprint').notNullable();
    t.jsonb('stages').notNullable();
    t.timestamp('first_seen', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.primary(['name', 'version']);
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTable('dw_saga_definitions');
  await knex.raw('drop index if exists dw_sagas_name_definition_version');
  await knex.schema.alterTable('dw_sagas', (t) => {
    t.dropColumn('unserved_note');
    t.dropColumn('unserved_at');
    t.dropColumn('definition_fingerprint');
    t.dropColumn('definition_version');
  });
}
