import type { Attributes, Span } from '@opentelemetry/api';
import type { ConfirmChannel } from 'amqplib';
import { sendMandatory } from './amqp.js';
import { type OutgoingMessage, publishOptions } from './envelope.js';
import { PublishNotConfirmedError, UnroutableError } from './errors.js';
import { Attr, extractContext, failSpan, SpanKind, spanHeaders, tracer, tracingOn } from './tracing.js';

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
  for (const original of messages) {
    const span = tracingOn() ? publishSpan(exchange, original) : undefined;
    const message = span ? withSpanContext(original, span) : original;
    const properties = publishOptions(message);
    span?.setAttribute(Attr.messageId, properties.messageId);
    const content = Buffer.from(JSON.stringify(message.payload));
    let writable = true;
    let confirmed: Promise<void>;
    if (options.mandatory) {
      const sent = sendMandatory(channel, exchange, message.type, content, properties);
      confirmed = sent.confirmed;
      writable = sent.writable;
    } else {
      confirmed = new Promise<void>((resolve, reject) => {
        writable = channel.publish(exchange, message.type, content, properties, (error) =>
          error
            ? reject(
                error instanceof Error ? error : new PublishNotConfirmedError('publish nacked by the broker'),
              )
            : resolve(),
        );
      });
    }
    if (span) confirmed = endWhenSettled(span, confirmed);
    confirms.push(options.mandatory ? confirmed.catch(countReturn) : confirmed);
    published.push({ id: properties.messageId, type: message.type });
    if (!writable) await new Promise((drained) => channel.once('drain', drained));
    // Keep the number of unconfirmed messages bounded.
    if (confirms.length >= 1000) await Promise.all(confirms.splice(0));
  }
  await Promise.all(confirms);
  return { published, unroutable };
}

/** The producer span of one message: a child of its own traceparent if it has one, else of the active context. */
function publishSpan(exchange: string, message: OutgoingMessage): Span {
  const attributes: Attributes = {
    [Attr.system]: 'rabbitmq',
    [Attr.operationType]: 'send',
    [Attr.operationName]: 'publish',
    [Attr.destination]: exchange,
    [Attr.routingKey]: message.type,
    [Attr.messageType]: message.type,
  };
  if (message.correlationId) attributes[Attr.conversationId] = message.correlationId;
  const parent = message.traceparent ? extractContext({ traceparent: message.traceparent }) : undefined;
  return tracer.startSpan(`publish ${exchange}`, { kind: SpanKind.PRODUCER, attributes }, parent);
}

/** The message carrying `span`'s context as its traceparent (and tracestate). */
function withSpanContext(message: OutgoingMessage, span: Span): OutgoingMessage {
  const { traceparent, tracestate } = spanHeaders(span);
  return {
    ...message,
    traceparent,
    headers: tracestate ? { ...message.headers, tracestate } : message.headers,
  };
}

function endWhenSettled(span: Span, confirmed: Promise<void>): Promise<void> {
  return confirmed.then(
    () => span.end(),
    (error: unknown) => {
      failSpan(span, error);
      span.end();
      throw error;
    },
  );
}

export async function assertExchange(channel: ConfirmChannel, exchange: string): Promise<void> {
  await channel.assertExchange(exchange, 'topic', { durable: true });
}
