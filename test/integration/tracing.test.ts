import { randomBytes, randomUUID } from 'node:crypto';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import type { InMemorySpanExporter, ReadableSpan } from '@opentelemetry/sdk-trace-base';
import amqp from 'amqplib';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exampleMigrations } from '../../examples/app/migrations.js';
import { Relay } from '../../relay/relay.js';
import { workQueueName } from '../../shared/defaults.js';
import { publishMessages } from '../../shared/publisher.js';
import { logTraceFields, tracer } from '../../shared/tracing.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { sagaFinished, sagaTestApp } from '../support/saga-app.js';
import { createTestEnv, type TestEnv } from '../support/services.js';
import { idOf, parentOf, registerInMemoryTracing, traceOf } from '../support/tracing.js';

let env: TestEnv;
let relay: Relay;
let exporter: InMemorySpanExporter;
let unregister: () => Promise<void>;
const queue = () => workQueueName(env.config.exchange, sagaTestApp.name);

beforeAll(async () => {
  ({ exporter, unregister } = registerInMemoryTracing());
  env = await createTestEnv(exampleMigrations);
  relay = await Relay.start({ config: env.config });
});

afterAll(async () => {
  await relay?.stop();
  await env?.teardown();
  await unregister?.();
});

/** A traceparent as an independent client would send it. */
function outsideTraceparent(): { traceparent: string; traceId: string; spanId: string } {
  const traceId = randomBytes(16).toString('hex');
  const spanId = randomBytes(8).toString('hex');
  return { traceparent: `00-${traceId}-${spanId}-01`, traceId, spanId };
}

async function startSaga(
  saga: string,
  headers: Record<string, string>,
): Promise<{ sagaId: string; messageId: string }> {
  const sagaId = randomUUID();
  const messageId = randomUUID();
  await publishRaw(env.config.exchange, [
    {
      routingKey: 'StartTestSaga',
      body: { saga, id: sagaId, state: {} },
      properties: {
        messageId,
        type: 'StartTestSaga',
        correlationId: `corr-${sagaId}`,
        contentType: 'application/json',
        headers,
      },
    },
  ]);
  return { sagaId, messageId };
}

const spansOf = (traceId: string) => exporter.getFinishedSpans().filter((s) => traceOf(s) === traceId);

function one(spans: ReadableSpan[], match: (s: ReadableSpan) => boolean, what: string): ReadableSpan {
  const found = spans.filter(match);
  expect(found, what).toHaveLength(1);
  return found[0]!;
}

const stepSpan = (spans: ReadableSpan[], step: string) =>
  one(
    spans,
    (s) => s.attributes['dw.saga.step'] === step && s.attributes['dw.saga.phase'] === 'execute',
    `the span of step ${step}`,
  );

/** Waits until the trace holds `n` relay spans to `destination` (spans end after the saga row moves). */
function relaySpans(traceId: string, destination: string, n: number) {
  return waitUntil(() => {
    const found = spansOf(traceId).filter(
      (s) => s.kind === SpanKind.PRODUCER && s.attributes['messaging.destination.name'] === destination,
    );
    return found.length >= n ? found : undefined;
  }, `${n} relay spans to ${destination}`);
}

/**
 * The trace's spans once the consumer span and every step span ended (a span is exported when it
 * ends, which may come a moment after the commit a test waited for).
 */
function settledTrace(traceId: string): Promise<ReadableSpan[]> {
  return waitUntil(() => {
    const spans = spansOf(traceId);
    const consumer = spans.some((s) => s.kind === SpanKind.CONSUMER && s.name.startsWith('process '));
    const steps = new Set(spans.map((s) => s.attributes['dw.saga.step']).filter(Boolean));
    return consumer && steps.size === 4 ? spans : undefined;
  }, 'the consumer span and the four step spans');
}

