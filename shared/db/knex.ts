import knexFactory, { type Knex } from 'knex';
import pg from 'pg';
import { redactUrl } from '../config.js';
import { ServiceUnavailableError } from '../errors.js';
import { type Logger, silentLogger } from '../logger.js';

export type { Knex };
export type Transaction = Knex.Transaction;

// bigint (int8) columns come back as strings by default; our ids and counts fit in a JS number.
pg.types.setTypeParser(pg.types.builtins.INT8, (value: string) => Number.parseInt(value, 10));

export interface DatabaseOptions {
  /** Largest number of pooled connections. Default 10. */
  poolMax?: number;
  /** Name shown in pg_stat_activity, so operators (and tests) can tell our sessions apart. */
  applicationName?: string;
  /** Where knex's own warnings go (it would print them to stdout, between our JSON log lines). */
  logger?: Logger;
}

export function createKnex(databaseUrl: string, options: DatabaseOptions = {}): Knex {
  const log = options.logger ?? silentLogger;
  return knexFactory({
    client: 'pg',
    connection: {
      connectionString: databaseUrl,
      application_name: options.applicationName ?? 'durable-worker',
    },
    pool: { min: 0, max: options.poolMax ?? 10, idleTimeoutMillis: 30_000 },
    acquireConnectionTimeout: 30_000,
    log: {
      // A dropped pooled connection is expected during outages; the callers log the outage once.
      warn: (message: unknown) => log.debug({ knex: String(message) }, 'knex warning'),
      error: (message: unknown) => log.error({ knex: String(message) }, 'knex error'),
      deprecate: (message: unknown) => log.debug({ knex: String(message) }, 'knex deprecation'),
      debug: () => {},
    },
  });
}

/** True when the database answers a trivial query (for `/healthz`). */
export function databaseHealthy(knex: Knex): Promise<boolean> {
  return knex
    .raw('select 1')
    .then(() => true)
    .catch(() => false);
}

/** Fails with a message naming PostgreSQL and its URL when the database cannot be reached. */
export async function assertDatabaseReachable(knex: Knex, databaseUrl: string): Promise<void> {
  try {
    await knex.raw('select 1');
  } catch (error) {
    throw new ServiceUnavailableError('PostgreSQL', redactUrl(databaseUrl), error);
  }
}
