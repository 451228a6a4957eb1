import type { Knex } from 'knex';
import { insertOutboxMessages } from '../shared/outbox.js';
import { stepMessage } from '../shared/saga/jobs.js';
import { nextAttempt, type PlannableSaga, planCompensation } from '../shared/saga/plan.js';
import {
  listStepRows,
  reopenFailedSaga,
  resetFailedCompensations,
  transitionSaga,
} from '../shared/saga/store.js';

/**
 * Replays a compensation that failed for good (a `compensation-failed` dead letter): the `failed`
 * saga goes back to `compensating`; the compensation's record, and that of any sibling of its
 * group that failed for good too, is cleared so it gets its attempts again. Then, under a new
 * generation (fresh job ids), the pending compensations of the stage to compensate are written to
 * the outbox, planned from the step records as the runner plans them (the named compensation may
 * have completed meanwhile; then the stage's others, or the next stage down, are what is left).
 * When they complete, compensation carries on backwards as usual. Without `definition` (the app
 * does not define the saga any more) only the named and reset compensations are enqueued.
 * 'not-failed' when the saga is not `failed` (already replayed, or never failed), so replaying
 * twice does nothing twice.
 */
export async function retryCompensation(
  knex: Knex,
  target: { sagaId: string; step: string },
  definition?: PlannableSaga,
): Promise<'resumed' | 'not-failed'> {
  return knex.transaction(async (trx) => {
    const saga = await reopenFailedSaga(trx, target.sagaId);
    if (!saga) return 'not-failed';
    const reset = await resetFailedCompensations(trx, target.sagaId);
    let steps = [target.step, ...reset];
    const records = await listStepRows(trx, saga.id);
    if (definition) {
      const plan = planCompensation(definition, records);
      if (plan.kind === 'done') {
        await transitionSaga(trx, saga.id, 'compensating', 'compensated');
        return 'resumed';
      }
      steps = plan.pending;
    }
    await insertOutboxMessages(
      trx,
      [...new Set(steps)].map((step) =>
        stepMessage({
          sagaId: saga.id,
          saga: saga.name,
          version: saga.definition_version,
          phase: 'compensate',
          step,
          generation: saga.generation,
          // A sibling still retrying keeps its count: a new job of an attempt already made is ignored.
          attempt: nextAttempt(records, 'compensate', step),
          correlationId: saga.correlation_id,
        }),
      ),
    );
    return 'resumed';
  });
}