describe('tracing', () => {
  it('a message with an outside traceparent that starts a saga (eager steps) yields one trace', async () => {
    const worker = await Worker.start({ app: sagaTestApp, config: env.config, sagaSweepIntervalMs: 0 });
    try {
      const outside = outsideTraceparent();
      const { sagaId, messageId } = await startSaga('sequential', { traceparent: outside.traceparent });
      expect((await sagaFinished(env.knex, sagaId)).status).toBe('completed');
      // Each step sends one event to saga_test_events, relayed with a span in the same trace.
      const sends = await relaySpans(outside.traceId, 'saga_test_events', 4);
      const spans = await settledTrace(outside.traceId);

      const consumer = one(
        spans,
        (s) => s.kind === SpanKind.CONSUMER && s.name === `process ${queue()}`,
        'consumer',
      );
      expect(parentOf(consumer)).toBe(outside.spanId);
      expect(consumer.attributes).toMatchObject({
        'messaging.system': 'rabbitmq',
        'messaging.destination.name': queue(),
        'messaging.message.id': messageId,
        'messaging.message.conversation_id': `corr-${sagaId}`,
        'messaging.operation.type': 'process',
        'dw.outcome': 'handled',
      });
      const handler = one(spans, (s) => s.name === 'handle StartTestSaga', 'handler');
      expect(parentOf(handler)).toBe(idOf(consumer));

      // s1 runs eagerly in the worker that started the saga: a child of the handler that scheduled it.
      const steps = ['s1', 's2', 's3', 's4'].map((step) => stepSpan(spans, step));
      expect(parentOf(steps[0]!)).toBe(idOf(handler));
      for (let i = 1; i < steps.length; i++) expect(parentOf(steps[i]!)).toBe(idOf(steps[i - 1]!));
      for (const [i, span] of steps.entries()) {
        expect(span.attributes).toMatchObject({
          'dw.saga.id': sagaId,
          'dw.saga.name': 'sequential',
          'dw.saga.step': `s${i + 1}`,
          'dw.saga.phase': 'execute',
          'dw.saga.attempt': 1,
          'dw.saga.eager': true,
          'dw.outcome': 'completed',
        });
      }
      // Each step's event: relayed by a span that is the child of the step that sent it.
      const stepIds = new Set(steps.map(idOf));
      for (const send of sends) {
        expect(stepIds.has(parentOf(send)!)).toBe(true);
        expect(send.attributes).toMatchObject({
          'messaging.system': 'bullmq',
          'messaging.operation.type': 'send',
        });
      }
      expect(new Set(sends.map(parentOf)).size).toBe(4);
    } finally {
      await worker.stop();
    }
  });

  it('through the relay and BullMQ (no eager steps), every hop is a span of the same trace', async () => {
    const worker = await Worker.start({
      app: sagaTestApp,
      config: env.config,
      sagaSweepIntervalMs: 0,
      sagaEagerLeaseMs: 0,
    });
    try {
      const outside = outsideTraceparent();
      const { sagaId } = await startSaga('sequential', { traceparent: outside.traceparent });
      expect((await sagaFinished(env.knex, sagaId)).status).toBe('completed');
      await relaySpans(outside.traceId, 'saga_test_events', 4);
      const hops = await relaySpans(outside.traceId, 'dw-sagas', 4);
      const spans = await settledTrace(outside.traceId);
      const handler = one(spans, (s) => s.name === 'handle StartTestSaga', 'handler');
      // handler -> relay -> s1 -> relay -> s2 -> relay -> s3 -> relay -> s4
      let scheduler = handler;
      for (const step of ['s1', 's2', 's3', 's4']) {
        const span = stepSpan(spans, step);
        expect(span.kind).toBe(SpanKind.CONSUMER);
        expect(span.attributes).toMatchObject({ 'messaging.system': 'bullmq', 'dw.saga.eager': false });
        const hop = hops.find((h) => idOf(h) === parentOf(span));
        expect(hop, `the relay span before ${step}`).toBeDefined();
        expect(parentOf(hop!)).toBe(idOf(scheduler));
        scheduler = span;
      }
    } finally {
      await worker.stop();
    }
  });

  it('retried attempts and compensations are spans of the same trace, each a child of what scheduled it', async () => {
    const worker = await Worker.start({ app: sagaTestApp, config: env.config, sagaSweepIntervalMs: 0 });
    try {
      const outside = outsideTraceparent();
      const sagaId = randomUUID();
      await publishRaw(env.config.exchange, [
        {
          routingKey: 'StartTestSaga',
          body: { saga: 'sequential', id: sagaId, state: { fail: { s3: -1 } } },
          properties: {
            messageId: randomUUID(),
            type: 'StartTestSaga',
            headers: { traceparent: outside.traceparent },
          },
        },
      ]);
      expect((await sagaFinished(env.knex, sagaId)).status).toBe('compensated');
      const compensation = (s: ReadableSpan, step: string) =>
        s.attributes['dw.saga.phase'] === 'compensate' && s.attributes['dw.saga.step'] === step;
      const spans = await waitUntil(() => {
        const found = spansOf(outside.traceId);
        return found.some((s) => compensation(s, 's1')) ? found : undefined;
      }, 'the compensation spans');
      const byId = new Map(spans.map((s) => [idOf(s), s]));
      // s3: three attempts, each its own span; attempt n+1 descends from attempt n (through the relay).
      const s3 = spans
        .filter((s) => s.attributes['dw.saga.step'] === 's3' && s.attributes['dw.saga.phase'] === 'execute')
        .sort((a, b) => Number(a.attributes['dw.saga.attempt']) - Number(b.attributes['dw.saga.attempt']));
      expect(s3.map((s) => s.attributes['dw.saga.attempt'])).toEqual([1, 2, 3]);
      expect(s3.map((s) => s.attributes['dw.outcome'])).toEqual([
        'retry-scheduled',
        'retry-scheduled',
        'failed',
      ]);
      const ancestors = (span: ReadableSpan): string[] => {
        const chain: string[] = [];
        for (let p = parentOf(span); p && byId.has(p); p = parentOf(byId.get(p)!)) chain.push(p);
        return chain;
      };
      expect(ancestors(s3[1]!)).toContain(idOf(s3[0]!));
      expect(ancestors(s3[2]!)).toContain(idOf(s3[1]!));
      // Compensations: -s2 scheduled by the failed attempt, -s1 by -s2.
      const undoS2 = one(spans, (s) => compensation(s, 's2'), 'compensation of s2');
      const undoS1 = one(spans, (s) => compensation(s, 's1'), 'compensation of s1');
      expect(undoS2.name).toBe('saga compensation sequential/s2');
      expect(ancestors(undoS2)).toContain(idOf(s3[2]!));
      expect(ancestors(undoS1)).toContain(idOf(undoS2));
      // The chain goes up to the consumer span, whose parent is the outside span.
      const top = byId.get(ancestors(undoS1).at(-1)!)!;
      expect(top.kind).toBe(SpanKind.CONSUMER);
      expect(parentOf(top)).toBe(outside.spanId);
    } finally {
      await worker.stop();
    }
  });

  it('a message without traceparent starts a trace; dead-lettering is an event with the reason', async () => {
    const worker = await Worker.start({ app: sagaTestApp, config: env.config, sagaSweepIntervalMs: 0 });
    try {
      const messageId = randomUUID();
      await publishRaw(env.config.exchange, [
        { routingKey: 'StartStraySaga', body: {}, properties: { messageId, type: 'StartStraySaga' } },
      ]);
      const consumer = await waitUntil(
        () =>
          exporter
            .getFinishedSpans()
            .find((s) => s.kind === SpanKind.CONSUMER && s.attributes['messaging.message.id'] === messageId),
        'the consumer span',
      );
      expect(consumer.parentSpanContext).toBeUndefined();
      expect(consumer.status.code).toBe(SpanStatusCode.ERROR);
      expect(consumer.attributes['dw.outcome']).toBe('dead-lettered');
      const event = consumer.events.find((e) => e.name === 'dw.dead_letter');
      expect(event?.attributes).toMatchObject({ 'dw.dead_letter.reason': 'handler-failed' });
      const handler = one(spansOf(traceOf(consumer)), (s) => s.name === 'handle StartStraySaga', 'handler');
      expect(parentOf(handler)).toBe(idOf(consumer));
      expect(handler.status.code).toBe(SpanStatusCode.ERROR);
    } finally {
      await worker.stop();
    }
  });

  it('publishing makes a producer span whose context goes out as the traceparent', async () => {
    const connection = await amqp.connect(env.config.amqpUrl);
    try {
      const channel = await connection.createConfirmChannel();
      const received = `${env.config.exchange}.tracing-probe`;
      await channel.assertExchange(env.config.exchange, 'topic', { durable: true });
      await channel.assertQueue(received, { exclusive: true });
      await channel.bindQueue(received, env.config.exchange, 'Probe');
      const outside = outsideTraceparent();
      const { published } = await publishMessages(
        channel,
        env.config.exchange,
        [{ type: 'Probe', payload: {}, traceparent: outside.traceparent, correlationId: 'c-1' }],
        { mandatory: true },
      );
      const message = await waitUntil(
        async () => (await channel.get(received, { noAck: true })) || undefined,
        'the probe',
      );
      const producer = one(
        spansOf(outside.traceId),
        (s) => s.kind === SpanKind.PRODUCER && s.attributes['messaging.message.id'] === published[0]!.id,
        'the publish span',
      );
      expect(parentOf(producer)).toBe(outside.spanId);
      expect(producer.attributes).toMatchObject({
        'messaging.system': 'rabbitmq',
        'messaging.destination.name': env.config.exchange,
        'messaging.message.conversation_id': 'c-1',
      });
      expect(message.properties.headers?.traceparent).toBe(`00-${outside.traceId}-${idOf(producer)}-01`);
    } finally {
      await connection.close();
    }
  });

  it('log lines carry trace_id and span_id while a span is active', () => {
    const lines: string[] = [];
    // createLogger's mixin, writing to memory.
    const log = pino({ mixin: logTraceFields }, { write: (line: string) => lines.push(line) });
    log.info({ n: 1 }, 'outside');
    tracer.startActiveSpan('probe', (span) => {
      log.info({ n: 2 }, 'inside');
      log.info('inside again');
      const { traceId, spanId } = span.spanContext();
      expect(JSON.parse(lines[1]!)).toMatchObject({ n: 2, trace_id: traceId, span_id: spanId });
      expect(JSON.parse(lines[2]!)).toMatchObject({ trace_id: traceId, span_id: spanId });
      span.end();
    });
    expect(JSON.parse(lines[0]!)).not.toHaveProperty('trace_id');
    expect(lines).toHaveLength(3);
  });
});
