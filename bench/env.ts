import { randomBytes } from 'node:crypto';
import amqp from 'amqplib';
import { Redis } from 'ioredis';
import type { Knex } from 'knex';
import pg from 'pg';
import { createKnex } from '../shared/db/knex.js';
import { migrate } from '../shared/db/migrate.js';
import { retryQueueName, workQueueName } from '../shared/defaults.js';
import { deliveryLimitQueueName, type QueueType } from '../shared/queue-type.js';
import { benchMigrations } from './app.js';

/** Where the services are; the same defaults as docs/contracts.md, "Environment". */
export interface BenchServices {
  /** Postgres server URL without a database. */
  postgres: string;
  amqpUrl: string;
  redisUrl: string;
}

export function servicesFromEnv(env: NodeJS.ProcessEnv = process.env): BenchServices {
  const database = new URL(env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/durable_worker');
  database.pathname = '';
  return {
    postgres: database.toString().replace(/\/$/, ''),
    amqpUrl: env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672',
    redisUrl: env.REDIS_URL || 'redis://127.0.0.1:6379',
  };
}

/** One benchmark run's names: its own databases, exchange and BullMQ prefixes, all removed at the end. */
export interface BenchEnv {
  services: BenchServices;
  id: string;
  databaseUrl: string;
  dbosDatabaseUrl: string;
  exchange: string;
  /** Prefix of every BullMQ prefix of this run (`<bullmqPrefix>-<part>`). */
  bullmqPrefix: string;
  knex: Knex;
  /** The work queue's type (`--queue-type`), declared by the bench and given to every child. */
  queueType: QueueType;
  /** The environment of a `dw worker` / `dw relay` child process of this run. */
  childEnv(extra?: Record<string, string>): NodeJS.ProcessEnv;
  teardown(): Promise<void>;
}

/** `DW_BENCH_DATABASE` names another pair of databases: two runs side by side on one server. */
export const BENCH_DATABASE = process.env.DW_BENCH_DATABASE || 'durable_worker_bench';
export const DBOS_DATABASE = `${BENCH_DATABASE}_dbos`;

export async function createBenchEnv(services: BenchServices, queueType: QueueType): Promise<BenchEnv> {
  const id = randomBytes(4).toString('hex');
  await recreateDatabase(services.postgres, BENCH_DATABASE);
  await recreateDatabase(services.postgres, DBOS_DATABASE);
  const databaseUrl = `${services.postgres}/${BENCH_DATABASE}`;
  const knex = createKnex(databaseUrl, { poolMax: 4, applicationName: 'dw-bench' });
  await migrate(knex, benchMigrations);
  const exchange = `bench.${id}`;
  const bullmqPrefix = `bench-${id}`;
  const appModule = new URL('./app.js', import.meta.url).pathname;
  return {
    services,
    id,
    databaseUrl,
    dbosDatabaseUrl: `${services.postgres}/${DBOS_DATABASE}`,
    exchange,
    bullmqPrefix,
    queueType,
    knex,
    childEnv: (extra = {}) => ({
      ...process.env,
      DATABASE_URL: databaseUrl,
      AMQP_URL: services.amqpUrl,
      REDIS_URL: services.redisUrl,
      DW_EXCHANGE: exchange,
      DW_APP: appModule,
      BULLMQ_PREFIX: bullmqPrefix,
      DW_QUEUE_TYPE: queueType,
      LOG_LEVEL: 'info',
      DW_HEALTH_PORT: '',
      ...extra,
    }),
    async teardown() {
      await knex.destroy();
      await dropDatabase(services.postgres, BENCH_DATABASE);
      await dropDatabase(services.postgres, DBOS_DATABASE);
      await deleteTopology(services.amqpUrl, exchange);
      await deleteRedisKeys(services.redisUrl, `${bullmqPrefix}*`);
    },
  };
}

async function withAdmin<T>(postgres: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: `${postgres}/postgres`, application_name: 'dw-bench' });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

async function recreateDatabase(postgres: string, database: string): Promise<void> {
  await withAdmin(postgres, async (client) => {
    // Identifiers cannot be bound; escapeIdentifier quotes the (constant) name.
    await client.query(`drop database if exists ${client.escapeIdentifier(database)} with (force)`);
    await client.query(`create database ${client.escapeIdentifier(database)}`);
  });
}

async function dropDatabase(postgres: string, database: string): Promise<void> {
  await withAdmin(postgres, (client) =>
    client.query(`drop database if exists ${client.escapeIdentifier(database)} with (force)`),
  );
}

/** The bench app's work queue, its retry tiers and the exchange. */
async function deleteTopology(amqpUrl: string, exchange: string): Promise<void> {
  const connection = await amqp.connect(amqpUrl);
  try {
    const channel = await connection.createChannel();
    channel.on('error', () => {});
    const queue = workQueueName(exchange, 'bench');
    for (const tier of [1, 10, 50, 100, 200, 1000, 2000, 4000, 10000, 60000]) {
      await channel.deleteQueue(retryQueueName(queue, tier)).catch(() => {});
    }
    await channel.deleteQueue(queue).catch(() => {});
    await channel.deleteQueue(deliveryLimitQueueName(queue)).catch(() => {});
    await channel.deleteExchange(exchange).catch(() => {});
    await channel.close().catch(() => {});
  } finally {
    await connection.close().catch(() => {});
  }
}

/**
 * Deletes the keys matching `pattern` (a BullMQ prefix's, `<prefix>:*`): the one Redis cleaner of the
 * bench and the tests.
 */
export async function deleteRedisKeys(redisUrl: string, pattern: string): Promise<void> {
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 3 });
  try {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 5000);
      cursor = next;
      if (keys.length) await redis.unlink(...keys);
    } while (cursor !== '0');
  } finally {
    redis.disconnect();
  }
}

/** Empties the tables a measurement fills, so that every repetition starts alike. */
export async function truncateRunTables(knex: Knex): Promise<void> {
  await knex.raw(
    'truncate dw_inbox, dw_outbox, dw_delivery_counts, dw_dead_letters, dw_sagas, dw_saga_steps, bench_items, bench_ledger',
  );
}
