import type { Knex } from 'knex';
import { insertOutboxMessages } from '../outbox.js';
import { stepMessage } from './jobs.js';
import { reopenFailedSaga, resetFailedCompensations } from './store.js';

/**
 * Replays a compensation that failed for good (a `compensation-failed` dead letter): the `failed`
 * saga goes back to `compensating`; the compensation's record, and that of any sibling of its
 * group that failed for good too, is cleared so it gets its attempts again; a job for each is
 * written to the outbox under a new generation (fresh job ids). When they complete, compensation
 * carries on backwards as usual. 'not-failed' when the saga is not `failed` (already replayed,
 * or never failed), so replaying twice does nothing twice.
 */
export async function retryCompensation(
  knex: Knex,
  target: { sagaId: string; step: string },
): Promise<'resumed' | 'not-failed'> {
  return knex.transaction(async (trx) => {
    const saga = await reopenFailedSaga(trx, target.sagaId);
    if (!saga) return 'not-failed';
    const steps = new Set([target.step, ...(await resetFailedCompensations(trx, target.sagaId))]);
    await insertOutboxMessages(
      trx,
      [...steps].map((step) =>
        stepMessage({
          sagaId: saga.id,
          saga: saga.name,
          phase: 'compensate',
          step,
          generation: saga.generation,
          correlationId: saga.correlation_id,
        }),
      ),
    );
    return 'resumed';
  });
}
