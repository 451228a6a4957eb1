/**
 * Every default of durable-worker, defined once. The options types repeat each value in their
 * `@defaultValue` tags (a unit test keeps the two in step), `resolveWorkerOptions` and
 * `resolveRelayOptions` apply them, and the CLI help prints them through commander's `.default()`.
 */

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** Longest delay Node's timers accept; a longer one fires at once, turning a pause into a busy loop. */
export const MAX_TIMER_MS = 2_147_483_647;

export const workerDefaults = {
  concurrency: 10,
  /**
   * Deliveries at hand handled in one transaction (one inbox insert, one outbox insert, one commit);
   * a batch never waits to fill, so at light load it is one message.
   */
  batchSize: 20,
  /** The largest batchSize: its inbox insert binds 2 values per message, its outbox 9 per row. */
  maxBatchSize: 1000,
  /**
   * prefetch = this × concurrency × batchSize: the next messages are on hand when a handler
   * finishes, and enough are at hand for every handler slot to take a whole batch.
   */
  prefetchPerConcurrency: 2,
  /** AMQP carries the prefetch count in 16 bits. */
  maxPrefetch: 65_535,
  maxMessageBytes: 1024 * 1024,
  maxDeliveries: 5,
  shutdownGraceMs: 30 * SECOND,
  sagaConcurrency: 10,
  /** Saga steps of different sagas run in one transaction (1: each in its own). */
  sagaBatchSize: 10,
  maxSagaBatchSize: 1000,
  sagaSweepIntervalMs: 30 * SECOND,
  sagaStaleAfterMs: MINUTE,
  sagaEagerLeaseMs: 10 * SECOND,
  housekeepingIntervalMs: MINUTE,
  outboxRetentionMs: HOUR,
  dedupWindowMs: 7 * DAY,
  /** Connections beyond the handlers and saga steps (housekeeping, sweep, eager releases). */
  poolMaxSpare: 4,
  /** Partition queues of ordered (keyed) messages per work queue; 0 turns ordered keys off. */
  orderedPartitions: 8,
  maxOrderedPartitions: 256,
} as const;

/** Longest ordering key, in UTF-8 bytes: it travels in an AMQP header, which must fit in one frame. */
export const maxOrderingKeyBytes = 1024;

/** Unacknowledged messages RabbitMQ may push ahead of `concurrency` handlers taking `batchSize` each. */
export function defaultPrefetch(concurrency: number, batchSize = 1): number {
  return Math.min(
    workerDefaults.maxPrefetch,
    workerDefaults.prefetchPerConcurrency * concurrency * batchSize,
  );
}

/** One connection per handler, two per saga step (its BullMQ job and an eager step), and spares. */
export function defaultPoolMax(concurrency: number, sagaConcurrency: number): number {
  return concurrency + 2 * sagaConcurrency + workerDefaults.poolMaxSpare;
}

export const relayDefaults = {
  batchSize: 500,
  maxBatchSize: 10_000,
  concurrency: 4,
  pollIntervalMs: SECOND,
  /** Seconds and count, as BullMQ's removeOnComplete takes them. */
  keepCompleted: { age: DAY / SECOND, count: 100_000 },
  /** Seconds a failed BullMQ job is kept for inspection. */
  keepFailedAgeSeconds: (7 * DAY) / SECOND,
  shutdownGraceMs: 10 * SECOND,
} as const;

/** Redis connections (shared/redis.ts) and their settings (shared/config.ts). */
export const redisDefaults = {
  mode: 'single',
  url: 'redis://127.0.0.1:6379',
  /** BULLMQ_PREFIX unless told otherwise. */
  bullmqPrefix: 'bull',
  /** BULLMQ_PREFIX in cluster mode unless told otherwise: BullMQ's keys need one hash tag there. */
  clusterBullmqPrefix: '{bull}',
  /** How long `dw status` and the start-up checks wait for Redis to answer. */
  probeTimeoutMs: 5 * SECOND,
} as const;

/** RabbitMQ queues (shared/queue-type.ts). */
export const queueDefaults = {
  /** For a new installation; an existing queue keeps its type when DW_QUEUE_TYPE is not set. */
  queueType: 'quorum',
  /**
   * `x-delivery-limit` of quorum queues: fixed (RabbitMQ refuses to redeclare a queue with
   * another value), and far above `maxDeliveries` so the crash-loop guard dead-letters first.
   */
  quorumDeliveryLimit: 100,
} as const;

/** Message retries (shared/retry-policy.ts): attempts in all = 1 + immediateRetries + delayed.count. */
export const retryPolicyDefaults = {
  immediateRetries: 2,
  delayed: { count: 3, initialMs: SECOND, factor: 2, maxMs: 5 * MINUTE, jitter: 0.1 },
} as const;

/** Saga step and compensation retries (shared/saga/definition.ts). */
export const stepRetryDefaults = {
  attempts: 3,
  backoffMs: 100,
  maxBackoffMs: 30 * SECOND,
  jitter: 0.2,
} as const;

export const housekeepingDefaults = {
  /** Rows per delete statement: small, so no delete holds locks or bloats WAL for long. */
  batchSize: 1000,
  deliveryCountRetentionMs: DAY,
} as const;

/** Stalled sagas the recovery sweep looks at per pass. */
export const sagaSweepBatchSize = 200;

export const cliDefaults = {
  /** Rows `dw dlq list` and `dw sagas list` print unless told `--limit`. */
  listLimit: 50,
  maxListLimit: 100_000,
} as const;

/** The BullMQ queue of saga work (under BULLMQ_PREFIX), shared by every saga of the app. */
export const sagaQueueName = 'dw-sagas';

/** An app's work queue on RabbitMQ, unless the worker is told another. */
export function workQueueName(exchange: string, appName: string): string {
  return `${exchange}.${appName}`;
}

/** The retry queue of one delay tier of `workQueue`. */
export function retryQueueName(workQueue: string, tierMs: number): string {
  return `${workQueue}.retry.${tierMs}ms`;
}

const UNITS: ReadonlyArray<readonly [string, number]> = [
  ['d', DAY],
  ['h', HOUR],
  ['m', MINUTE],
  ['s', SECOND],
];

/** `604800000` → `7d`: the largest unit that divides it, in the form the CLI's duration options read. */
export function formatDuration(ms: number): string {
  for (const [unit, size] of UNITS) if (ms > 0 && ms % size === 0) return `${ms / size}${unit}`;
  return `${ms}ms`;
}
