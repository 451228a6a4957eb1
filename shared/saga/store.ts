import type { Knex } from 'knex';
import type { ErrorInfo } from '../errors.js';
import { type OutboxMessage, outboxColumns, outboxValues } from '../outbox.js';
import { storableJson } from '../storable.js';
import type { SagaPhase } from './jobs.js';

/** Plain database operations on dw_sagas and dw_saga_steps, one statement each. */

export type SagaStatus = 'running' | 'compensating' | 'completed' | 'compensated' | 'failed';
export const sagaStatuses: readonly SagaStatus[] = [
  'running',
  'compensating',
  'completed',
  'compensated',
  'failed',
];
export type StepStatus = 'running' | 'completed' | 'failed';

type Db = Knex | Knex.Transaction;

export interface SagaRow {
  id: string;
  name: string;
  status: SagaStatus;
  state: Record<string, unknown>;
  version: number;
  correlation_id: string | null;
  created_at: Date;
  updated_at: Date;
  deadline_at: Date | null;
  last_error: ErrorInfo | null;
  generation: number;
  /** The saga definition version the instance started with (not `version`, the concurrency counter). */
  definition_version: number;
  definition_fingerprint: string | null;
  /** When a worker lacking the instance's definition version last left it alone, and what it said. */
  unserved_at: Date | null;
  unserved_note: string | null;
}

export interface StepRow {
  id: number;
  saga_id: string;
  step: string;
  stage: number;
  phase: SagaPhase;
  status: StepStatus;
  attempts: number;
  started_at: Date;
  finished_at: Date | null;
  error: ErrorInfo | null;
}

/** Inserts a new running saga; false when the id exists (starting it again is a no-op). */
export async function insertSaga(
  trx: Db,
  saga: {
    id: string;
    name: string;
    state: unknown;
    correlationId: string;
    deadlineMs?: number;
    /** @defaultValue 1 */
    definitionVersion?: number;
    fingerprint?: string;
  },
): Promise<boolean> {
  const rows = await trx('dw_sagas')
    .insert({
      id: saga.id,
      name: saga.name,
      definition_version: saga.definitionVersion ?? 1,
      definition_fingerprint: saga.fingerprint ?? null,
      status: 'running',
      state: JSON.stringify(saga.state ?? {}),
      correlation_id: saga.correlationId,
      // make_interval keeps the deadline a bound parameter.
      deadline_at:
        saga.deadlineMs === undefined
          ? null
          : trx.raw('now() + make_interval(secs => ?)', [saga.deadlineMs / 1000]),
    })
    .onConflict('id')
    .ignore()
    .returning('id');
  return rows.length > 0;
}

export interface SagaForStep {
  id: string;
  name: string;
  status: SagaStatus;
  state: Record<string, unknown>;
  version: number;
  generation: number;
  correlation_id: string | null;
  step_status: StepStatus | null;
  step_attempts: number | null;
  /** The session running the transaction: a step past its timeout has its query cancelled. */
  backend_pid: number;
}

/**
 * Serialises the copies of one step (or compensation) job until the transaction ends: a second
 * copy (delivered twice, held by the eager runner and by BullMQ) waits here, then reads the record
 * the first one left and sees it is stale instead of running the step's code beside it.
 */
export async function lockStep(trx: Knex.Transaction, sagaId: string, step: string, phase: SagaPhase) {
  // A 64-bit hash of the step's identity as the advisory lock key.
  await trx.raw('select pg_advisory_xact_lock(hashtextextended(?, 0))', [
    `dw-saga/${sagaId}/${phase}/${step}`,
  ]);
}

/** The saga with the record of one of its steps (absent: never ran), in one round trip. */
export async function readSagaForStep(
  trx: Db,
  sagaId: string,
  step: string,
  phase: SagaPhase,
): Promise<SagaForStep | undefined> {
  // A left join: the step row may not exist yet.
  const { rows } = await trx.raw<{ rows: SagaForStep[] }>(
    `select s.id, s.name, s.status, s.state, s.version, s.generation, s.correlation_id,
            st.status as step_status, st.attempts as step_attempts, pg_backend_pid() as backend_pid
       from dw_sagas s
       left join dw_saga_steps st on st.saga_id = s.id and st.step = ? and st.phase = ?
      where s.id = ?`,
    [step, phase, sagaId],
  );
  return rows[0];
}

