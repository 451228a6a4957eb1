import type { Knex } from 'knex';
import { DurableWorkerError } from '../errors.js';
import type { OutboxMessage } from '../outbox.js';
import type { SagaDefinition } from './definition.js';

export interface StartSagaRequest<State extends object> {
  saga: SagaDefinition<State>;
  input: State;
  id?: string;
  correlationId: string;
  causationId?: string;
}

/**
 * Inserts the saga row (a second start of the same id is a no-op) and returns the outbox messages
 * that drive its first steps; the caller writes them in the same transaction.
 */
export async function startSaga<State extends object>(
  _trx: Knex.Transaction,
  request: StartSagaRequest<State>,
): Promise<{ id: string; started: boolean; outbox: OutboxMessage[] }> {
  throw new DurableWorkerError(`sagas are not implemented yet (saga ${request.saga.name})`);
}
