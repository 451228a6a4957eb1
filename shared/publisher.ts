import type { ConfirmChannel } from 'amqplib';
import { type OutgoingMessage, publishOptions } from './envelope.js';

/**
 * Publishes messages per the envelope contract (exchange, routing key = type, persistent, JSON)
 * and resolves once the broker confirmed every one of them. Honours channel back-pressure, so a
 * large `--count` does not buffer without bound.
 */
export async function publishMessages(
  channel: ConfirmChannel,
  exchange: string,
  messages: Iterable<OutgoingMessage>,
): Promise<Array<{ id: string; type: string }>> {
  const published: Array<{ id: string; type: string }> = [];
  const confirms: Promise<void>[] = [];
  for (const message of messages) {
    const options = publishOptions(message);
    let writable = true;
    const confirmed = new Promise<void>((resolve, reject) => {
      writable = channel.publish(
        exchange,
        message.type,
        Buffer.from(JSON.stringify(message.payload)),
        options,
        (error) =>
          error
            ? reject(error instanceof Error ? error : new Error('publish nacked by the broker'))
            : resolve(),
      );
    });
    confirms.push(confirmed);
    published.push({ id: options.messageId, type: message.type });
    if (!writable) await new Promise((drained) => channel.once('drain', drained));
    // Keep the number of unconfirmed messages bounded.
    if (confirms.length >= 1000) await Promise.all(confirms.splice(0));
  }
  await Promise.all(confirms);
  return published;
}

export async function assertExchange(channel: ConfirmChannel, exchange: string): Promise<void> {
  await channel.assertExchange(exchange, 'topic', { durable: true });
}
