import type { Knex } from 'knex';
import { type Config, loadConfig } from '../config.js';
import { assertDatabaseReachable, createKnex } from '../db/knex.js';

/** The validated configuration; a ConfigError (one line per problem) otherwise. */
export function config(): Config {
  return loadConfig();
}

/** Runs `fn` with a small pool on DATABASE_URL, closing it afterwards. */
export async function withDatabase<T>(cfg: Config, fn: (knex: Knex) => Promise<T>): Promise<T> {
  const knex = createKnex(cfg.databaseUrl, { poolMax: 2, applicationName: 'dw-cli' });
  try {
    await assertDatabaseReachable(knex, cfg.databaseUrl);
    return await fn(knex);
  } finally {
    await knex.destroy();
  }
}
