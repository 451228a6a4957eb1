import { randomUUID } from 'node:crypto';
import type { Knex } from 'knex';
import { StepTimeoutError } from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';
import { type OutboxMessage, resolveDestination } from '../../shared/outbox.js';
import type { StepContext } from '../../shared/saga/definition.js';
import type { SagaPhase } from '../../shared/saga/jobs.js';

/** What user code gets in a step or compensation; `send` appends to `outbox` (written with the step). */
export function stepContext(input: {
  trx: Knex.Transaction;
  saga: { id: string; state: Record<string, unknown>; correlation_id: string | null };
  sagaName: string;
  step: string;
  phase: SagaPhase;
  attempt: number;
  outbox: OutboxMessage[];
  log: Logger;
}): StepContext<Record<string, unknown>> {
  const { trx, saga, sagaName, step, phase, attempt, outbox, log } = input;
  return {
    trx,
    sagaId: saga.id,
    sagaName,
    step,
    phase,
    state: saga.state,
    attempt,
    idempotencyKey: `${saga.id}:${phase}:${step}`,
    correlationId: saga.correlation_id ?? saga.id,
    log: log.child({ sagaId: saga.id, step, phase, attempt }),
    send: (destination, type, payload) => {
      outbox.push({
        messageId: randomUUID(),
        destination: resolveDestination(destination),
        type,
        payload,
        headers: { correlationId: saga.correlation_id ?? saga.id, causationId: saga.id },
      });
    },
  };
}

/** A step past its timeoutMs fails its attempt; the late result is ignored (its transaction is gone). */
export function withTimeout<T>(promise: Promise<T>, step: { name: string; timeoutMs?: number }): Promise<T> {
  const { timeoutMs } = step;
  if (!timeoutMs) return promise;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StepTimeoutError(step.name, timeoutMs)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