/** A step (or compensation) of a saga, as its lock and record name it. */
export interface StepKey {
  sagaId: string;
  step: string;
  phase: SagaPhase;
}

function stepLockKey(key: StepKey): string {
  return `dw-saga/${key.sagaId}/${key.phase}/${key.step}`;
}

/**
 * lockStep for the steps of a batch, in one statement. Taken in the order of the lock keys
 * (the 64-bit hashes), so that two batches sharing steps wait for each other instead of deadlocking.
 */
export async function lockSteps(trx: Knex.Transaction, keys: readonly StepKey[]): Promise<void> {
  // The ordered subquery fixes the order in which the outer select takes the locks.
  await trx.raw(
    `select pg_advisory_xact_lock(h) from (
       select distinct hashtextextended(k, 0) as h from unnest(?::text[]) k order by h) ordered`,
    [keys.map(stepLockKey)],
  );
}

/** readSagaForStep for the steps of a batch, in one statement; in the order of `keys`, undefined for a missing saga. */
export async function readSagasForSteps(
  trx: Db,
  keys: readonly StepKey[],
): Promise<Array<SagaForStep | undefined>> {
  // The keys as parallel arrays unnested into rows; ord gives each answer its place.
  const { rows } = await trx.raw<{ rows: Array<SagaForStep & { ord: string }> }>(
    `select k.ord, s.id, s.name, s.status, s.state, s.version, s.generation, s.correlation_id,
            st.status as step_status, st.attempts as step_attempts, pg_backend_pid() as backend_pid
       from unnest(?::text[], ?::text[], ?::text[]) with ordinality as k(saga_id, step, phase, ord)
       join dw_sagas s on s.id = k.saga_id
       left join dw_saga_steps st on st.saga_id = s.id and st.step = k.step and st.phase = k.phase`,
    [keys.map((k) => k.sagaId), keys.map((k) => k.step), keys.map((k) => k.phase)],
  );
  const found: Array<SagaForStep | undefined> = keys.map(() => undefined);
  for (const { ord, ...row } of rows) found[Number(ord) - 1] = row;
  return found;
}

/** The definition version a saga started with; undefined when there is no such saga. */
export async function readDefinitionVersion(db: Db, sagaId: string): Promise<number | undefined> {
  const row = await db('dw_sagas').where({ id: sagaId }).first('definition_version');
  return (row as { definition_version: number } | undefined)?.definition_version;
}

/**
 * Notes on the saga that a worker lacking its definition version left it alone. Moves neither
 * `version` nor `updated_at`: the sweep and the steps of a worker that has the version are not disturbed.
 */
export async function markUnserved(db: Db, sagaId: string, note: string): Promise<void> {
  await db('dw_sagas').where({ id: sagaId }).update({ unserved_at: db.fn.now(), unserved_note: note });
}

export async function getSaga(db: Db, sagaId: string): Promise<SagaRow | undefined> {
  return db('dw_sagas').where({ id: sagaId }).first();
}

/**
 * Optimistic update after a step: new state, version + 1, and optionally a final status; matches
 * nothing when the version moved (another step of the saga committed first): the caller re-runs.
 * Not run here: recordStepCompleted runs it with the step record, in one statement. The update
 * takes the row lock, so whatever the transaction reads afterwards is settled.
 */
export function advanceSagaVersion(
  trx: Db,
  sagaId: string,
  expectedVersion: number,
  changes: { state?: unknown; status?: SagaStatus },
): Knex.QueryBuilder {
  return trx('dw_sagas')
    .where({ id: sagaId, version: expectedVersion })
    .update({
      ...(changes.state !== undefined ? { state: JSON.stringify(changes.state) } : {}),
      ...(changes.status ? { status: changes.status } : {}),
      version: trx.raw('version + 1'),
      updated_at: trx.fn.now(),
    })
    .returning('id');
}

/**
 * A parallel group member's update: merges its result into the state (top-level keys, as the
 * runner merges) and moves the version, without an expected version: siblings committing one
 * after the other (serialized by the row lock this takes) need not re-run their code. Matches
 * nothing when the saga left `status` meanwhile (compensation began): the caller re-runs and
 * finds that. Not run here: recordStepCompleted runs it with the step record.
 */
