import type { ConsumeMessage } from 'amqplib';
import { describe, expect, it } from 'vitest';
import { Headers, publishOptions, readIncoming } from '../../shared/envelope.js';

function delivery(
  properties: Partial<ConsumeMessage['properties']>,
  body = '{}',
  routingKey = 'RoutedType',
): ConsumeMessage {
  return {
    content: Buffer.from(body),
    fields: { routingKey, redelivered: false, deliveryTag: 1, exchange: 'x', consumerTag: 'c' },
    properties: { headers: {}, ...properties } as ConsumeMessage['properties'],
  } as ConsumeMessage;
}

describe('readIncoming', () => {
  it('reads the envelope properties and headers', () => {
    const m = readIncoming(
      delivery({
        messageId: 'm-1',
        type: 'JoinMeeting',
        correlationId: 'c-1',
        timestamp: 1_700_000_000,
        headers: {
          [Headers.causationId]: 'cause',
          [Headers.traceparent]: '00-abc-def-01',
          [Headers.attempt]: 3,
        },
      }),
    );
    expect(m).toMatchObject({
      id: 'm-1',
      type: 'JoinMeeting',
      correlationId: 'c-1',
      causationId: 'cause',
      traceparent: '00-abc-def-01',
      attempt: 3,
      timestamp: new Date(1_700_000_000_000),
    });
  });

  it('falls back to the routing key, the message id as correlation id, and attempt 1', () => {
    const m = readIncoming(delivery({ messageId: 'm-2', headers: { [Headers.attempt]: 'garbage' } }));
    expect(m).toMatchObject({ type: 'RoutedType', correlationId: 'm-2', attempt: 1 });
  });

  it('derives a stable id from the content when the publisher set none', () => {
    const a = readIncoming(delivery({ type: 'T', timestamp: 5 }, '{"a":1}'));
    const again = readIncoming(delivery({ type: 'T', timestamp: 5 }, '{"a":1}'));
    const other = readIncoming(delivery({ type: 'T', timestamp: 5 }, '{"a":2}'));
    expect(a.id).toMatch(/^sha256-[0-9a-f]{40}$/);
    expect(again.id).toBe(a.id);
    expect(other.id).not.toBe(a.id);
  });
});

describe('publishOptions', () => {
  it('follows the envelope contract: persistent JSON with id, type, correlation and causation', () => {
    const options = publishOptions({
      type: 'T',
      payload: {},
      correlationId: 'c',
      causationId: 'p',
      traceparent: 'tp',
    });
    expect(options).toMatchObject({
      type: 'T',
      correlationId: 'c',
      contentType: 'application/json',
      persistent: true,
      headers: { [Headers.causationId]: 'p', [Headers.traceparent]: 'tp' },
    });
    expect(options.messageId).toMatch(/^[0-9a-f-]{36}$/);
    expect(publishOptions({ type: 'T', payload: {}, id: 'given' }).messageId).toBe('given');
  });
});
