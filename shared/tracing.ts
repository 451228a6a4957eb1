import {
  type Attributes,
  type Context,
  context,
  ProxyTracerProvider,
  propagation,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  type TextMapGetter,
  trace,
} from '@opentelemetry/api';

/**
 * Spans through `@opentelemetry/api` only: the library never loads an SDK. With no tracer provider
 * registered (the default), every helper here returns before it allocates anything per message.
 */
export const tracer = trace.getTracer('durable-worker');

// A proxy with no delegate hands out the api's own no-op provider: what "nothing registered" looks like.
const noopProvider = new ProxyTracerProvider().getDelegate();

/** True once a tracer provider is registered (an SDK started, or a test registered one). */
export function tracingOn(): boolean {
  const provider = trace.getTracerProvider();
  const delegate = provider instanceof ProxyTracerProvider ? provider.getDelegate() : provider;
  return delegate !== noopProvider;
}

/** Messaging semantic-convention attribute names (kept here: the conventions package is the SDK's). */
export const Attr = {
  system: 'messaging.system',
  destination: 'messaging.destination.name',
  messageId: 'messaging.message.id',
  conversationId: 'messaging.message.conversation_id',
  operationType: 'messaging.operation.type',
  operationName: 'messaging.operation.name',
  routingKey: 'messaging.rabbitmq.destination.routing_key',
  bodySize: 'messaging.message.body.size',
  batchSize: 'messaging.batch.message_count',
  messageType: 'dw.message.type',
  outcome: 'dw.outcome',
  sagaId: 'dw.saga.id',
  sagaName: 'dw.saga.name',
  sagaStep: 'dw.saga.step',
  sagaPhase: 'dw.saga.phase',
  sagaAttempt: 'dw.saga.attempt',
  sagaEager: 'dw.saga.eager',
} as const;

/** Reads AMQP headers (strings, or Buffers for byte-array values) and outbox/job headers. */
const headerGetter: TextMapGetter<Record<string, unknown>> = {
  keys: (carrier) => Object.keys(carrier),
  get(carrier, key) {
    const value = carrier[key];
    if (typeof value === 'string') return value;
    if (Buffer.isBuffer(value)) return value.toString('utf8');
    return undefined;
  },
};

/** The context carried by `headers` (`traceparent`, `tracestate`) per the registered propagator. */
export function extractContext(
  headers: Record<string, unknown> | undefined | null,
  base: Context = context.active(),
): Context {
  if (!headers || typeof headers !== 'object') return base;
  return propagation.extract(base, headers, headerGetter);
}

/**
 * The `traceparent` (and `tracestate`) of the active span, to store with an outbox row or put on
 * a message: the span that wrote it, not whatever runs when it is delivered. Without tracing, or
 * with no span active, `fallback` (the incoming traceparent) is passed on as it came.
 */
export function traceHeaders(fallback?: string, from: Context = context.active()): Record<string, string> {
  if (tracingOn()) {
    const carrier: Record<string, string> = {};
    propagation.inject(from, carrier);
    if (carrier.traceparent) {
      return carrier.tracestate
        ? { traceparent: carrier.traceparent, tracestate: carrier.tracestate }
        : { traceparent: carrier.traceparent };
    }
  }
  return fallback ? { traceparent: fallback } : noHeaders;
}

// Spread into headers, never written to: one shared object for "no trace context".
const noHeaders: Record<string, string> = Object.freeze({}) as Record<string, string>;

/** traceHeaders of `span`'s context. */
export function spanHeaders(span: Span): Record<string, string> {
  return traceHeaders(undefined, trace.setSpan(ROOT_CONTEXT, span));
}

/**
 * Runs `fn` inside a new span (child of `parent`, default the active context), ending it when `fn`
 * settles; a throw sets the error status. Without tracing it only calls `fn`.
 */
export function inSpan<T>(
  name: string,
  options: { kind?: SpanKind; attributes?: Attributes; parent?: Context },
  fn: (span: Span | undefined) => Promise<T>,
): Promise<T> {
  if (!tracingOn()) return fn(undefined);
  const parent = options.parent ?? context.active();
  const span = tracer.startSpan(name, { kind: options.kind, attributes: options.attributes }, parent);
  return context.with(trace.setSpan(parent, span), async () => {
    try {
      return await fn(span);
    } catch (error) {
      failSpan(span, error);
      throw error;
    } finally {
      span.end();
    }
  });
}

/**
 * Starts a span (child of `parent`) that the caller ends, with the context to run its work in
 * (see inContext): for work of several messages interleaved in one task, each under its own span.
 * Undefined without tracing.
 */
export function openSpan(
  name: string,
  options: { kind?: SpanKind; attributes?: Attributes; parent?: Context },
): { span: Span; context: Context } | undefined {
  if (!tracingOn()) return undefined;
  const parent = options.parent ?? context.active();
  const span = tracer.startSpan(name, { kind: options.kind, attributes: options.attributes }, parent);
  return { span, context: trace.setSpan(parent, span) };
}

/** Runs `fn` with `ctx` active (a context from openSpan), or just runs it when there is none. */
export function inContext<T>(ctx: Context | undefined, fn: () => T): T {
  return ctx ? context.with(ctx, fn) : fn();
}

/** Records `error` on `span` and marks it failed. */
export function failSpan(span: Span, error: unknown, message?: string): void {
  if (error instanceof Error) span.recordException(error);
  span.setStatus({
    code: SpanStatusCode.ERROR,
    message: message ?? (error instanceof Error ? error.message : String(error)),
  });
}

/** Adds an event to the active span, if tracing and a span is active. */
export function spanEvent(name: string, attributes: () => Attributes): void {
  if (!tracingOn()) return;
  trace.getActiveSpan()?.addEvent(name, attributes());
}

/**
 * trace_id and span_id of the active span, for log lines (pino's mixin); empty when no span is
 * active. Always a new object: pino merges the line's own fields into it.
 */
export function logTraceFields(): Record<string, string> {
  if (!tracingOn()) return {};
  const span = trace.getActiveSpan();
  if (!span) return {};
  const { traceId, spanId } = span.spanContext();
  return { trace_id: traceId, span_id: spanId };
}

export { SpanKind, SpanStatusCode };
