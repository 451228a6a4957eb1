import type { Knex } from 'knex';
import { insertOutboxMessages } from '../outbox.js';
import { stepMessage } from './jobs.js';
import { reopenFailedSaga, resetCompensation } from './store.js';

/**
 * Replays a compensation that failed for good (a `compensation-failed` dead letter): the `failed`
 * saga goes back to `compensating`, the compensation's record is cleared so it gets its attempts
 * again, and a job for it is written to the outbox under a new generation (a fresh job id). When
 * it completes, compensation carries on backwards as usual. 'not-failed' when the saga is not
 * `failed` (already replayed, or never failed), so replaying twice does nothing twice.
 */
export async function retryCompensation(
  knex: Knex,
  target: { sagaId: string; step: string },
): Promise<'resumed' | 'not-failed'> {
  return knex.transaction(async (trx) => {
    const saga = await reopenFailedSaga(trx, target.sagaId);
    if (!saga) return 'not-failed';
    await resetCompensation(trx, target.sagaId, target.step);
    await insertOutboxMessages(trx, [
      stepMessage({
        sagaId: saga.id,
        saga: saga.name,
        phase: 'compensate',
        step: target.step,
        generation: saga.generation,
        correlationId: saga.correlation_id,
      }),
    ]);
    return 'resumed';
  });
}
