import type { Knex } from 'knex';
import type { ErrorInfo } from '../../shared/errors.js';
import { insertOutboxMessages, type OutboxMessage } from '../../shared/outbox.js';
import type { SagaDefinition } from '../../shared/saga/definition.js';
import { stepMessage } from '../../shared/saga/jobs.js';
import { nextAttempt, type Plan, planCompensation, type StepRecord } from '../../shared/saga/plan.js';
import { listStepRows, type SagaRow, transitionSaga } from '../../shared/saga/store.js';

/**
 * Outbox messages that run the pending steps of a planned stage under `generation`, each as the
 * attempt after those `records` hold (attempt 1 without records).
 */
export function stageMessages(
  saga: Pick<SagaRow, 'id' | 'name' | 'definition_version' | 'generation' | 'correlation_id'>,
  plan: Extract<Plan, { kind: 'stage' }>,
  generation = saga.generation,
  records: readonly StepRecord[] = [],
): OutboxMessage[] {
  return plan.pending.map((step) =>
    stepMessage({
      sagaId: saga.id,
      saga: saga.name,
      version: saga.definition_version,
      phase: plan.phase,
      step,
      generation,
      attempt: nextAttempt(records, plan.phase, step),
      correlationId: saga.correlation_id,
    }),
  );
}

/**
 * Turns a running saga to compensating (a step failed for good, or the deadline passed) and
 * enqueues the compensations of the latest stage with completed steps; with nothing to compensate
 * it ends `compensated` at once. Returns false when the saga was not running any more.
 */
export async function beginCompensation(
  trx: Knex.Transaction,
  definition: SagaDefinition<object>,
  sagaId: string,
  reason: ErrorInfo,
): Promise<boolean> {
  const saga = await transitionSaga(trx, sagaId, 'running', 'compensating', reason);
  if (!saga) return false;
  const records = await listStepRows(trx, sagaId);
  const plan = planCompensation(definition, records);
  if (plan.kind === 'done') await transitionSaga(trx, sagaId, 'compensating', 'compensated');
  else await insertOutboxMessages(trx, stageMessages(saga, plan, saga.generation, records));
  return true;
}
