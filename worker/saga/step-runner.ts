import { randomUUID } from 'node:crypto';
import type { Knex } from 'knex';
import type { App } from '../../shared/app.js';
import { crashPoint } from '../../shared/crash-points.js';
import { isConnectionError, isSerializationError } from '../../shared/db/knex.js';
import { storeDeadLetter } from '../../shared/dead-letters.js';
import {
  ConcurrencyConflictError,
  type ErrorInfo,
  isRetryable,
  StepTimeoutError,
  toErrorInfo,
} from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';
import { sagaStepsTotal } from '../../shared/metrics.js';
import { insertOutboxMessages, type OutboxMessage, resolveDestination } from '../../shared/outbox.js';
import type { SagaDefinition, StepContext, StepDefinition } from '../../shared/saga/definition.js';
import {
  type SagaDeadlineJob,
  type SagaStepJob,
  sagaDeadLetterId,
  sagaQueue,
  sagaStepType,
  stepMessage,
} from '../../shared/saga/jobs.js';
import {
  advanceSagaVersion,
  getSaga,
  listStepRows,
  readSagaForStep,
  recordStepCompleted,
  recordStepFailure,
  transitionSaga,
} from '../../shared/saga/store.js';
import { sleep } from '../../shared/time.js';
import { planCompensation, planExecution, retryDelayMs } from './plan.js';
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
        return this.afterFailedAttempt(saga, step, job, error);
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
    const ctx: StepContext<Record<string, unknown>> = {
      trx,
      sagaId: row.id,
      sagaName: saga.name,
      step: step.name,
      phase: job.phase,
      state: row.state,
      attempt,
      idempotencyKey: `${row.id}:${job.phase}:${step.name}`,
      correlationId: row.correlation_id ?? row.id,
      log: this.deps.log.child({ sagaId: row.id, step: step.name, phase: job.phase, attempt }),
      send: (destination, type, payload) => {
        outbox.push({
          messageId: randomUUID(),
          destination: resolveDestination(destination),
          type,
          payload,
          headers: { correlationId: row.correlation_id ?? row.id, causationId: row.id },
        });
      },
    };
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

  /** After a failed attempt's rollback: schedule the next attempt, or give up on the step. */
  private async afterFailedAttempt(
    saga: AnySaga,
    step: AnyStep,
    job: SagaStepJob,
    failure: AttemptFailed,
  ): Promise<StepOutcome> {
    const { knex, log } = this.deps;
    const error = toErrorInfo(failure.error);
    const { attempt } = failure;
    const final = !isRetryable(failure.error) || attempt >= step.retry.attempts;
    const record = {
      sagaId: job.sagaId,
      step: step.name,
      stage: step.stage,
      phase: job.phase,
      attempts: attempt,
      error,
    };
    if (!final) {
      const delayMs = retryDelayMs(step.retry, attempt);
      log.warn(
        { sagaId: job.sagaId, step: step.name, phase: job.phase, attempt, delayMs, err: failure.error },
        'saga step failed; retrying',
      );
      await knex.transaction(async (trx) => {
        const row = await getSaga(trx, job.sagaId);
        if (!row || row.status !== (job.phase === 'execute' ? 'running' : 'compensating')) return;
        await recordStepFailure(trx, { ...record, final: false });
        await insertOutboxMessages(trx, [
          stepMessage({
            sagaId: row.id,
            saga: saga.name,
            phase: job.phase,
            step: step.name,
            generation: row.generation,
            attempt: attempt + 1,
            delayMs: Math.max(1, delayMs),
            correlationId: row.correlation_id,
          }),
        ]);
      });
      return 'retry-scheduled';
    }
    log.error(
      { sagaId: job.sagaId, step: step.name, phase: job.phase, attempt, err: failure.error },
      'saga step failed for good',
    );
    await knex.transaction(async (trx) => {
      await recordStepFailure(trx, { ...record, final: true });
      await this.deadLetter(trx, job, error, attempt);
      if (job.phase === 'execute') {
        await beginCompensation(trx, saga, job.sagaId, withStep(error, step.name, 'execute'));
      } else {
        await transitionSaga(
          trx,
          job.sagaId,
          'compensating',
          'failed',
          withStep(error, step.name, 'compensate'),
        );
      }
    });
    return 'failed';
  }

  private async deadLetter(trx: Knex.Transaction, job: SagaStepJob, error: ErrorInfo, attempts: number) {
    const saga = await getSaga(trx, job.sagaId);
    await storeDeadLetter(trx, {
      source: 'saga',
      queue: sagaQueue,
      messageId: sagaDeadLetterId(job.sagaId, job.phase, job.step),
      type: sagaStepType,
      reason: job.phase === 'execute' ? 'step-failed' : 'compensation-failed',
      error,
      attempts,
      payload: job,
      headers: saga?.correlation_id ? { correlationId: saga.correlation_id } : {},
      sagaId: job.sagaId,
      step: job.step,
      phase: job.phase,
    });
  }

  /**
   * Re-runs `fn` on optimistic-concurrency conflicts, serialization failures and deadlocks
   * (briefly, with jitter), and on database outages (backing off up to 5 s) until shutdown.
   * None of these count as an attempt of the step.
   */
  private async withTransactionRetry<T>(fn: () => Promise<T>): Promise<T> {
    for (let conflicts = 0, outages = 0; ; ) {
      try {
        return await fn();
      } catch (error) {
        if (error instanceof ConcurrencyConflictError || isSerializationError(error)) {
          conflicts++;
          await sleep(Math.random() * Math.min(200, 2 * 2 ** Math.min(conflicts, 7)));
          continue;
        }
        if (isConnectionError(error) && !this.deps.signal.aborted) {
          if (outages++ === 0) this.deps.log.warn({ err: error }, 'database unavailable; saga step waits');
          await sleep(Math.min(5000, 50 * 2 ** Math.min(outages, 7)), this.deps.signal);
          continue;
        }
        throw error;
      }
    }
  }
}

function withStep(error: ErrorInfo, step: string, phase: string): ErrorInfo {
  return {
    ...error,
    message: `${phase === 'execute' ? 'step' : 'compensation of'} ${step}: ${error.message}`,
  };
}

/** A step past its timeoutMs fails its attempt; the late result is ignored (its transaction is gone). */
function withTimeout<T>(promise: Promise<T>, step: AnyStep): Promise<T> {
  const { timeoutMs } = step;
  if (!timeoutMs) return promise;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StepTimeoutError(step.name, timeoutMs)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
