import type { Knex } from 'knex';
import type { App } from '../../shared/app.js';
import { crashPoint } from '../../shared/crash-points.js';
import { isConnectionError, isSerializationError } from '../../shared/db/knex.js';
import { ConcurrencyConflictError } from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';
import { sagaStepsTotal } from '../../shared/metrics.js';
import { insertOutboxMessages, type OutboxMessage } from '../../shared/outbox.js';
import type { SagaDefinition, StepDefinition } from '../../shared/saga/definition.js';
import type { SagaDeadlineJob, SagaStepJob } from '../../shared/saga/jobs.js';
import {
  advanceSagaVersion,
  listStepRows,
  readSagaForStep,
  recordStepCompleted,
  transitionSaga,
} from '../../shared/saga/store.js';
import { sleep } from '../../shared/time.js';
import { afterFailedAttempt } from './failures.js';
import { planCompensation, planExecution } from './plan.js';
import { stepContext, withTimeout } from './step-context.js';
import { beginCompensation, stageMessages } from './transitions.js';

export interface StepRunnerDeps {
  app: App;
  knex: Knex;
  log: Logger;
  /** Aborted when shutdown gives up waiting: database outage backoffs stop. */
  signal: AbortSignal;
}

export type StepOutcome =
  | 'completed'
  | 'retry-scheduled'
  | 'failed'
  | 'duplicate'
  | 'not-applicable'
  | 'unknown-saga';

/** The user's step function threw (or timed out) in attempt `attempt`; its transaction rolled back. */
class AttemptFailed extends Error {
  constructor(
    readonly error: unknown,
    readonly attempt: number,
  ) {
    super('step attempt failed');
  }
}

// biome-ignore lint/suspicious/noExplicitAny: sagas of any state type share the runner
type AnySaga = SagaDefinition<any>;
// biome-ignore lint/suspicious/noExplicitAny: see AnySaga
type AnyStep = StepDefinition<any>;

/**
 * Runs one saga job: a step or compensation attempt in one transaction (saga row read, user code
 * on ctx.trx, optimistic saga update, step record, next stage's outbox rows), then on failure
 * either a delayed retry or the switch to compensation / `failed`, each in its own transaction.
 */
export class SagaStepRunner {
  /** Set while the database is unreachable, so the outage is logged once for all steps in flight. */
  private databaseOutage = false;

  constructor(private readonly deps: StepRunnerDeps) {}

  async runStep(job: SagaStepJob): Promise<StepOutcome> {
    const saga = this.deps.app.sagas.get(job.saga) as AnySaga | undefined;
    const step = saga?.getStep(job.step);
    if (!saga || !step || (job.phase === 'compensate' && !step.compensate)) {
      this.deps.log.error({ job }, 'saga job names a saga or step this app does not define; ignored');
      return 'unknown-saga';
    }
    const outcome = await this.withTransactionRetry(async () => {
      try {
        return await this.deps.knex.transaction((trx) => this.attempt(trx, saga, step, job));
      } catch (error) {
        if (!(error instanceof AttemptFailed)) throw error;
        return afterFailedAttempt(this.deps, saga, step, job, error.error, error.attempt);
      }
    });
    if (outcome === 'completed') crashPoint('saga:after-step-commit');
    sagaStepsTotal.inc({ phase: job.phase, outcome });
    return outcome;
  }

  async runDeadline(job: SagaDeadlineJob): Promise<'compensating' | 'not-applicable' | 'unknown-saga'> {
    const saga = this.deps.app.sagas.get(job.saga) as AnySaga | undefined;
    if (!saga) return 'unknown-saga';
    const started = await this.withTransactionRetry(() =>
      this.deps.knex.transaction((trx) =>
        beginCompensation(trx, saga, job.sagaId, {
          name: 'SagaDeadlineError',
          message: `saga ${saga.name} did not complete within its deadline of ${saga.deadlineMs} ms`,
        }),
      ),
    );
    if (started) this.deps.log.warn({ sagaId: job.sagaId }, 'saga deadline passed: compensating');
    return started ? 'compensating' : 'not-applicable';
  }

