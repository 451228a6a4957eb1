import type { ConfirmChannel } from 'amqplib';
import { sendMandatory } from './amqp.js';
import { type OutgoingMessage, publishOptions } from './envelope.js';
import { PublishNotConfirmedError, UnroutableError } from './errors.js';

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
  const countReturn = (error: unknown) => {
    if (!(error instanceof UnroutableError)) throw error;
    unroutable++;
  };
  // Up to 1000 confirms outstanding, each listening for the channel's close.
  channel.setMaxListeners(0);
  for (const message of messages) {
    const properties = publishOptions(message);
    const content = Buffer.from(JSON.stringify(message.payload));
    let writable = true;
    if (options.mandatory) {
      const sent = sendMandatory(channel, exchange, message.type, content, properties);
      confirms.push(sent.confirmed.catch(countReturn));
      writable = sent.writable;
    } else {
      confirms.push(
        new Promise<void>((resolve, reject) => {
          writable = channel.publish(exchange, message.type, content, properties, (error) =>
            error
              ? reject(
                  error instanceof Error
                    ? error
                    : new PublishNotConfirmedError('publish nacked by the broker'),
                )
              : resolve(),
          );
        }),
      );
    }
    published.push({ id: properties.messageId, type: message.type });
    if (!writable) await new Promise((drained) => channel.once('drain', drained));
    // Keep the number of unconfirmed messages bounded.
    if (confirms.length >= 1000) await Promise.all(confirms.splice(0));
  }
  await Promise.all(confirms);
  return { published, unroutable };
}

export async function assertExchange(channel: ConfirmChannel, exchange: string): Promise<void> {
  await channel.assertExchange(exchange, 'topic', { durable: true });
}
