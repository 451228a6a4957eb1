import amqp, { type Options } from 'amqplib';
import type { Config } from '../../shared/config.js';
import { workQueueName } from '../../shared/defaults.js';
import { orderingPluginAvailable } from '../../shared/ordering.js';
import { urls } from './services.js';

/**
 * Publishes like any other AMQP client would (raw amqplib, not our publisher), so tests exercise
 * the envelope contract from outside: exchange, routing key = type, properties and body as given.
 */
export async function publishRaw(
  exchange: string,
  messages: Array<{ routingKey: string; body: Buffer | string | object; properties?: Options.Publish }>,
): Promise<void> {
  const connection = await amqp.connect(urls.amqp);
  try {
    const channel = await connection.createConfirmChannel();
    await channel.assertExchange(exchange, 'topic', { durable: true });
    for (const m of messages) {
      const body = Buffer.isBuffer(m.body)
        ? m.body
        : Buffer.from(typeof m.body === 'string' ? m.body : JSON.stringify(m.body));
      channel.publish(exchange, m.routingKey, body, { persistent: true, ...m.properties });
    }
    await channel.waitForConfirms();
  } finally {
    await connection.close();
  }
}

/**
 * Tests of ordered keys need the broker's consistent-hash exchange; without it the worker falls
 * back to unordered handling, and the test would only time out waiting for partitions.
 */
export async function requireOrderingPlugin(config: Config, app: string): Promise<void> {
  const queue = workQueueName(config.exchange, app);
  if (!(await orderingPluginAvailable(urls.amqp, { exchange: config.exchange, queue, types: [] }))) {
    throw new Error(
      'RabbitMQ lacks the plugin rabbitmq_consistent_hash_exchange that ordered keys need: ' +
        'run `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange` (.ci/run and docker-compose enable it)',
    );
  }
}