export function mergeSagaState(
  trx: Db,
  sagaId: string,
  status: SagaStatus,
  result: object | undefined,
): Knex.QueryBuilder {
  return trx('dw_sagas')
    .where({ id: sagaId, status })
    .update({
      // jsonb || merges top-level keys; the bound value is the step's result as JSON.
      ...(result ? { state: trx.raw('state || ?::jsonb', [JSON.stringify(result)]) } : {}),
      version: trx.raw('version + 1'),
      updated_at: trx.fn.now(),
    })
    .returning('id');
}

/** Sets a final or next status, only from `from`; returns the saga row when it changed. */
export async function transitionSaga(
  trx: Db,
  sagaId: string,
  from: SagaStatus,
  to: SagaStatus,
  lastError?: ErrorInfo,
): Promise<SagaRow | undefined> {
  const [row] = await trx('dw_sagas')
    .where({ id: sagaId, status: from })
    .update({
      status: to,
      // The error text comes from user code (any characters): it must not make the transition fail.
      ...(lastError ? { last_error: storableJson(lastError) ?? null } : {}),
      version: trx.raw('version + 1'),
      updated_at: trx.fn.now(),
    })
    .returning('*');
  return row as SagaRow | undefined;
}

/**
 * Records a step (or compensation) that committed, with the saga's update (advanceSagaVersion or
 * mergeSagaState) in the same statement. False, recording nothing, when that update matched no
 * row (the saga moved) or the record says completed already (a duplicate ran concurrently and
 * won): the caller rolls its own run back.
 */
export async function recordStepCompleted(
  trx: Db,
  step: { sagaId: string; step: string; stage: number; phase: SagaPhase; attempts: number },
  sagaUpdate?: Knex.QueryBuilder,
): Promise<boolean> {
  // Upsert: the first attempt has no row yet; failed attempts left one. With a saga update, the
  // row is written only if that update (run as a CTE: one round trip) returned the saga.
  const { rows } = await trx.raw<{ rows: unknown[] }>(
    `${sagaUpdate ? 'with saga as (?) ' : ''}insert into dw_saga_steps
       (saga_id, step, stage, phase, status, attempts, finished_at, error)
     select ?, ?, ?, ?, 'completed', ?::int, now(), null${sagaUpdate ? ' from saga' : ''}
     on conflict (saga_id, step, phase) do update
        set status = 'completed', attempts = excluded.attempts, finished_at = now(), error = null
      where dw_saga_steps.status <> 'completed'
     returning id`,
    [...(sagaUpdate ? [sagaUpdate] : []), step.sagaId, step.step, step.stage, step.phase, step.attempts],
  );
  return rows.length > 0;
}

/**
 * A completed step alone in its stage, in one statement: the saga's optimistic update (state
 * merged by the caller, version + 1, `completed` for the last step), the step record, the next
 * messages (the step's own and the next stage's jobs), and the outbox row the step ran from when it
 * was leased to this process (marked delivered, so that the relay leaves it). Nothing is written
 * when the version moved or the record says completed already: `recorded` false, the caller rolls back.
 * At most maxOutboxValues messages. `inserted`: the message ids written (not those present already).
 */
export async function completeStep(
  trx: Db,
  step: StepKey & { stage: number; attempts: number; expectedVersion: number; leasedMessageId?: string },
  saga: { state?: unknown; status?: 'completed' },
  messages: readonly OutboxMessage[],
): Promise<{ recorded: boolean; inserted: string[] }> {
  const values = messages.length > 0 ? outboxValues(messages) : undefined;
  // Data-modifying CTEs: each later one runs only when the one before returned a row.
  const { rows } = await trx.raw<{ rows: [{ recorded: boolean; inserted: string[] }] }>(
    `with saga as (
       update dw_sagas set state = coalesce(?::jsonb, state), status = coalesce(?::text, status),
              version = version + 1, updated_at = now()
        where id = ? and version = ? returning id),
     rec as (
       insert into dw_saga_steps (saga_id, step, stage, phase, status, attempts, finished_at, error)
       select ?, ?, ?, ?, 'completed', ?::int, now(), null from saga
       on conflict (saga_id, step, phase) do update
          set status = 'completed', attempts = excluded.attempts, finished_at = now(), error = null
        where dw_saga_steps.status <> 'completed'
       returning id),
     sent as (${
       values
         ? `insert into dw_outbox (${outboxColumns})
       select * from (values ${values.sql}) v where exists (select 1 from rec)
       on conflict (message_id) do nothing returning message_id`
         : 'select null::text as message_id where false'
     }),
     leased as (
       update dw_outbox set delivered_at = now()
        where message_id = ? and delivered_at is null and exists (select 1 from rec) returning id)
     select exists (select 1 from rec) as recorded,
            array(select message_id from sent) as inserted`,
    [
      saga.state === undefined ? null : JSON.stringify(saga.state),
      saga.status ?? null,
      step.sagaId,
      step.expectedVersion,
      step.sagaId,
      step.step,
      step.stage,
      step.phase,
      step.attempts,
      ...(values?.bindings ?? []),
      // No leased row: an id no row has.
      step.leasedMessageId ?? '',
    ],
  );
  return { recorded: rows[0].recorded, inserted: rows[0].inserted };
}

