import type { Knex } from 'knex';
import type { Config } from '../shared/config.js';
import { type Logger, silentLogger } from '../shared/logger.js';

/** Everything a relay can be told; defaults are resolved once by `resolveRelayOptions`. */
export interface RelayOptions {
  config: Pick<Config, 'databaseUrl' | 'amqpUrl' | 'redisUrl' | 'bullmqPrefix'>;
  /** Outbox rows claimed per transaction. Default 500. */
  batchSize?: number;
  /** Claim loops run side by side (one claims or commits while another waits on Redis). Default 4. */
  concurrency?: number;
  /** Polling fallback when no NOTIFY arrives, in ms. Default 1000. */
  pollIntervalMs?: number;
  /** BullMQ jobs kept after completion, so a late duplicate add is still recognised. Default 24 h / 100000 jobs. */
  keepCompleted?: { age: number; count: number };
  /** On shutdown, how long a batch in flight may take to finish. Default 10000 ms. */
  shutdownGraceMs?: number;
  /** Use this knex instead of opening a pool (the caller closes it). */
  knex?: Knex;
  logger?: Logger;
}

export type ResolvedRelayOptions = Required<Omit<RelayOptions, 'knex'>> & { knex: Knex | undefined };

export function resolveRelayOptions(options: RelayOptions): ResolvedRelayOptions {
  const batchSize = options.batchSize ?? 500;
  if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > 10_000) {
    throw new RangeError('batchSize must be a whole number from 1 to 10000');
  }
  const concurrency = options.concurrency ?? 4;
  if (!Number.isInteger(concurrency) || concurrency < 1)
    throw new RangeError('concurrency must be at least 1');
  return {
    config: options.config,
    batchSize,
    concurrency,
    pollIntervalMs: options.pollIntervalMs ?? 1000,
    keepCompleted: options.keepCompleted ?? { age: 24 * 3600, count: 100_000 },
    shutdownGraceMs: options.shutdownGraceMs ?? 10_000,
    knex: options.knex,
    logger: options.logger ?? silentLogger,
  };
}
