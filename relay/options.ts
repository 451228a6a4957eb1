import type { Knex } from 'knex';
import type { Config } from '../shared/config.js';
import { relayDefaults as d } from '../shared/defaults.js';
import { InvalidOptionError } from '../shared/errors.js';
import { type Logger, silentLogger } from '../shared/logger.js';
import { countOption, durationOption } from '../shared/options.js';
import type { RedisConfig } from '../shared/redis.js';

/**
 * Everything a relay can be told; defaults (shared/defaults.ts) are resolved once by
 * `resolveRelayOptions`, which refuses a value the relay cannot use with an InvalidOptionError.
 */
export interface RelayOptions {
  config: Pick<Config, 'databaseUrl' | 'amqpUrl' | 'bullmqPrefix'> & RedisConfig;
  /**
   * Outbox rows claimed per transaction; 1 to 10000.
   * @defaultValue 500
   */
  batchSize?: number;
  /**
   * Claim loops run side by side (one claims or commits while another waits on Redis).
   * @defaultValue 4
   */
  concurrency?: number;
  /**
   * Polling fallback when no NOTIFY arrives, in ms (at least 1).
   * @defaultValue 1000
   */
  pollIntervalMs?: number;
  /**
   * BullMQ jobs kept after completion (age in seconds, count), so a late duplicate add is still recognised.
   * @defaultValue `{ age: 86400, count: 100000 }` (24 h / 100000 jobs)
   */
  keepCompleted?: { age: number; count: number };
  /**
   * On shutdown, how long a batch in flight may take to finish, in ms.
   * @defaultValue 10000
   */
  shutdownGraceMs?: number;
  /** Use this knex instead of opening a pool (the caller closes it). */
  knex?: Knex;
  /** @defaultValue a logger that discards everything */
  logger?: Logger;
}

export type ResolvedRelayOptions = Required<Omit<RelayOptions, 'knex'>> & { knex: Knex | undefined };

export function resolveRelayOptions(options: RelayOptions): ResolvedRelayOptions {
  return {
    config: options.config,
    batchSize: countOption('batchSize', options.batchSize, d.batchSize, { max: d.maxBatchSize }),
    concurrency: countOption('concurrency', options.concurrency, d.concurrency),
    pollIntervalMs: durationOption('pollIntervalMs', options.pollIntervalMs, d.pollIntervalMs, {
      min: 1,
      timer: true,
    }),
    keepCompleted: keepCompletedOption(options.keepCompleted),
    shutdownGraceMs: durationOption('shutdownGraceMs', options.shutdownGraceMs, d.shutdownGraceMs, {
      timer: true,
    }),
    knex: options.knex,
    logger: options.logger ?? silentLogger,
  };
}

function keepCompletedOption(value: RelayOptions['keepCompleted']): { age: number; count: number } {
  if (value === undefined) return { ...d.keepCompleted };
  if (typeof value !== 'object' || value === null) {
    throw new InvalidOptionError('keepCompleted', 'an object { age: seconds, count: jobs }', value);
  }
  return {
    age: countOption('keepCompleted.age', value.age, d.keepCompleted.age, { min: 0 }),
    count: countOption('keepCompleted.count', value.count, d.keepCompleted.count, { min: 0 }),
  };
}
