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

/** waitUntil gave up: what it waited for did not happen within `timeoutMs`. */
export class WaitTimeoutError extends DurableWorkerError {
  override readonly code = 'DW_WAIT_TIMEOUT';
  constructor(
    readonly what: string,
    readonly timeoutMs: number,
    readonly last: unknown,
  ) {
    super(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${String(last)})`);
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
 * A message whose redeliveries kept dying mid-handling (the process was killed, ran out of memory,
 * crashed natively) is set aside instead of killing workers forever. Only deliveries that started
 * handling count; the first delivery is not counted (it costs no write).
 */
export class PoisonMessageError extends DurableWorkerError {
  override readonly code = 'DW_POISON_MESSAGE';
  override readonly retryable = false;
  constructor(
    readonly died: number,
    readonly limit: number,
  ) {
    super(
      `poison message: ${died} redeliveries started handling and never finished (the worker process died each time; limit ${limit}, WorkerOptions.maxDeliveries). Find what kills the worker in its handler (memory, a native crash, process.exit), then replay it with dw dlq replay`,
    );
  }
}

/**
 * Processing a message failed outside the handler's retry machinery (storing it failed, a bug)
 * on `failures` deliveries in a row: it is set aside rather than redelivered forever.
 */
export class RepeatedFailureError extends DurableWorkerError {
  override readonly code = 'DW_REPEATED_FAILURE';
  override readonly retryable = false;
  constructor(
    readonly failures: number,
    cause: unknown,
  ) {
    super(
      `processing failed unexpectedly on ${failures} deliveries in a row (limit WorkerOptions.maxDeliveries): ${describeCause(cause)}. Look at the worker's error log for the stack, fix the cause, then replay it with dw dlq replay`,
      { cause },
    );
  }
}

/**
 * The work queue (or a retry queue) exists with another type than the one to declare: RabbitMQ
 * cannot change a queue's type in place, and refuses the declaration (406 PRECONDITION_FAILED).
 */
export class QueueTypeMismatchError extends DurableWorkerError {
  override readonly code = 'DW_QUEUE_TYPE_MISMATCH';
  override readonly retryable = false;
  constructor(
    readonly queue: string,
    readonly existing: string,
    readonly wanted: string,
    explicit = true,
    cause?: unknown,
  ) {
    const keep =
      existing === 'quorum' || existing === 'classic'
        ? `set DW_QUEUE_TYPE=${existing} (dw worker --queue-type ${existing}) to keep it`
        : 'durable-worker only uses quorum and classic queues: delete it or use another queue name';
    super(
      `queue ${queue} exists as a ${existing} queue, but ${explicit ? `DW_QUEUE_TYPE (or --queue-type / WorkerOptions.queueType) asks for a ${wanted} queue` : `a ${wanted} queue is needed`}, and RabbitMQ cannot change the type of a queue. Either ${keep}, or migrate it to ${wanted}: stop the workers, let the queue drain, delete it (and its .retry.* queues) and start the workers with DW_QUEUE_TYPE=${wanted}; or move to a new queue name (blue-green, or a shovel from the old queue). See the README, "Queue types"`,
      { cause },
    );
  }
}

/** A saga did not complete within its `deadlineMs`: it is compensated; recorded as its last error. */
export class SagaDeadlineError extends DurableWorkerError {
  override readonly code = 'DW_SAGA_DEADLINE';
  override readonly retryable = false;
  constructor(
    readonly saga: string,
    readonly deadlineMs: number | undefined,
  ) {
    super(`saga ${saga} did not complete within its deadline of ${deadlineMs} ms`);
  }
}

/**
 * A saga version's stages differ from what the database recorded for that version when a worker
 * first ran it: in-flight instances were planned on the recorded stages, so the worker refuses to
 * start instead of re-planning them on the new ones.
 */
export class SagaDefinitionChangedError extends DurableWorkerError {
  override readonly code = 'DW_SAGA_DEFINITION_CHANGED';
  override readonly retryable = false;
  constructor(
    readonly saga: string,
    readonly version: number,
    readonly changes: readonly string[],
    firstSeen: Date,
  ) {
    super(
      `saga ${saga} version ${version} has different stages than the ones recorded for it on ${firstSeen.toISOString()}: ${changes.join('; ')}. Give the changed definition a new version (defineSaga('${saga}', { version: ${version + 1} })) and keep version ${version} in defineApp({ sagas }) while its instances are in flight, or undo the change`,
    );
  }
}

/** The database lacks durable-worker's (or the app's) migrations: a worker, relay or CLI refuses to start. */
export class NotMigratedError extends DurableWorkerError {
  override readonly code = 'DW_NOT_MIGRATED';
  override readonly retryable = false;
  constructor(readonly missing: readonly string[]) {
    super(
      `the database is missing migrations (${missing.join(', ')}): run \`dw migrate\` first (Procfile: release)`,
    );
  }
}

/** A Worker or Relay option has a value it cannot use; `option` names it, `allowed` says what it takes. */
export class InvalidOptionError extends DurableWorkerError {
  override readonly code = 'DW_INVALID_OPTION';
  override readonly retryable = false;
  constructor(
    readonly option: string,
    readonly allowed: string,
    readonly value: unknown,
  ) {
    super(`option ${option} must be ${allowed}; got ${describeValue(value)}`);
  }
}

