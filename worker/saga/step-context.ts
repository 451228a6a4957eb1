import { randomUUID } from 'node:crypto';
import { trace } from '@opentelemetry/api';
import type { Knex } from 'knex';
import { StepTimeoutError } from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';
import { type OutboxMessage, resolveDestination } from '../../shared/outbox.js';
import type { StepContext } from '../../shared/saga/definition.js';
import type { SagaPhase } from '../../shared/saga/jobs.js';
import { type Clock, systemClock } from '../../shared/time.js';
import { Attr, traceHeaders, tracingOn } from '../../shared/tracing.js';

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
  signal: AbortSignal;
}): StepContext<Record<string, unknown>> {
  const { trx, saga, sagaName, step, phase, attempt, outbox, log, signal } = input;
  // The attempt the step span stands for is only known here, from the step's record.
  if (tracingOn()) trace.getActiveSpan()?.setAttribute(Attr.sagaAttempt, attempt);
  return {
    trx,
    signal,
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
        headers: {
          correlationId: saga.correlation_id ?? saga.id,
          causationId: saga.id,
          // The step's span: what consumes the message joins the saga's trace.
          ...traceHeaders(),
        },
      });
    },
  };
}

/**
 * Runs a step's code bounded by its timeoutMs. Past it, `abort` is aborted (user I/O given
 * ctx.signal stops) and `cancel` is awaited (it cancels the transaction's running query, so that
 * the rollback does not queue behind it) before the attempt fails with StepTimeoutError.
 */
export async function withTimeout<T>(
  run: () => Promise<T>,
  step: { name: string; timeoutMs?: number },
  abort: AbortController,
  cancel: () => Promise<unknown>,
  clock: Clock = systemClock,
): Promise<T> {
  const { timeoutMs } = step;
  if (!timeoutMs) return run();
  let timer: unknown;
  let cancelled: Promise<unknown> = Promise.resolve();
  const timeout = new Promise<never>((_, reject) => {
    timer = clock.setTimeout(() => {
      const error = new StepTimeoutError(step.name, timeoutMs);
      abort.abort(error);
      cancelled = cancel().catch(() => {});
      void cancelled.then(() => reject(error));
    }, timeoutMs);
  });
  let result: T;
  try {
    result = await Promise.race([run(), timeout]);
  } catch (error) {
    if (!abort.signal.aborted) throw error;
    // The user code may fail first (its query cancelled, its fetch aborted): still a timeout.
    result = undefined as T;
  } finally {
    clock.clearTimeout(timer);
  }
  if (abort.signal.aborted) {
    // Also when the code finished just too late: the cancel must land before the framework's own
    // statements run or the connection goes back to the pool.
    await cancelled;
    throw abort.signal.reason;
  }
  return result;
}
