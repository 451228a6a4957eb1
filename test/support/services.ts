import { randomBytes } from 'node:crypto';
import amqp from 'amqplib';
import type { Knex } from 'knex';
import pg from 'pg';
import { deleteRedisKeys } from '../../bench/env.js';
import type { Config } from '../../shared/config.js';
import { createKnex } from '../../shared/db/knex.js';
import { ensureDatabase, type Migration, migrate } from '../../shared/db/migrate.js';
import { retryQueueName, workerDefaults, workQueueName } from '../../shared/defaults.js';
import { orderedExchangeName, orderedHashExchangeName, partitionQueueName } from '../../shared/ordering.js';
import { deliveryLimitQueueName } from '../../shared/queue-type.js';

export const urls = {
  postgres: process.env.TEST_DATABASE_SERVER ?? 'postgres://postgres@127.0.0.1:5432',
  amqp: process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672',
  redis: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
};

export function randomName(prefix: string): string {
  return `${prefix}${randomBytes(5).toString('hex')}`;
}

export interface TestEnv {
  config: Config;
  knex: Knex;
  /** Drops the database, the exchange and queues, and the BullMQ keys of this file. */
  teardown(): Promise<void>;
}

/**
 * A fresh, migrated database and random exchange / BullMQ prefix for one test file, so that files
 * can run side by side against the same services.
 */
export async function createTestEnv(migrations: readonly Migration[] = []): Promise<TestEnv> {
  const id = randomName('');
  const database = `dw_test_${id}`;
  const databaseUrl = `${urls.postgres}/${database}`;
  await ensureDatabase(databaseUrl);
  const knex = createKnex(databaseUrl, { poolMax: 5, applicationName: 'dw-test' });
  await migrate(knex, migrations);
  const config: Config = {
    databaseUrl,
    amqpUrl: urls.amqp,
    redisUrl: urls.redis,
    exchange: `test.${id}`,
    app: '',
    bullmqPrefix: `test-${id}`,
    // Classic unless a test asks for quorum (quorum-queues, ordering of the scale-out chaos): a
    // refused redeclaration of a quorum queue (406) under the suite's parallel load hung RabbitMQ
    // 3.10.8 here twice (connections and rabbitmqctl stopped answering).
    queueType: 'classic',
    logLevel: 'silent',
    healthPort: undefined,
  };
  return {
    config,
    knex,
    async teardown() {
      await knex.destroy();
      await dropDatabase(database);
      await deleteAmqpTopology(config.exchange);
      await deleteRedisKeys(urls.redis, `${config.bullmqPrefix}:*`);
    },
  };
}

async function dropDatabase(database: string): Promise<void> {
  const client = new pg.Client({ connectionString: `${urls.postgres}/postgres` });
  await client.connect();
  try {
    await client.query(`drop database if exists ${client.escapeIdentifier(database)} with (force)`);
  } finally {
    await client.end();
  }
}

/** Deletes the exchange and every queue named after it (`<exchange>.*`), via the management-free AMQP API. */
export async function deleteAmqpTopology(exchange: string, queues: readonly string[] = []): Promise<void> {
  const connection = await amqp.connect(urls.amqp);
  try {
    const names = new Set(queues);
    for (const suffix of ['example', 'app', 'test']) {
      const queue = workQueueName(exchange, suffix);
      names.add(queue);
      names.add(deliveryLimitQueueName(queue));
      for (const tier of [1, 10, 50, 100, 200, 1000, 2000, 4000]) names.add(retryQueueName(queue, tier));
      for (let i = 0; i < workerDefaults.orderedPartitions; i++) names.add(partitionQueueName(queue, i));
    }
    for (const name of names) {
      const channel = await connection.createChannel();
      channel.on('error', () => {});
      await channel.deleteQueue(name).catch(() => {});
      await channel.close().catch(() => {});
    }
    const exchanges = [exchange, orderedExchangeName(exchange)];
    for (const queue of [...names].filter((n) => !n.includes('.retry.') && !n.includes('.ordered.'))) {
      exchanges.push(orderedHashExchangeName(queue));
    }
    for (const name of exchanges) {
      const channel = await connection.createChannel();
      channel.on('error', () => {});
      await channel.deleteExchange(name).catch(() => {});
      await channel.close().catch(() => {});
    }
  } finally {
    await connection.close();
  }
}

export async function count(knex: Knex, table: string, where: Record<string, unknown> = {}): Promise<number> {
  const row = await knex(table).where(where).count<{ count: string | number }[]>('* as count').first();
  return Number(row?.count ?? 0);
}