/** One completed step of completeSteps: what completeStep takes for it. */
export interface CompletedStep {
  step: StepKey & { stage: number; attempts: number; expectedVersion: number; leasedMessageId?: string };
  saga: { state?: unknown; status?: 'completed' };
  messages: readonly OutboxMessage[];
}

/**
 * completeStep for the steps of a batch (one per saga, each alone in its stage), in one statement:
 * the sagas' optimistic updates, the step records, every next message and the leased rows marked
 * delivered. `recorded`: how many steps it recorded; fewer than given means some saga moved (or a
 * duplicate completed its step), and the caller must roll the whole transaction back, since every
 * step's effects are in it. At most maxOutboxValues messages in all. `inserted`: the message ids
 * written (not those present already).
 */
export async function completeSteps(
  trx: Db,
  steps: readonly CompletedStep[],
): Promise<{ recorded: number; inserted: string[] }> {
  const messages = steps.flatMap((s) => s.messages);
  const values = messages.length > 0 ? outboxValues(messages) : undefined;
  const leased = steps.flatMap((s) => (s.step.leasedMessageId ? [s.step.leasedMessageId] : []));
  // The steps as parallel arrays unnested into rows (the state as text: a null stays null); the
  // saga ids are distinct (one step per saga in a batch), so each update matches one input row.
  const { rows } = await trx.raw<{ rows: [{ recorded: number; inserted: string[] }] }>(
    `with input as (
       select * from unnest(?::text[], ?::text[], ?::int[], ?::text[], ?::int[], ?::int[], ?::text[], ?::text[])
         as k(saga_id, step, stage, phase, attempts, expected_version, state, status)),
     saga as (
       update dw_sagas s set state = coalesce(k.state::jsonb, s.state), status = coalesce(k.status, s.status),
              version = s.version + 1, updated_at = now()
         from input k
        where s.id = k.saga_id and s.version = k.expected_version returning s.id),
     rec as (
       insert into dw_saga_steps (saga_id, step, stage, phase, status, attempts, finished_at, error)
       select k.saga_id, k.step, k.stage, k.phase, 'completed', k.attempts, now(), null
         from input k join saga on saga.id = k.saga_id
       on conflict (saga_id, step, phase) do update
          set status = 'completed', attempts = excluded.attempts, finished_at = now(), error = null
        where dw_saga_steps.status <> 'completed'
       returning id),
     sent as (${
       values
         ? `insert into dw_outbox (${outboxColumns}) values ${values.sql}
       on conflict (message_id) do nothing returning message_id`
         : 'select null::text as message_id where false'
     }),
     marked as (
       update dw_outbox set delivered_at = now()
        where message_id = any(?::text[]) and delivered_at is null returning id)
     select (select count(*) from rec)::int as recorded, array(select message_id from sent) as inserted`,
    [
      steps.map((s) => s.step.sagaId),
      steps.map((s) => s.step.step),
      steps.map((s) => s.step.stage),
      steps.map((s) => s.step.phase),
      steps.map((s) => s.step.attempts),
      steps.map((s) => s.step.expectedVersion),
      steps.map((s) => (s.saga.state === undefined ? null : JSON.stringify(s.saga.state))) as Knex.Value,
      steps.map((s) => s.saga.status ?? null) as Knex.Value,
      ...(values?.bindings ?? []),
      leased,
    ],
  );
  return { recorded: rows[0].recorded, inserted: rows[0].inserted };
}

