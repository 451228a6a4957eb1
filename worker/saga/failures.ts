import type { Knex } from 'knex';
import { refusedByDatabase } from '../../shared/db/failures.js';
import { storeDeadLetter } from '../../shared/dead-letters.js';
import { type ErrorInfo, isRetryable, toErrorInfo } from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';
import { insertOutboxMessages } from '../../shared/outbox.js';
import type { SagaDefinition, StepDefinition } from '../../shared/saga/definition.js';
import {
  type SagaStepJob,
  sagaDeadLetterId,
  sagaQueue,
  sagaStepType,
  stepMessage,
} from '../../shared/saga/jobs.js';
import { planNextStage, retryDelayMs } from '../../shared/saga/plan.js';
import {
  getSaga,
  recordStepFailure,
  type SagaRow,
  touchSaga,
  transitionSaga,
} from '../../shared/saga/store.js';
import { beginCompensation } from './transitions.js';

// biome-ignore lint/suspicious/noExplicitAny: sagas of any state type share the runner
type AnySaga = SagaDefinition<any>;
// biome-ignore lint/suspicious/noExplicitAny: see AnySaga
type AnyStep = StepDefinition<any>;

/** A failed attempt, as both entry points hand it on. */
type Failure = {
  deps: { knex: Knex; log: Logger };
  saga: AnySaga;
  step: AnyStep;
  job: SagaStepJob;
  cause: unknown;
  attempt: number;
  /** The cause as recorded. */
  error: ErrorInfo;
};

/**
 * After a failed attempt's rollback: schedules the next attempt as a delayed job, or gives up on
 * the step, in a transaction of `knex` (a savepoint when it is the attempt's transaction, still
 * holding the step lock). 'duplicate' when the step record had moved past this attempt (a
 * concurrent job recorded it, or completed the step): nothing is scheduled, dead-lettered or
 * compensated.
 */
export async function scheduleRetryOrGiveUp(
  deps: { knex: Knex; log: Logger },
  saga: AnySaga,
  step: AnyStep,
  job: SagaStepJob,
  cause: unknown,
  attempt: number,
): Promise<'retry-scheduled' | 'failed' | 'duplicate'> {
  const failure = { deps, saga, step, job, cause, attempt, error: toErrorInfo(cause) };
  if (isFinal(failure)) return giveUp(failure);
  return recordRetry(failure, async (trx, row, delayMs) => {
    await insertOutboxMessages(trx, [
      stepMessage({
        sagaId: row.id,
        saga: saga.name,
        version: saga.version,
        phase: job.phase,
        step: step.name,
        generation: row.generation,
        attempt: attempt + 1,
        delayMs: Math.max(1, delayMs),
        correlationId: row.correlation_id,
      }),
    ]);
    return 'retry-scheduled' as const;
  });
}

/**
 * Like scheduleRetryOrGiveUp, but a failure that is not final is only recorded ('recorded'): the
 * caller runs the next attempt itself (a restarted job, after the attempt that died).
 */
export async function recordFailureOrGiveUp(
  deps: { knex: Knex; log: Logger },
  saga: AnySaga,
  step: AnyStep,
  job: SagaStepJob,
  cause: unknown,
  attempt: number,
): Promise<'recorded' | 'failed' | 'duplicate'> {
  const failure = { deps, saga, step, job, cause, attempt, error: toErrorInfo(cause) };
  if (isFinal(failure)) return giveUp(failure);
  return recordRetry(failure, async () => 'recorded' as const);
}

function isFinal({ step, cause, attempt }: Failure): boolean {
  // A value PostgreSQL refused (NUL, lone surrogate, too deep) is refused again on every attempt.
  return !isRetryable(cause) || refusedByDatabase(cause) || attempt >= step.retry.attempts;
}

function failureRecord({ step, job, attempt, error }: Failure) {
  return {
    sagaId: job.sagaId,
    step: step.name,
    stage: step.stage,
    phase: job.phase,
    attempts: attempt,
    error,
  };
}

/** Records a failure that is not final, then `next` (what runs the next attempt) in the same transaction. */
async function recordRetry<T>(
  failure: Failure,
  next: (
    trx: Knex.Transaction,
    row: Pick<SagaRow, 'id' | 'generation' | 'correlation_id'>,
    delayMs: number,
  ) => Promise<T>,
): Promise<T | 'duplicate'> {
  const { deps, step, job, cause, attempt } = failure;
  const delayMs = retryDelayMs(step.retry, attempt);
  deps.log.warn(
    { sagaId: job.sagaId, step: step.name, phase: job.phase, attempt, delayMs, err: cause },
    'saga step failed; retrying',
  );
  return deps.knex
    .transaction(async (trx) => {
      const row = await touchSaga(trx, job.sagaId, job.phase === 'execute' ? 'running' : 'compensating');
      if (!row) return 'duplicate' as const;
      if (!(await recordStepFailure(trx, { ...failureRecord(failure), final: false }))) {
        // Rolled back: the saga row keeps its version.
        throw new Superseded();
      }
      return next(trx, row, delayMs);
    })
    .catch(superseded);
}

/** The step failed for good: its record, a dead letter, and the saga compensating (or failed). */
async function giveUp(failure: Failure): Promise<'failed' | 'duplicate'> {
  const { deps, saga, step, job, cause, attempt, error } = failure;
  const record = failureRecord(failure);
  deps.log.error(
    { sagaId: job.sagaId, step: step.name, phase: job.phase, attempt, err: cause },
    'saga step failed for good',
  );
  return deps.knex.transaction(async (trx) => {
    // A late final failure must not undo what a concurrent job of the step did meanwhile.
    if (!(await recordStepFailure(trx, { ...record, final: true }))) return 'duplicate';
    await deadLetter(trx, job, error, attempt);
    const next = planNextStage(saga, { phase: job.phase, stage: step.stage, outcome: 'failed' });
    if (next.kind === 'begin-compensation') {
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
    return 'failed' as const;
  });
}

/** Rolls the retry transaction back when the step record had moved on. */
class Superseded extends Error {}

function superseded(error: unknown): 'duplicate' {
  if (error instanceof Superseded) return 'duplicate';
  throw error;
}

async function deadLetter(trx: Knex.Transaction, job: SagaStepJob, error: ErrorInfo, attempts: number) {
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

function withStep(error: ErrorInfo, step: string, phase: string): ErrorInfo {
  return {
    ...error,
    message: `${phase === 'execute' ? 'step' : 'compensation of'} ${step}: ${error.message}`,
  };
}
