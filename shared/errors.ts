/**
 * Every error durable-worker raises on purpose derives from DurableWorkerError and carries a stable
 * `code` that scripts and logs can match on. `retryable` tells the retry machinery whether another
 * attempt can succeed; handlers throw NonRetryableError to skip retries.
 */
export class DurableWorkerError extends Error {
  readonly code: string = 'DW_ERROR';
  readonly retryable: boolean = true;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** Thrown by user code when retrying cannot help (bad data, business rule): straight to the dead letters. */
export class NonRetryableError extends DurableWorkerError {
  override readonly code: string = 'DW_NON_RETRYABLE';
  override readonly retryable = false;
}

/** Configuration is invalid; each problem is one line of `problems`. */
export class ConfigError extends DurableWorkerError {
  override readonly code = 'DW_CONFIG';
  override readonly retryable = false;
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
  }
}

/** A dependency (Postgres, RabbitMQ, Redis) could not be reached. `url` has its password hidden. */
export class ServiceUnavailableError extends DurableWorkerError {
  override readonly code = 'DW_SERVICE_UNAVAILABLE';
  constructor(
    readonly service: 'PostgreSQL' | 'RabbitMQ' | 'Redis',
    readonly url: string,
    cause: unknown,
  ) {
    super(
      `cannot reach ${service} at ${url}: ${describeCause(cause)}. Is it running? (docker compose up -d)`,
      {
        cause,
      },
    );
  }
}

/** An app or saga definition that cannot work; raised at defineApp/defineSaga time. */
export class DefinitionError extends DurableWorkerError {
  override readonly code = 'DW_DEFINITION';
  override readonly retryable = false;
}

/** The incoming message cannot be handled as sent: it goes to the dead letters with `reason`. */
export class InvalidMessageError extends DurableWorkerError {
  override readonly code = 'DW_INVALID_MESSAGE';
  override readonly retryable = false;
  constructor(
    readonly reason: 'invalid-json' | 'unknown-type' | 'invalid-payload',
    message: string,
  ) {
    super(message);
  }
}

/** A saga row changed under a step (another step of a parallel group committed first); the step is re-run. */
export class ConcurrencyConflictError extends DurableWorkerError {
  override readonly code = 'DW_CONCURRENCY_CONFLICT';
  constructor(
    readonly sagaId: string,
    readonly expectedVersion: number,
  ) {
    super(`saga ${sagaId} changed while a step ran (expected version ${expectedVersion}); retrying`);
  }
}

/** A step or compensation exceeded its `timeoutMs`; counts as a failed attempt. */
export class StepTimeoutError extends DurableWorkerError {
  override readonly code = 'DW_STEP_TIMEOUT';
  constructor(
    readonly step: string,
    readonly timeoutMs: number,
  ) {
    super(`step ${step} did not finish within ${timeoutMs} ms`);
  }
}

/**
 * A saga job was handed out again after its worker died (or hung past its BullMQ lock) during an
 * attempt; that attempt counts as failed. If it happens each time, look for what kills the process
 * in the step (memory, a native crash, process.exit) or raise its timeoutMs / the lock duration.
 */
export class WorkerDiedError extends DurableWorkerError {
  override readonly code = 'DW_WORKER_DIED';
  constructor(step: string, phase: string, attempt: number) {
    super(
      `the worker died during attempt ${attempt} of ${phase === 'execute' ? 'step' : 'compensation of'} ${step} (the job was handed out again after its lock expired)`,
    );
  }
}

/**
 * The broker returned a mandatory publish: no queue is bound for its routing key on the exchange
 * (through the default exchange `''`, the routing key is a queue name that does not exist). The
 * message was not delivered; another attempt succeeds once the queue and its binding exist.
 */
export class UnroutableError extends DurableWorkerError {
  override readonly code = 'DW_UNROUTABLE';
  constructor(
    readonly exchange: string,
    readonly routingKey: string,
  ) {
    super(
      exchange === ''
        ? `queue ${routingKey} does not exist on the broker (start the worker or run \`dw migrate\` first)`
        : `no queue bound for routing key ${routingKey} on exchange ${exchange}, so the message was returned, not delivered (start the app that handles ${routingKey}, or run \`dw migrate\` for it, or bind a queue to the exchange with that routing key)`,
    );
  }
}

/** A CLI argument or option is wrong; the CLI prints the message alone and exits 1. */
export class UsageError extends DurableWorkerError {
  override readonly code = 'DW_USAGE';
  override readonly retryable = false;
}

export function describeCause(cause: unknown): string {
  if (cause instanceof AggregateError && cause.errors.length > 0) return describeCause(cause.errors[0]);
  if (cause instanceof Error) {
    const code = (cause as { code?: unknown }).code;
    return typeof code === 'string' && !cause.message.includes(code)
      ? `${code} ${cause.message}`
      : cause.message;
  }
  return String(cause);
}

export function isRetryable(error: unknown): boolean {
  if (error instanceof DurableWorkerError) return error.retryable;
  return true;
}

/** Serialisable form kept in dead letters, saga rows and step logs. */
export interface ErrorInfo {
  message: string;
  name?: string;
  code?: string;
  stack?: string;
}

export function toErrorInfo(error: unknown): ErrorInfo {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return {
      message: error.message,
      name: error.name,
      ...(typeof code === 'string' ? { code } : {}),
      ...(error.stack ? { stack: error.stack } : {}),
    };
  }
  return { message: String(error) };
}
