import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

/** One registry per process, served on `/metrics` next to `/healthz`. */
export const registry = new Registry();
let defaultsCollected = false;

export function collectProcessMetrics(): void {
  if (defaultsCollected) return;
  defaultsCollected = true;
  collectDefaultMetrics({ register: registry });
}

export const messagesTotal = new Counter({
  name: 'dw_messages_total',
  help: 'Messages taken off RabbitMQ, by outcome (handled, duplicate, retry-scheduled, dead-lettered, requeued)',
  labelNames: ['outcome'] as const,
  registers: [registry],
});

export const handlerSeconds = new Histogram({
  name: 'dw_handler_duration_seconds',
  help: 'Time from taking a message to committing its transaction',
  buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
  registers: [registry],
});

export const outboxRelayedTotal = new Counter({
  name: 'dw_outbox_relayed_total',
  help: 'Outbox rows delivered by the relay, by destination kind',
  labelNames: ['kind'] as const,
  registers: [registry],
});

export const outboxFailuresTotal = new Counter({
  name: 'dw_outbox_failures_total',
  help: 'Outbox rows the relay could not deliver (retried later)',
  registers: [registry],
});

export const sagaStepsTotal = new Counter({
  name: 'dw_saga_steps_total',
  help: 'Saga step and compensation runs, by phase and outcome',
  labelNames: ['phase', 'outcome'] as const,
  registers: [registry],
});

export const dependencyUp = new Gauge({
  name: 'dw_dependency_up',
  help: '1 when the dependency answered the last health check',
  labelNames: ['dependency'] as const,
  registers: [registry],
});
