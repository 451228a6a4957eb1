import { createHash, randomUUID } from 'node:crypto';
import type { ConsumeMessage, Options } from 'amqplib';

/** AMQP header names of the envelope (docs/contracts.md, "Message envelope on RabbitMQ"). */
export const Headers = {
  causationId: 'x-causation-id',
  traceparent: 'traceparent',
  /** Attempt number of this delivery; absent means 1. Set on delayed-retry copies. */
  attempt: 'x-dw-attempt',
  /** First failure time of a message being retried, for the dead-letter entry. */
  firstFailedAt: 'x-dw-first-failed-at',
  /** Set on replays from the dead letters. */
  replayedFrom: 'x-dw-replayed-from',
  /** Messages with the same ordering key are handled one at a time, in publish order (shared/ordering.ts). */
  orderingKey: 'x-ordering-key',
} as const;

/** What a handler knows about the message it handles. */
export interface Envelope {
  id: string;
  type: string;
  correlationId: string;
  causationId?: string;
  traceparent?: string;
  /** 1 for the first delivery; counts immediate and delayed retries. */
  attempt: number;
  timestamp: Date;
  headers: Record<string, unknown>;
}

export interface OutgoingMessage {
  type: string;
  payload: unknown;
  id?: string;
  correlationId?: string;
  causationId?: string;
  traceparent?: string;
  headers?: Record<string, unknown>;
  /** Sent as the `x-ordering-key` header; publish it to the ordered exchange (shared/ordering.ts). */
  orderingKey?: string;
}

/** AMQP publish options for a message per the envelope contract: persistent, JSON, typed. */
export function publishOptions(message: OutgoingMessage): Options.Publish & { messageId: string } {
  const headers: Record<string, unknown> = { ...message.headers };
  if (message.causationId) headers[Headers.causationId] = message.causationId;
  if (message.traceparent) headers[Headers.traceparent] = message.traceparent;
  if (message.orderingKey !== undefined) headers[Headers.orderingKey] = message.orderingKey;
  return {
    messageId: message.id ?? randomUUID(),
    type: message.type,
    correlationId: message.correlationId,
    contentType: 'application/json',
    timestamp: Math.floor(Date.now() / 1000),
    persistent: true,
    headers,
  };
}

/** A message as taken off the queue, before its body is trusted. */
export interface IncomingMessage extends Omit<Envelope, 'type'> {
  /** From the `type` property, else the routing key; undefined when neither is set. */
  type: string | undefined;
  body: Buffer;
  redelivered: boolean;
}

export function readIncoming(msg: ConsumeMessage): IncomingMessage {
  const props = msg.properties;
  const headers = (props.headers ?? {}) as Record<string, unknown>;
  const id = stringOrUndefined(props.messageId) ?? contentId(msg);
  const attempt = Number(headers[Headers.attempt] ?? 1);
  return {
    id,
    type: stringOrUndefined(props.type) ?? stringOrUndefined(msg.fields.routingKey),
    correlationId: stringOrUndefined(props.correlationId) ?? id,
    causationId: stringOrUndefined(headers[Headers.causationId]),
    traceparent: stringOrUndefined(headers[Headers.traceparent]),
    attempt: Number.isInteger(attempt) && attempt > 0 ? attempt : 1,
    timestamp: typeof props.timestamp === 'number' ? new Date(props.timestamp * 1000) : new Date(),
    headers,
    body: msg.content,
    redelivered: msg.fields.redelivered,
  };
}

/**
 * A message published without a messageId still needs a stable id for the inbox: derive one from
 * what a redelivery repeats byte for byte (routing key, type, timestamp, body). Two identical
 * publishes without ids are then treated as one message; publishers that care set messageId.
 */
function contentId(msg: ConsumeMessage): string {
  const hash = createHash('sha256')
    .update(String(msg.fields.routingKey))
    .update('\0')
    .update(String(msg.properties.type ?? ''))
    .update('\0')
    .update(String(msg.properties.timestamp ?? ''))
    .update('\0')
    .update(msg.content)
    .digest('hex');
  return `sha256-${hash.slice(0, 40)}`;
}

function stringOrUndefined(value: unknown): string | undefined {
  if (typeof value === 'string' && value.length > 0) return value;
  if (Buffer.isBuffer(value)) return value.toString('utf8') || undefined;
  return undefined;
}
