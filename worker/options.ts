import type { Knex } from 'knex';
import type { App } from '../shared/app.js';
import type { Config } from '../shared/config.js';
import {
  workerDefaults as d,
  defaultPoolMax,
  defaultPrefetch,
  queueDefaults,
  workQueueName,
} from '../shared/defaults.js';
import { InvalidOptionError } from '../shared/errors.js';
import { type Logger, silentLogger } from '../shared/logger.js';
import { countOption, durationOption } from '../shared/options.js';
import { type QueueType, queueTypes } from '../shared/queue-type.js';
import type { RedisConfig } from '../shared/redis.js';

/**
 * Everything a worker can be told; each field's default (shared/defaults.ts) is resolved once by
 * `resolveWorkerOptions`, which refuses a value the worker cannot use with an InvalidOptionError.
 */
export interface WorkerOptions {
  app: App;
  /** Connection URLs, exchange and BullMQ prefix (docs/contracts.md, "Environment"). */
  config: Pick<
    Config,
    'databaseUrl' | 'amqpUrl' | 'exchange' | 'bullmqPrefix' | 'queueType' | 'orderedPartitions'
  > &
    RedisConfig;
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
   * RabbitMQ type of the work queue and its retry queues: 'quorum' or 'classic'. A queue that
   * exists with another type is refused with QueueTypeMismatchError. Unset (here and in
   * `config.queueType`, DW_QUEUE_TYPE): an existing queue keeps its type, a new one is quorum.
   * @defaultValue config.queueType, else the existing queue's type, else 'quorum'
   */
  queueType?: QueueType;
  /**
   * Partition queues of keyed messages (`<queue>.ordered.<i>`, README "Ordered processing by key");
   * 0 to 256, 0 turns ordered keys off (no plugin needed then). Every worker of the queue must use
   * the same count: changing it moves keys between partitions (see the README before changing it).
   * @defaultValue 8 (or DW_ORDERED_PARTITIONS, `config.orderedPartitions`, when set)
   */
  orderedPartitions?: number;
  /**
   * Largest message body accepted, in bytes; larger ones are dead-lettered.
   * @defaultValue 1048576 (1 MiB)
   */
  maxMessageBytes?: number;
  /**
   * Redeliveries that may start handling and die (the process was killed) before a message counts
   * as poison; the first delivery is not counted (it costs no write). Also bounds how many times in
   * a row one message may fail unexpectedly outside its handler before it is dead-lettered. On a
   * quorum queue the broker counts (`x-delivery-count`): every delivery that went back to the queue
   * unacked counts, so a prefetched message of a killed worker counts too (and, before RabbitMQ
   * 4.3, a requeue at shutdown); at most the quorum delivery limit (100) minus 10.
   * @defaultValue 5
   */
  maxDeliveries?: number;
  /**
   * On shutdown, how long started messages and steps may take to finish, in ms.
   * @defaultValue 30000
   */
  shutdownGraceMs?: number;
  /**
   * Saga step transactions run at once by this process; each holds a batch of up to
   * sagaBatchSize steps (one step when that is 1).
   * @defaultValue 10
   */
  sagaConcurrency?: number;
  /**
   * Saga steps of different sagas (ready at the same time: eager ones, BullMQ jobs) run in one
   * transaction, each under its own savepoint, up to this many; a step that fails rolls back
   * alone and runs again in its own transaction, as with 1. A batch takes what is ready: at light
   * load it is one step, never waiting to fill. 1 runs each step in its own transaction. 1 to 1000.
   * @defaultValue 10
   */
  sagaBatchSize?: number;
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

export type ResolvedWorkerOptions = Required<Omit<WorkerOptions, 'knex' | 'queueType'>> & {
  knex: Knex | undefined;
  /** Undefined: resolved against the broker at start (resolveQueueType). */
  queueType: QueueType | undefined;
};

/**
 * Redeliveries past `maxDeliveries` that a quorum queue still allows before its delivery limit:
 * room for the guard's own dead-lettering to be interrupted (shutdown, crash) and tried again.
 */
const maxDeliveriesMargin = 10;

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
    orderedPartitions: countOption(
      'orderedPartitions',
      options.orderedPartitions,
      options.config.orderedPartitions ?? d.orderedPartitions,
      {
        min: 0,
        max: d.maxOrderedPartitions,
      },
    ),
    maxMessageBytes: countOption('maxMessageBytes', options.maxMessageBytes, d.maxMessageBytes),
    maxDeliveries: countOption('maxDeliveries', options.maxDeliveries, d.maxDeliveries, {
      max: queueDefaults.quorumDeliveryLimit - maxDeliveriesMargin,
    }),
    queueType: queueTypeOption(options.queueType ?? options.config.queueType),
    shutdownGraceMs: durationOption('shutdownGraceMs', options.shutdownGraceMs, d.shutdownGraceMs, timer),
    sagaConcurrency,
    sagaBatchSize: countOption('sagaBatchSize', options.sagaBatchSize, d.sagaBatchSize, {
      max: d.maxSagaBatchSize,
    }),
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

function queueTypeOption(value: unknown): QueueType | undefined {
  if (value === undefined || queueTypes.includes(value as QueueType)) return value as QueueType | undefined;
  throw new InvalidOptionError('queueType', "'quorum' or 'classic'", value);
}