/** No saga has the id asked for (`dw sagas show`). */
export class SagaNotFoundError extends DurableWorkerError {
  override readonly code = 'DW_SAGA_NOT_FOUND';
  override readonly retryable = false;
}

/** A publish was asked of a connection that is closing (the process is stopping); nothing was sent. */
export class ConnectionClosingError extends DurableWorkerError {
  override readonly code = 'DW_CONNECTION_CLOSING';
}

/**
 * The broker did not confirm a publish: it refused it (nack) or the channel closed first. The
 * message may or may not have arrived, so the sender keeps its copy and tries again.
 */
export class PublishNotConfirmedError extends DurableWorkerError {
  override readonly code = 'DW_PUBLISH_NOT_CONFIRMED';
}

/**
 * `ctx.send` was given a destination no queue can have (BullMQ refuses an empty queue name and ':',
 * its key separator). Retrying cannot help: the handler has to send somewhere else.
 */
export class InvalidDestinationError extends DurableWorkerError {
  override readonly code = 'DW_INVALID_DESTINATION';
  override readonly retryable = false;
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

/**
 * Ordered processing by key needs RabbitMQ's consistent-hash exchange, a plugin that ships with
 * RabbitMQ but is off by default. Raised when declaring the ordered topology finds it missing.
 */
export class OrderingPluginMissingError extends DurableWorkerError {
  override readonly code = 'DW_ORDERING_PLUGIN_MISSING';
  override readonly retryable = false;
  constructor(cause?: unknown) {
    super(
      'ordered processing by key needs the RabbitMQ plugin rabbitmq_consistent_hash_exchange, which is not enabled on this broker: run `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange` on every node (docker-compose.yml enables it), or turn ordered keys off with --ordered-partitions 0 (DW_ORDERED_PARTITIONS=0)',
      { cause },
    );
  }
}

/**
 * The work queue has partition queues beyond the configured count: they were declared with more
 * partitions, and messages there would wait for ever. Changing the count moves keys between partitions.
 */
export class OrderedPartitionsChangedError extends DurableWorkerError {
  override readonly code = 'DW_ORDERED_PARTITIONS_CHANGED';
  override readonly retryable = false;
  constructor(
    readonly queue: string,
    readonly partitions: number,
  ) {
    super(
      `queue ${queue}.ordered.${partitions} exists, so ${queue} was set up with more than ${partitions} ordered partitions: start the workers with the partition count used before, or change it as the README says (stop publishing keyed messages, let the partition queues drain, stop every worker, delete the exchange ${queue}.ordered and the queues ${queue}.ordered.<i>, then start the workers with the new count)`,
    );
  }
}

/** An ordering key that cannot be used (empty, too long, not text); refused where it is given. */
export class InvalidOrderingKeyError extends DurableWorkerError {
  override readonly code = 'DW_INVALID_ORDERING_KEY';
  override readonly retryable = false;
}

/** A CLI argument or option is wrong; the CLI prints the message alone and exits 1. */
export class UsageError extends DurableWorkerError {
  override readonly code = 'DW_USAGE';
  override readonly retryable = false;
}

function describeValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (typeof value === 'number' || typeof value === 'boolean' || value === null) return String(value);
  return typeof value;
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

/** `stack: false` leaves the stack out where it says nothing (a deadline, a verdict of the runner). */
export function toErrorInfo(error: unknown, { stack = true }: { stack?: boolean } = {}): ErrorInfo {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return {
      message: error.message,
      name: error.name,
      ...(typeof code === 'string' ? { code } : {}),
      ...(stack && error.stack ? { stack: error.stack } : {}),
    };
  }
  return { message: String(error) };
}

/**
 * Redis kept losing its data (restarting, being flushed or failing over) while the relay added a
 * batch's jobs; the batch rolls back and is delivered again.
 */
export class RedisUnstableError extends DurableWorkerError {
  override readonly code = 'DW_REDIS_UNSTABLE';
  constructor(attempts: number) {
    super(
      `Redis lost its data ${attempts} times while a relay batch was being added (restarts, FLUSHDB or failovers); the batch will be delivered again. Check that Redis is stable and persists its data (appendonly yes).`,
    );
  }
}

/**
 * REDIS_MODE=cluster with a BULLMQ_PREFIX that has no hash tag: BullMQ's Lua scripts read and write
 * several keys of a queue in one call, which a Redis Cluster refuses (CROSSSLOT) unless they all
 * hash to one slot.
 */
export class RedisClusterPrefixError extends DurableWorkerError {
  override readonly code = 'DW_REDIS_CLUSTER_PREFIX';
  override readonly retryable = false;
  constructor(readonly prefix: string) {
    super(
      `BULLMQ_PREFIX "${prefix}" has no hash tag, which REDIS_MODE=cluster needs: BullMQ's Lua scripts use several keys of a queue at once, and a Redis Cluster runs them only when all the keys hash to one slot. Put the prefix in braces, e.g. BULLMQ_PREFIX={${prefix.replace(/[{}]/g, '') || 'dw'}} (a new prefix starts with empty queues: drain the old one first).`,
    );
  }
}