/**
 * Records a failed attempt (`final`: failed for good). Returns false, changing nothing, when the
 * record moved past it: completed (a duplicate job succeeded meanwhile), failed for good, or
 * holding this attempt or a later one (another chain of jobs recorded it first). The caller then
 * must not act on the failure (schedule a retry, dead-letter, compensate).
 */
export async function recordStepFailure(
  trx: Db,
  step: {
    sagaId: string;
    step: string;
    stage: number;
    phase: SagaPhase;
    attempts: number;
    error: ErrorInfo;
    final: boolean;
  },
): Promise<boolean> {
  const status: StepStatus = step.final ? 'failed' : 'running';
  // Upsert: the failed attempt's own transaction rolled back, so there may be no row yet.
  const { rows } = await trx.raw<{ rows: unknown[] }>(
    `insert into dw_saga_steps (saga_id, step, stage, phase, status, attempts, finished_at, error)
     values (?, ?, ?, ?, ?, ?, case when ? then now() end, ?)
     on conflict (saga_id, step, phase) do update
        set status = excluded.status, attempts = excluded.attempts,
            finished_at = excluded.finished_at, error = excluded.error
      where dw_saga_steps.status = 'running' and dw_saga_steps.attempts < excluded.attempts
     returning id`,
    [
      step.sagaId,
      step.step,
      step.stage,
      step.phase,
      status,
      step.attempts,
      step.final,
      // The error text comes from user code: an unstorable character must not lose the failure.
      storableJson(step.error) ?? null,
    ],
  );
  return rows.length > 0;
}

/**
 * Marks the saga as moving (version + 1, updated_at) when a retry is scheduled, so that the sweep,
 * which re-enqueues only a saga whose version it read, does not start a second chain beside the
 * retry job (and a long backoff does not look stale). Takes the row lock; returns the row when
 * the saga is still in `status`.
 */
export async function touchSaga(
  trx: Db,
  sagaId: string,
  status: SagaStatus,
): Promise<Pick<SagaRow, 'id' | 'generation' | 'correlation_id'> | undefined> {
  const [row] = await trx('dw_sagas')
    .where({ id: sagaId, status })
    .update({ version: trx.raw('version + 1'), updated_at: trx.fn.now() })
    .returning(['id', 'generation', 'correlation_id']);
  return row as Pick<SagaRow, 'id' | 'generation' | 'correlation_id'> | undefined;
}

/** Every step record of a saga, in the order they happened. */
export async function listStepRows(db: Db, sagaId: string): Promise<StepRow[]> {
  return db('dw_saga_steps')
    .where({ saga_id: sagaId })
    .orderBy([
      { column: 'started_at', order: 'asc' },
      { column: 'id', order: 'asc' },
    ]);
}

/**
 * Running or compensating sagas untouched for `staleAfterMs`, or past their deadline, oldest first;
 * with `served`, only instances of those saga name and definition version pairs.
 */
export async function findStalledSagas(
  db: Db,
  staleAfterMs: number,
  limit: number,
  served?: ReadonlyArray<readonly [string, number]>,
): Promise<SagaRow[]> {
  const query = db('dw_sagas');
  if (served) {
    // The pairs as two parallel arrays, unnested into rows: any number of them in two bindings.
    query.whereRaw('(name, definition_version) in (select * from unnest(?::text[], ?::int[]))', [
      served.map(([name]) => name),
      served.map(([, version]) => version),
    ]);
  }
  return query
    .whereIn('status', ['running', 'compensating'])
    .andWhere((q) =>
      q
        // make_interval keeps the age a bound parameter.
        .where('updated_at', '<', db.raw('now() - make_interval(secs => ?)', [staleAfterMs / 1000]))
        .orWhere((d) => d.where('status', 'running').andWhere('deadline_at', '<', db.fn.now())),
    )
    .orderBy('updated_at')
    .limit(limit);
}

/**
 * Bumps the generation (new job ids for re-enqueued work) if nobody moved the saga since it was
 * read (same version: steps, retries and transitions all bump it). Bumps the version too, so that
 * a step that read the old generation conflicts and runs again under the new one instead of
 * committing with it.
 */
export async function bumpGeneration(trx: Db, saga: Pick<SagaRow, 'id' | 'version'>): Promise<number | null> {
  const [row] = await trx('dw_sagas')
    .where({ id: saga.id, version: saga.version })
    .update({
      generation: trx.raw('generation + 1'),
      version: trx.raw('version + 1'),
      updated_at: trx.fn.now(),
    })
    .returning('generation');
  return row ? (row as { generation: number }).generation : null;
}

