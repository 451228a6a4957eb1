import type { Knex } from 'knex';
import { DurableWorkerError } from './errors.js';

type RetryCompensation = (
  knex: Knex,
  target: { sagaId: string; step: string },
) => Promise<'resumed' | 'not-failed'>;

/** The saga store may not offer compensation retries (yet); a replay then says so plainly. */
export class SagaReplayUnavailableError extends DurableWorkerError {
  override readonly code = 'DW_SAGA_REPLAY_UNAVAILABLE';
  override readonly retryable = false;
}

// Resolved at run time so the dead-letter replay builds whether or not the saga module offers it.
const candidates = ['./saga/recovery.js', './saga/store.js'];

/** Sends a saga whose compensation failed for good back to compensating, from that step. */
export async function retrySagaCompensation(
  knex: Knex,
  target: { sagaId: string; step: string },
): Promise<'resumed' | 'not-failed'> {
  for (const specifier of candidates) {
    const mod = (await import(specifier).catch(() => undefined)) as
      | { retryCompensation?: RetryCompensation }
      | undefined;
    if (typeof mod?.retryCompensation === 'function') return mod.retryCompensation(knex, target);
  }
  throw new SagaReplayUnavailableError(
    'this version of durable-worker cannot retry saga compensations; the entry was left in place',
  );
}
