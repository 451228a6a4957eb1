import type { Knex } from 'knex';
import pg from 'pg';
import { redactUrl } from '../config.js';
import { NotMigratedError, ServiceUnavailableError } from '../errors.js';
import * as m001 from './migrations/001_inbox_outbox.js';
import * as m002 from './migrations/002_dead_letters.js';
import * as m003 from './migrations/003_sagas.js';
import * as m004 from './migrations/004_redis_delivery_seq.js';
import * as m005 from './migrations/005_saga_versions.js';
import * as m006 from './migrations/006_processes_dashboard_audit.js';
import * as m007 from './migrations/007_outbox_notify_available.js';

/** A migration as an app supplies it (`defineApp({ migrations })`): a unique name, `up` and optional `down`. */
export interface Migration {
  name: string;
  up(knex: Knex): Promise<void>;
  down?(knex: Knex): Promise<void>;
}

export const coreMigrations: readonly Migration[] = [m001, m002, m003, m004, m005, m006, m007];

/**
 * Static migration source: the migrations are imported modules, not files found at run time, so
 * they work the same from TypeScript sources (tests) and from the compiled build.
 */
class StaticMigrationSource implements Knex.MigrationSource<Migration> {
  constructor(private readonly migrations: readonly Migration[]) {}
  async getMigrations(): Promise<Migration[]> {
    return [...this.migrations];
  }
  getMigrationName(migration: Migration): string {
    return migration.name;
  }
  async getMigration(migration: Migration): Promise<Knex.Migration> {
    return { up: migration.up, down: migration.down ?? (async () => {}) };
  }
}

/** Applies core migrations, then the app's; returns the names applied now. */
export async function migrate(knex: Knex, appMigrations: readonly Migration[] = []): Promise<string[]> {
  const [, applied] = (await knex.migrate.latest({
    migrationSource: new StaticMigrationSource([...coreMigrations, ...appMigrations]),
    tableName: 'dw_migrations',
  })) as [number, string[]];
  return applied;
}

/** Creates the database named in the URL when it does not exist yet; true when it was created. */
export async function ensureDatabase(databaseUrl: string): Promise<boolean> {
  const target = new URL(databaseUrl);
  const database = decodeURIComponent(target.pathname.replace(/^\//, ''));
  if (!database) return false;
  const admin = new URL(databaseUrl);
  admin.pathname = '/postgres';
  const client = new pg.Client({ connectionString: admin.toString() });
  try {
    await client.connect();
  } catch (error) {
    throw new ServiceUnavailableError('PostgreSQL', redactUrl(databaseUrl), error);
  }
  try {
    const { rowCount } = await client.query('select 1 from pg_database where datname = $1', [database]);
    if (rowCount) return false;
    // Identifiers cannot be bound as parameters; escapeIdentifier quotes the name safely.
    await client.query(`create database ${client.escapeIdentifier(database)}`);
    return true;
  } catch (error) {
    // Another process created it between our check and our create.
    if ((error as { code?: string }).code === '42P04') return false;
    throw error;
  } finally {
    await client.end();
  }
}

/** Fails with a hint to run `dw migrate` when durable-worker's tables are missing or behind. */
export async function assertMigrated(knex: Knex, appMigrations: readonly Migration[] = []): Promise<void> {
  const expected = [...coreMigrations, ...appMigrations].map((m) => m.name);
  let applied: string[] = [];
  if (await knex.schema.hasTable('dw_migrations')) {
    applied = (await knex('dw_migrations').select('name')).map((r: { name: string }) => r.name);
  }
  const missing = expected.filter((name) => !applied.includes(name));
  if (missing.length > 0) throw new NotMigratedError(missing);
}
