import type { ConfirmChannel } from 'amqplib';
import { type OutgoingMessage, publishOptions } from './envelope.js';
import { PublishNotConfirmedError } from './errors.js';

/**
 * Publishes messages per the envelope contract (exchange, routing key = type, persistent, JSON)
 * and resolves once the broker confirmed every one of them. Honours channel back-pressure, so a
 * large `--count` does not buffer without bound.
 */
export async function publishMessages(
  channel: ConfirmChannel,
  exchange: string,
  messages: Iterable<OutgoingMessage>,
  options: { mandatory?: boolean } = {},
): Promise<{ published: Array<{ id: string; type: string }>; unroutable: number }> {
  const published: Array<{ id: string; type: string }> = [];
  const confirms: Promise<void>[] = [];
  // With `mandatory`, the broker returns messages no queue is bound for (before confirming them).
  let unroutable = 0;
  const onReturn = () => {
    unroutable++;
  };
  if (options.mandatory) channel.on('return', onReturn);
  for (const message of messages) {
    const properties = publishOptions(message);
    let writable = true;
    const confirmed = new Promise<void>((resolve, reject) => {
      writable = channel.publish(
        exchange,
        message.type,
        Buffer.from(JSON.stringify(message.payload)),
        { ...properties, mandatory: options.mandatory ?? false },
        (error) =>
          error
            ? reject(
                error instanceof Error ? error : new PublishNotConfirmedError('publish nacked by the broker'),
              )
            : resolve(),
      );
    });
    confirms.push(confirmed);
    published.push({ id: properties.messageId, type: message.type });
    if (!writable) await new Promise((drained) => channel.once('drain', drained));
    // Keep the number of unconfirmed messages bounded.
    if (confirms.length >= 1000) await Promise.all(confirms.splice(0));
  }
  await Promise.all(confirms);
  channel.removeListener('return', onReturn);
  return { published, unroutable };
}

export async function assertExchange(channel: ConfirmChannel, exchange: string): Promise<void> {
  await channel.assertExchange(exchange, 'topic', { durable: true });
}
