import type { Knex } from 'knex';
import type { App } from '../shared/app.js';
import type { Config } from '../shared/config.js';
import { type Logger, silentLogger } from '../shared/logger.js';

/** Everything a worker can be told; each field's default is resolved once by `resolveWorkerOptions`. */
export interface WorkerOptions {
  app: App;
  /** Connection URLs, exchange and BullMQ prefix (docs/contracts.md, "Environment"). */
  config: Pick<Config, 'databaseUrl' | 'amqpUrl' | 'redisUrl' | 'exchange' | 'bullmqPrefix'>;
  /** Messages handled at once. Default 10. */
  concurrency?: number;
  /** Unacknowledged messages RabbitMQ may push ahead of the handlers. Default 2 × concurrency. */
  prefetch?: number;
  /** Work queue name. Default `<exchange>.<app name>`. */
  queue?: string;
  /** Largest message body accepted; larger ones are dead-lettered. Default 1 MiB. */
  maxMessageBytes?: number;
  /**
   * Redeliveries that may start handling and die (the process was killed) before a message counts
   * as poison; the first delivery is not counted (it costs no write). Also bounds how many times in
   * a row one message may fail unexpectedly outside its handler before it is dead-lettered.
   * @defaultValue 5
   */
  maxDeliveries?: number;
  /** On shutdown, how long started messages and steps may take to finish. Default 30000 ms. */
  shutdownGraceMs?: number;
  /** Saga steps run at once by this process. Default 10. */
  sagaConcurrency?: number;
  /** How often the recovery sweep looks for stalled sagas. Default 30000 ms; 0 turns it off. */
  sagaSweepIntervalMs?: number;
  /** A running saga untouched for this long is checked by the sweep. Default 60000 ms. */
  sagaStaleAfterMs?: number;
  /**
   * Run a saga's next steps in this process right after a step (or the handler that started the
   * saga) commits, holding their outbox rows back from the relay for this long; if the process dies
   * first, the relay delivers them when the lease ends. Default 10000 ms; 0 leaves every step to the
   * relay and BullMQ.
   */
  sagaEagerLeaseMs?: number;
  /** How often housekeeping prunes the inbox and the delivered outbox. Default 60000 ms; 0 turns it off. */
  housekeepingIntervalMs?: number;
  /**
   * How long delivered outbox rows are kept. They are what a relay delivers again when Redis lost
   * its data, so this bounds that recovery. Default 1 hour.
   */
  outboxRetentionMs?: number;
  /** How long inbox rows are kept to detect duplicates. Default 7 days. */
  dedupWindowMs?: number;
  /** Postgres pool size. Default concurrency + 2 × sagaConcurrency (BullMQ and eager steps) + 4. */
  poolMax?: number;
  /** Use this knex instead of opening a pool (the caller closes it). */
  knex?: Knex;
  logger?: Logger;
}

export type ResolvedWorkerOptions = Required<Omit<WorkerOptions, 'knex'>> & { knex: Knex | undefined };

export function resolveWorkerOptions(options: WorkerOptions): ResolvedWorkerOptions {
  const concurrency = positive(options.concurrency, 10, 'concurrency');
  const sagaConcurrency = positive(options.sagaConcurrency, 10, 'sagaConcurrency');
  return {
    app: options.app,
    config: options.config,
    concurrency,
    prefetch: positive(options.prefetch, concurrency * 2, 'prefetch'),
    queue: options.queue ?? `${options.config.exchange}.${options.app.name}`,
    maxMessageBytes: positive(options.maxMessageBytes, 1024 * 1024, 'maxMessageBytes'),
    maxDeliveries: positive(options.maxDeliveries, 5, 'maxDeliveries'),
    shutdownGraceMs: options.shutdownGraceMs ?? 30_000,
    sagaConcurrency,
    sagaSweepIntervalMs: options.sagaSweepIntervalMs ?? 30_000,
    sagaStaleAfterMs: options.sagaStaleAfterMs ?? 60_000,
    sagaEagerLeaseMs: options.sagaEagerLeaseMs ?? 10_000,
    housekeepingIntervalMs: options.housekeepingIntervalMs ?? 60_000,
    dedupWindowMs: options.dedupWindowMs ?? 7 * 24 * 3600 * 1000,
    outboxRetentionMs: options.outboxRetentionMs ?? 3600 * 1000,
    poolMax: positive(options.poolMax, concurrency + 2 * sagaConcurrency + 4, 'poolMax'),
    knex: options.knex,
    logger: options.logger ?? silentLogger,
  };
}

function positive(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < 1)
    throw new RangeError(`${name} must be a whole number of at least 1`);
  return value;
}
