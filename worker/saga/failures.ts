import type { Knex } from 'knex';
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
import { getSaga, recordStepFailure, transitionSaga } from '../../shared/saga/store.js';
import { retryDelayMs } from './plan.js';
import { beginCompensation } from './transitions.js';

// biome-ignore lint/suspicious/noExplicitAny: sagas of any state type share the runner
type AnySaga = SagaDefinition<any>;
// biome-ignore lint/suspicious/noExplicitAny: see AnySaga
type AnyStep = StepDefinition<any>;

/** After a failed attempt's rollback: schedule the next attempt, or give up on the step (own transactions). */
export async function afterFailedAttempt(
  deps: { knex: Knex; log: Logger },
  saga: AnySaga,
  step: AnyStep,
  job: SagaStepJob,
  cause: unknown,
  attempt: number,
): Promise<'retry-scheduled' | 'failed'> {
  const { knex, log } = deps;
  const error = toErrorInfo(cause);
  const final = !isRetryable(cause) || attempt >= step.retry.attempts;
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
    { sagaId: job.sagaId, step: step.name, phase: job.phase, attempt, err: cause },
    'saga step failed for good',
  );
  await knex.transaction(async (trx) => {
    await recordStepFailure(trx, { ...record, final: true });
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
  });
  return 'failed';
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
