import type { Knex } from 'knex';
import { SagaDefinitionChangedError } from '../errors.js';
import { diffLayouts, type SagaDefinition, type StageLayout } from './definition.js';

/** Plain database operations on dw_saga_definitions: each saga version's recorded stage layout. */

type Db = Knex | Knex.Transaction;

export interface SagaDefinitionRow {
  name: string;
  version: number;
  fingerprint: string;
  stages: StageLayout;
  first_seen: Date;
}

/** Records a saga version's layout unless one is recorded already (the first worker to run it wins). */
export async function insertSagaDefinition(
  db: Db,
  saga: { name: string; version: number; fingerprint: string; stages: StageLayout },
): Promise<void> {
  await db('dw_saga_definitions')
    .insert({ ...saga, stages: JSON.stringify(saga.stages) })
    .onConflict(['name', 'version'])
    .ignore();
}

/** Every recorded saga version, by name then version. */
export async function listSagaDefinitions(db: Db): Promise<SagaDefinitionRow[]> {
  return db('dw_saga_definitions').orderBy([
    { column: 'name', order: 'asc' },
    { column: 'version', order: 'asc' },
  ]);
}

/**
 * At worker start: records the layout of each saga version the app defines that the database does
 * not know yet, and refuses (SagaDefinitionChangedError) a version whose layout differs from the
 * recorded one, naming what changed.
 */
export async function registerSagaDefinitions(
  knex: Knex,
  sagas: Iterable<SagaDefinition<object>>,
): Promise<void> {
  const list = [...sagas];
  for (const saga of list) {
    await insertSagaDefinition(knex, {
      name: saga.name,
      version: saga.version,
      fingerprint: saga.fingerprint,
      stages: saga.layout,
    });
  }
  const recorded = new Map((await listSagaDefinitions(knex)).map((r) => [`${r.version}/${r.name}`, r]));
  for (const saga of list) {
    const row = recorded.get(`${saga.version}/${saga.name}`);
    if (!row || row.fingerprint === saga.fingerprint) continue;
    throw new SagaDefinitionChangedError(
      saga.name,
      saga.version,
      diffLayouts(row.stages, saga.layout),
      row.first_seen,
    );
  }
}
