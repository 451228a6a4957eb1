import amqp, { type ConfirmChannel } from 'amqplib';
import type { Knex } from 'knex';
import { type Config, loadConfig, redactUrl } from '../shared/config.js';
import { assertDatabaseReachable, createKnex } from '../shared/db/knex.js';
import { ServiceUnavailableError } from '../shared/errors.js';

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

/** Runs `fn` with a confirm channel on AMQP_URL, closing the connection afterwards. */
export async function withAmqpChannel<T>(
  cfg: Config,
  fn: (channel: ConfirmChannel, connection: amqp.ChannelModel) => Promise<T>,
): Promise<T> {
  let connection: amqp.ChannelModel;
  try {
    connection = await amqp.connect(cfg.amqpUrl, { clientProperties: { connection_name: 'dw cli' } });
  } catch (error) {
    throw new ServiceUnavailableError('RabbitMQ', redactUrl(cfg.amqpUrl), error);
  }
  try {
    const channel = await connection.createConfirmChannel();
    return await fn(channel, connection);
  } finally {
    await connection.close().catch(() => {});
  }
}