/** True when the outbox still holds an undelivered saga job of this saga. */
export async function hasPendingSagaJobs(db: Db, queue: string, sagaId: string): Promise<boolean> {
  // Scans only pending rows (the partial index dw_outbox_pending keeps that set small).
  const { rows } = await db.raw<{ rows: unknown[] }>(
    `select 1 from dw_outbox
      where delivered_at is null and destination_kind = 'bullmq' and destination = ?
        and payload->>'sagaId' = ?
      limit 1`,
    [queue, sagaId],
  );
  return rows.length > 0;
}

/** Reopens a failed saga for another compensation try; returns the row when it was failed. */
export async function reopenFailedSaga(trx: Db, sagaId: string): Promise<SagaRow | undefined> {
  const [row] = await trx('dw_sagas')
    .where({ id: sagaId, status: 'failed' })
    .update({
      status: 'compensating',
      generation: trx.raw('generation + 1'),
      version: trx.raw('version + 1'),
      updated_at: trx.fn.now(),
    })
    .returning('*');
  return row as SagaRow | undefined;
}

/**
 * Clears the saga's compensations that failed for good (two siblings of a group may both have
 * failed), so that each gets its attempts again; returns their step names.
 */
export async function resetFailedCompensations(trx: Db, sagaId: string): Promise<string[]> {
  const rows = await trx('dw_saga_steps')
    .where({ saga_id: sagaId, phase: 'compensate', status: 'failed' })
    .update({ status: 'running', attempts: 0, finished_at: null, error: null })
    .returning('step');
  return rows.map((r: { step: string }) => r.step);
}

export async function listSagas(
  db: Db,
  filter: { status?: SagaStatus; name?: string; version?: number; limit: number },
): Promise<SagaRow[]> {
  const query = db('dw_sagas').orderBy([
    { column: 'created_at', order: 'desc' },
    { column: 'id', order: 'asc' },
  ]);
  if (filter.status) query.where({ status: filter.status });
  if (filter.name) query.where({ name: filter.name });
  if (filter.version !== undefined) query.where({ definition_version: filter.version });
  return query.limit(filter.limit);
}

export interface SagaSearch {
  name?: string;
  status?: SagaStatus;
  correlationId?: string;
  /** Started at least / at most this long ago. */
  minAgeMs?: number;
  maxAgeMs?: number;
  /** Only sagas running or compensating that nothing touched for `stuckAfterMs`. */
  stuckOnly?: boolean;
}

/** One page of sagas, newest first, each with whether it looks stuck, and the total matching. */
export async function searchSagas(
  db: Db,
  search: SagaSearch,
  page: { limit: number; offset: number; stuckAfterMs: number },
): Promise<{ rows: Array<SagaRow & { stuck: boolean }>; total: number }> {
  const where: string[] = [];
  const bindings: Knex.RawBinding[] = [page.stuckAfterMs / 1000];
  const add = (clause: string, value: Knex.RawBinding) => {
    where.push(clause);
    bindings.push(value);
  };
  if (search.name !== undefined) add('name = ?', search.name);
  if (search.status !== undefined) add('status = ?', search.status);
  if (search.correlationId !== undefined) add('correlation_id = ?', search.correlationId);
  if (search.minAgeMs !== undefined)
    add('created_at <= now() - make_interval(secs => ?)', search.minAgeMs / 1000);
  if (search.maxAgeMs !== undefined)
    add('created_at >= now() - make_interval(secs => ?)', search.maxAgeMs / 1000);
  // Stuck: still in flight and untouched for longer than the sweep would wait.
  const stuck = `status in ('running', 'compensating') and updated_at < now() - make_interval(secs => ?)`;
  if (search.stuckOnly) {
    where.push(`(${stuck})`);
    bindings.push(page.stuckAfterMs / 1000);
  }
  const { rows } = await db.raw<{ rows: Array<SagaRow & { stuck: boolean; total: number }> }>(
    `select *, (${stuck}) as stuck, count(*) over ()::int as total from dw_sagas
      ${where.length ? `where ${where.join(' and ')}` : ''}
      order by created_at desc, id limit ? offset ?`,
    [...bindings, page.limit, page.offset],
  );
  return { rows: rows.map(({ total: _, ...row }) => row), total: rows[0]?.total ?? 0 };
}
