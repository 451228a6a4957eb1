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
import { retryDelayMs } from '../../shared/saga/plan.js';
import { getSaga, recordStepFailure, touchSaga, transitionSaga } from '../../shared/saga/store.js';
import { beginCompensation } from './transitions.js';

// biome-ignore lint/suspicious/noExplicitAny: sagas of any state type share the runner
type AnySaga = SagaDefinition<any>;
// biome-ignore lint/suspicious/noExplicitAny: see AnySaga
type AnyStep = StepDefinition<any>;

/**
 * After a failed attempt's rollback: schedule the next attempt, or give up on the step, in a
 * transaction of `knex` (a savepoint when it is the attempt's transaction, still holding the step
 * lock). `scheduleRetry: false` only records a non-final failure (the caller runs the next
 * attempt itself). 'duplicate' when the step record had moved past this attempt (a concurrent
 * job recorded it, or completed the step): nothing is scheduled, dead-lettered or compensated.
 */
export async function afterFailedAttempt(
  deps: { knex: Knex; log: Logger },
  saga: AnySaga,
  step: AnyStep,
  job: SagaStepJob,
  cause: unknown,
  attempt: number,
  options: { scheduleRetry?: boolean } = {},
): Promise<'retry-scheduled' | 'recorded' | 'failed' | 'duplicate'> {
  const { knex, log } = deps;
  const error = toErrorInfo(cause);
  // A value PostgreSQL refused (NUL, lone surrogate, too deep) is refused again on every attempt.
  const final = !isRetryable(cause) || refusedByDatabase(cause) || attempt >= step.retry.attempts;
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
      { sagaId: job.sagaId, step: step.name, phase: job.phase, attempt, delayMs, err: cause },
      'saga step failed; retrying',
    );
    return knex
      .transaction(async (trx) => {
        const row = await touchSaga(trx, job.sagaId, job.phase === 'execute' ? 'running' : 'compensating');
        if (!row) return 'duplicate';
        if (!(await recordStepFailure(trx, { ...record, final: false }))) {
          // Rolled back: the saga row keeps its version.
          throw new Superseded();
        }
        if (options.scheduleRetry === false) return 'recorded';
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
      })
      .catch(superseded);
  }
  log.error(
    { sagaId: job.sagaId, step: step.name, phase: job.phase, attempt, err: cause },
    'saga step failed for good',
  );
  return knex.transaction(async (trx) => {
    // A late final failure must not undo what a concurrent job of the step did meanwhile.
    if (!(await recordStepFailure(trx, { ...record, final: true }))) return 'duplicate';
    await deadLetter(trx, job, error, attempt);
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
