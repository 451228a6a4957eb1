import type { Knex } from 'knex';
import type { App } from '../shared/app.js';
import type { Config } from '../shared/config.js';
import { workerDefaults as d, defaultPoolMax, defaultPrefetch, workQueueName } from '../shared/defaults.js';
import { InvalidOptionError } from '../shared/errors.js';
import { type Logger, silentLogger } from '../shared/logger.js';
import { countOption, durationOption } from '../shared/options.js';

/**
 * Everything a worker can be told; each field's default (shared/defaults.ts) is resolved once by
 * `resolveWorkerOptions`, which refuses a value the worker cannot use with an InvalidOptionError.
 */
export interface WorkerOptions {
  app: App;
  /** Connection URLs, exchange and BullMQ prefix (docs/contracts.md, "Environment"). */
  config: Pick<Config, 'databaseUrl' | 'amqpUrl' | 'redisUrl' | 'exchange' | 'bullmqPrefix'>;
  /**
   * Messages handled at once; a whole number ≥ 1.
   * @defaultValue 10
   */
  concurrency?: number;
  /**
   * Deliveries at hand (prefetched) handled together in one transaction: one inbox insert, each
   * message's handlers in order, one outbox insert, one commit, then the acks; 1 to 1000. A batch
   * never waits to fill (at light load it is one message). If a handler throws, the batch rolls back
   * and its messages are handled one by one, so only the failing one is retried or dead-lettered.
   * Redeliveries and invalid messages are always handled one by one. 1 turns batching off.
   * @defaultValue 20
   */
  batchSize?: number;
  /**
   * Unacknowledged messages RabbitMQ may push ahead of the handlers; 1 to 65535. The default keeps
   * a whole batch at hand for every handler slot when its current one ends; each of these messages
   * is held in memory, so lower it (or batchSize) for large bodies or many workers on one queue.
   * @defaultValue 2 × concurrency × batchSize (at most 65535)
   */
  prefetch?: number;
  /**
   * Work queue name.
   * @defaultValue `<exchange>.<app name>`
   */
  queue?: string;
  /**
   * Largest message body accepted, in bytes; larger ones are dead-lettered.
   * @defaultValue 1048576 (1 MiB)
   */
  maxMessageBytes?: number;
  /**
   * Redeliveries that may start handling and die (the process was killed) before a message counts
   * as poison; the first delivery is not counted (it costs no write). Also bounds how many times in
   * a row one message may fail unexpectedly outside its handler before it is dead-lettered.
   * @defaultValue 5
   */
  maxDeliveries?: number;
  /**
   * On shutdown, how long started messages and steps may take to finish, in ms.
   * @defaultValue 30000
   */
  shutdownGraceMs?: number;
  /**
   * Saga steps run at once by this process.
   * @defaultValue 10
   */
  sagaConcurrency?: number;
  /**
   * How often the recovery sweep looks for stalled sagas, in ms; 0 turns it off.
   * @defaultValue 30000
   */
  sagaSweepIntervalMs?: number;
  /**
   * A running saga untouched for this many ms is checked by the sweep.
   * @defaultValue 60000
   */
  sagaStaleAfterMs?: number;
  /**
   * Run a saga's next steps in this process right after a step (or the handler that started the
   * saga) commits, holding their outbox rows back from the relay for this many ms; if the process
   * dies first, the relay delivers them when the lease ends. 0 leaves every step to the relay and
   * BullMQ.
   * @defaultValue 10000
   */
  sagaEagerLeaseMs?: number;
  /**
   * How often housekeeping prunes the inbox and the delivered outbox, in ms; 0 turns it off.
   * @defaultValue 60000
   */
  housekeepingIntervalMs?: number;
  /**
   * How long delivered outbox rows are kept, in ms. They are what a relay delivers again when Redis
   * lost its data, so this bounds that recovery.
   * @defaultValue 3600000 (1 hour)
   */
  outboxRetentionMs?: number;
  /**
   * How long inbox rows are kept to detect duplicates, in ms.
   * @defaultValue 604800000 (7 days)
   */
  dedupWindowMs?: number;
  /**
   * Postgres pool size.
   * @defaultValue concurrency + 2 × sagaConcurrency (BullMQ and eager steps) + 4
   */
  poolMax?: number;
  /** Use this knex instead of opening a pool (the caller closes it). */
  knex?: Knex;
  /** @defaultValue a logger that discards everything */
  logger?: Logger;
}

export type ResolvedWorkerOptions = Required<Omit<WorkerOptions, 'knex'>> & { knex: Knex | undefined };

export function resolveWorkerOptions(options: WorkerOptions): ResolvedWorkerOptions {
  const concurrency = countOption('concurrency', options.concurrency, d.concurrency);
  const sagaConcurrency = countOption('sagaConcurrency', options.sagaConcurrency, d.sagaConcurrency);
  const batchSize = countOption('batchSize', options.batchSize, d.batchSize, { max: d.maxBatchSize });
  const timer = { timer: true };
  return {
    app: options.app,
    config: options.config,
    concurrency,
    batchSize,
    prefetch: countOption('prefetch', options.prefetch, defaultPrefetch(concurrency, batchSize), {
      max: d.maxPrefetch,
    }),
    queue: queueOption(options.queue, workQueueName(options.config.exchange, options.app.name)),
    maxMessageBytes: countOption('maxMessageBytes', options.maxMessageBytes, d.maxMessageBytes),
    maxDeliveries: countOption('maxDeliveries', options.maxDeliveries, d.maxDeliveries),
    shutdownGraceMs: durationOption('shutdownGraceMs', options.shutdownGraceMs, d.shutdownGraceMs, timer),
    sagaConcurrency,
    sagaSweepIntervalMs: durationOption(
      'sagaSweepIntervalMs',
      options.sagaSweepIntervalMs,
      d.sagaSweepIntervalMs,
      timer,
    ),
    sagaStaleAfterMs: durationOption('sagaStaleAfterMs', options.sagaStaleAfterMs, d.sagaStaleAfterMs),
    sagaEagerLeaseMs: durationOption('sagaEagerLeaseMs', options.sagaEagerLeaseMs, d.sagaEagerLeaseMs),
    housekeepingIntervalMs: durationOption(
      'housekeepingIntervalMs',
      options.housekeepingIntervalMs,
      d.housekeepingIntervalMs,
      timer,
    ),
    dedupWindowMs: durationOption('dedupWindowMs', options.dedupWindowMs, d.dedupWindowMs),
    outboxRetentionMs: durationOption('outboxRetentionMs', options.outboxRetentionMs, d.outboxRetentionMs),
    poolMax: countOption('poolMax', options.poolMax, defaultPoolMax(concurrency, sagaConcurrency)),
    knex: options.knex,
    logger: options.logger ?? silentLogger,
  };
}

/** RabbitMQ queue names are 1 to 255 bytes; `amq.` is reserved for the broker's own. */
function queueOption(value: unknown, fallback: string): string {
  if (value === undefined) return fallback;
  if (
    typeof value === 'string' &&
    value.length > 0 &&
    Buffer.byteLength(value) <= 255 &&
    !value.startsWith('amq.')
  )
    return value;
  throw new InvalidOptionError('queue', 'a queue name of 1 to 255 bytes not starting with "amq."', value);
}