  /** One attempt, inside its transaction. Throws AttemptFailed when the user code failed. */
  private async attempt(
    trx: Knex.Transaction,
    saga: AnySaga,
    step: AnyStep,
    job: SagaStepJob,
  ): Promise<StepOutcome> {
    const row = await readSagaForStep(trx, job.sagaId, step.name, job.phase);
    if (!row || row.status !== (job.phase === 'execute' ? 'running' : 'compensating')) {
      return 'not-applicable';
    }
    // A duplicated or redelivered job: the record says this already happened (or gave up).
    if (row.step_status === 'completed' || row.step_status === 'failed') return 'duplicate';
    const attempt = (row.step_attempts ?? 0) + 1;
    const outbox: OutboxMessage[] = [];
    const ctx = stepContext({
      trx,
      saga: row,
      sagaName: saga.name,
      step: step.name,
      phase: job.phase,
      attempt,
      outbox,
      log: this.deps.log,
    });
    let result: unknown;
    try {
      const fn = job.phase === 'execute' ? step.run : step.compensate!;
      result = await withTimeout(
        Promise.resolve().then(() => fn(ctx)),
        step,
      );
    } catch (error) {
      // The database going away is not the step's fault: the whole attempt is re-run.
      if (isConnectionError(error) || isSerializationError(error)) throw error;
      throw new AttemptFailed(error, attempt);
    }

    const lastStage = saga.stages.length - 1;
    const stageSize = saga.stages[step.stage]?.length ?? 1;
    const finishes = job.phase === 'execute' && step.stage === lastStage && stageSize === 1;
    const state =
      job.phase === 'execute' && result && typeof result === 'object'
        ? { ...row.state, ...(result as object) }
        : undefined;
    if (
      !(await advanceSagaVersion(trx, row.id, row.version, {
        state,
        status: finishes ? 'completed' : undefined,
      }))
    ) {
      throw new ConcurrencyConflictError(row.id, row.version);
    }
    const recorded = await recordStepCompleted(trx, {
      sagaId: row.id,
      step: step.name,
      stage: step.stage,
      phase: job.phase,
      attempts: attempt,
    });
    if (!recorded) throw new ConcurrencyConflictError(row.id, row.version);

    const saga_ = {
      id: row.id,
      name: saga.name,
      generation: row.generation,
      correlation_id: row.correlation_id,
    };
    if (job.phase === 'execute' && !finishes) {
      if (stageSize === 1) {
        const next = saga.stages[step.stage + 1] ?? [];
        const plan = {
          kind: 'stage',
          phase: 'execute',
          stage: step.stage + 1,
          pending: next.map((s) => s.name),
        } as const;
        outbox.push(...stageMessages(saga_, plan));
      } else {
        // A parallel group: the saga row is locked by the update above, so the sibling that
        // commits last sees every other sibling's record and is the one that moves on.
        const plan = planExecution(saga, await listStepRows(trx, row.id));
        if (plan.kind === 'done') await transitionSaga(trx, row.id, 'running', 'completed');
        else if (plan.stage !== step.stage) outbox.push(...stageMessages(saga_, plan));
      }
    } else if (job.phase === 'compensate') {
      const plan = planCompensation(saga, await listStepRows(trx, row.id));
      if (plan.kind === 'done') await transitionSaga(trx, row.id, 'compensating', 'compensated');
      // Same stage: siblings still pending. Their jobs normally exist (same ids, ignored); after a
      // reopened compensation they may not, so writing them keeps the group moving.
      else outbox.push(...stageMessages(saga_, plan));
    }
    await insertOutboxMessages(trx, outbox);
    if (job.phase === 'compensate') crashPoint('saga:during-compensation');
    return 'completed';
  }

  /**
   * Re-runs `fn` on optimistic-concurrency conflicts, serialization failures and deadlocks
   * (briefly, with jitter), and on database outages (backing off up to 5 s) until shutdown.
   * None of these count as an attempt of the step.
   */
  private async withTransactionRetry<T>(fn: () => Promise<T>): Promise<T> {
    for (let conflicts = 0, outages = 0; ; ) {
      try {
        const result = await fn();
        if (this.databaseOutage) {
          this.databaseOutage = false;
          this.deps.log.info('database reachable again; saga steps resume');
        }
        return result;
      } catch (error) {
        if (error instanceof ConcurrencyConflictError || isSerializationError(error)) {
          conflicts++;
          await sleep(Math.random() * Math.min(200, 2 * 2 ** Math.min(conflicts, 7)));
          continue;
        }
        if (isConnectionError(error) && !this.deps.signal.aborted) {
          outages++;
          if (!this.databaseOutage) {
            this.databaseOutage = true;
            this.deps.log.warn({ err: error }, 'database unavailable; saga steps wait until it is back');
          }
          await sleep(Math.min(5000, 50 * 2 ** Math.min(outages, 7)), this.deps.signal);
          continue;
        }
        throw error;
      }
    }
  }
}
