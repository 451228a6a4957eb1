import type { Queue } from 'bullmq';
import type { Knex } from 'knex';
import type { App } from '../../shared/app.js';
import { sagaSweepBatchSize } from '../../shared/defaults.js';
import { SagaDeadlineError, toErrorInfo } from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';
import { insertOutboxMessages } from '../../shared/outbox.js';
import type { SagaDefinition } from '../../shared/saga/definition.js';
import { sagaQueue, stepJobId } from '../../shared/saga/jobs.js';
import { planCompensation, planExecution } from '../../shared/saga/plan.js';
import {
  bumpGeneration,
  findStalledSagas,
  hasPendingSagaJobs,
  listStepRows,
  type SagaRow,
  transitionSaga,
} from '../../shared/saga/store.js';
import { beginCompensation, stageMessages } from './transitions.js';

export interface SweepDeps {
  app: App;
  knex: Knex;
  queue: Queue;
  staleAfterMs: number;
  log: Logger;
  /**
   * The saga name and definition version pairs this worker serves: only their instances are
   * resumed (and looked at, so that instances of a version it lacks do not fill every batch).
   * Default: every version the app registers.
   */
  served?: ReadonlyArray<readonly [string, number]>;
  /**
   * Sagas looked at per pass.
   * @defaultValue 200
   */
  batchSize?: number;
}

const aliveStates = new Set(['waiting', 'delayed', 'active', 'prioritized', 'waiting-children']);
// pg_try_advisory_xact_lock key: one sweeping process at a time per database ("dwsweep").
const sweepLockKey = 0x6477_7377;

/**
 * One pass of the recovery sweep: finds sagas left running or compensating with nothing to drive
 * them (Redis lost its jobs, a job failed outside the step runner) and re-enqueues the pending
 * steps of their current stage under a new generation (fresh job ids). The step records make
 * sure nothing already done runs again. Also compensates sagas past their deadline whose timer
 * job was lost. Returns how many sagas it resumed.
 */
export async function sweepOnce(deps: SweepDeps): Promise<number> {
  const { knex, app, log } = deps;
  // The advisory lock is held by a transaction that takes no row locks; each saga is then handled
  // in its own short transaction, and Redis is asked outside of any, so a live step never waits
  // for a whole batch (or for Redis) behind the sweep.
  return knex.transaction(async (lock) => {
    const { rows } = await lock.raw<{ rows: [{ locked: boolean }] }>(
      'select pg_try_advisory_xact_lock(?) as locked',
      [sweepLockKey],
    );
    if (!rows[0]?.locked) return 0;
    let resumed = 0;
    const served =
      deps.served ??
      [...app.sagaVersions].flatMap(([name, versions]) =>
        [...versions.keys()].map((v) => [name, v] as const),
      );
    for (const saga of await findStalledSagas(
      knex,
      deps.staleAfterMs,
      deps.batchSize ?? sagaSweepBatchSize,
      served,
    )) {
      // The version the instance started with, never another.
      const definition = app.sagaDefinition(saga.name, saga.definition_version) as
        | SagaDefinition<object>
        | undefined;
      if (!definition) continue;
      if (saga.status === 'running' && saga.deadline_at && saga.deadline_at.getTime() < Date.now()) {
        const started = await knex.transaction((trx) =>
          beginCompensation(
            trx,
            definition,
            saga.id,
            toErrorInfo(new SagaDeadlineError(saga.name, definition.deadlineMs), { stack: false }),
          ),
        );
        if (started) resumed++;
        continue;
      }
      if (await resume(deps, definition, saga)) {
        resumed++;
        log.warn({ sagaId: saga.id, status: saga.status }, 'stalled saga resumed by the sweep');
      }
    }
    return resumed;
  });
}

async function resume(deps: SweepDeps, definition: SagaDefinition<object>, saga: SagaRow): Promise<boolean> {
  const { knex } = deps;
  const records = await listStepRows(knex, saga.id);
  const plan =
    saga.status === 'running' ? planExecution(definition, records) : planCompensation(definition, records);
  if (plan.kind === 'done') {
    // Every step is recorded but the final status is not (cannot happen through the runner; heal it).
    const to = saga.status === 'running' ? 'completed' : 'compensated';
    return (await transitionSaga(knex, saga.id, saga.status, to)) !== undefined;
  }
  if (await hasPendingSagaJobs(knex, sagaQueue, saga.id)) return false;
  for (const step of plan.pending) {
    const attempts = definition.getStep(step)?.retry.attempts ?? 1;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      const id = stepJobId(saga.id, plan.phase, step, saga.generation, attempt);
      if (aliveStates.has(await deps.queue.getJobState(id))) return false;
    }
  }
  // Only if the saga has not moved since it was read (a step, a scheduled retry, a transition all
  // bump its version): what was checked above still holds.
  return knex.transaction(async (trx) => {
    const generation = await bumpGeneration(trx, saga);
    if (generation === null) return false;
    await insertOutboxMessages(trx, stageMessages(saga, plan, generation, records));
    return true;
  });
}
