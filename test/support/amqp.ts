import amqp, { type Options } from 'amqplib';
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
