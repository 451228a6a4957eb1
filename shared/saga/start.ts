import { randomUUID } from 'node:crypto';
import type { Knex } from 'knex';
import { DefinitionError } from '../errors.js';
import type { OutboxMessage } from '../outbox.js';
import type { SagaDefinition } from './definition.js';
import { deadlineMessage, stepMessage } from './jobs.js';
import { insertSaga } from './store.js';

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
  trx: Knex.Transaction,
  request: StartSagaRequest<State>,
): Promise<{ id: string; started: boolean; outbox: OutboxMessage[] }> {
  const { saga } = request;
  const id = request.id ?? randomUUID();
  if (typeof id !== 'string' || id.length === 0 || id.length > 200) {
    throw new DefinitionError(
      `saga ${saga.name}: the saga id must be a non-empty string of at most 200 chars`,
    );
  }
  const first = saga.stages[0];
  if (!first) throw new DefinitionError(`saga ${saga.name} has no steps; add one with .step()`);
  const started = await insertSaga(trx, {
    id,
    name: saga.name,
    state: request.input,
    correlationId: request.correlationId,
    deadlineMs: saga.deadlineMs,
    definitionVersion: saga.version,
    fingerprint: saga.fingerprint,
  });
  if (!started) return { id, started: false, outbox: [] };
  const common = {
    sagaId: id,
    saga: saga.name,
    version: saga.version,
    generation: 0,
    correlationId: request.correlationId,
    causationId: request.causationId,
  };
  const outbox = first.map((step) => stepMessage({ ...common, phase: 'execute', step: step.name }));
  if (saga.deadlineMs !== undefined) outbox.push(deadlineMessage({ ...common, delayMs: saga.deadlineMs }));
  return { id, started: true, outbox };
}
