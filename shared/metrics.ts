import type { Knex } from 'knex';
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

export const messageCriticalSeconds = new Histogram({
  name: 'dw_message_critical_time_seconds',
  help: 'Time from the message timestamp (set by its publisher, whole seconds) to the commit of its handling, by type',
  labelNames: ['type'] as const,
  buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600],
  registers: [registry],
});

export const messageProcessingSeconds = new Histogram({
  name: 'dw_message_processing_seconds',
  help: 'Time from taking a message to committing its transaction, by type (handled messages)',
  labelNames: ['type'] as const,
  buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  registers: [registry],
});

export const retriesTotal = new Counter({
  name: 'dw_retries_total',
  help: 'Handler retries scheduled, by tier (immediate, or the delay tier of the retry queue, e.g. 1000ms)',
  labelNames: ['tier'] as const,
  registers: [registry],
});

export const sagaStepBatchSize = new Histogram({
  name: 'dw_saga_step_batch_size',
  help: 'Saga steps per step transaction (sagaBatchSize > 1; 1: a step alone)',
  buckets: [1, 2, 3, 5, 10, 20, 50, 100, 250, 1000],
  registers: [registry],
});

export const messageBatchSize = new Histogram({
  name: 'dw_message_batch_size',
  help: 'Deliveries a handler slot took into one transaction (batchSize > 1; 1: a message alone)',
  buckets: [1, 2, 3, 5, 10, 20, 50, 100, 250, 1000],
  registers: [registry],
});

/** Keyed messages that reached the ordinary work queue (published to the main exchange with a key). */
export const unorderedKeyedTotal = new Counter({
  name: 'dw_ordering_key_unordered_total',
  help: 'Messages carrying an x-ordering-key that arrived on the ordinary work queue and were handled without ordering',
  registers: [registry],
});

export const relayBatchSize = new Histogram({
  name: 'dw_relay_batch_size',
  help: 'Outbox rows claimed per relay batch (empty claims not counted)',
  buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000],
  registers: [registry],
});

export const relayBatchSeconds = new Histogram({
  name: 'dw_relay_batch_duration_seconds',
  help: 'Time to claim, deliver and commit one relay batch (empty claims not counted)',
  buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  registers: [registry],
});

/** What the gauges read at scrape time come from; set by the process serving `/metrics`. */
export interface ScrapeSources {
  /** Outbox, dead letters and sagas are read from this database. */
  knex?: Knex;
  /** The worker's work queue: ready messages (from the broker) and those this worker holds unacked. */
  workQueue?: () => Promise<{ queue: string; ready: number | undefined; unacked: number }>;
}

let sources: ScrapeSources = {};
let snapshot: { at: number; done: Promise<void> } | undefined;
/** A scrape every few seconds costs one round of queries per this many ms. */
const scrapeCacheMs = 5000;

export function setScrapeSources(next: ScrapeSources): void {
  sources = next;
  snapshot = undefined;
}

/** Reads every scrape-time gauge at most once per scrapeCacheMs; a failed read keeps the last values. */
function refresh(): Promise<void> {
  if (snapshot && Date.now() - snapshot.at < scrapeCacheMs) return snapshot.done;
  const done = readSources(sources).catch(() => {});
  snapshot = { at: Date.now(), done };
  return done;
}

// Dead letters per (reason, type) are capped: a flood of hostile types must not flood the scrape.
const deadLetterSeries = 200;

async function readSources({ knex, workQueue }: ScrapeSources): Promise<void> {
  const reads: Promise<void>[] = [];
  if (knex) {
    reads.push(
      (async () => {
        // One pass over the pending partial index, per destination kind.
        const { rows } = await knex.raw<{
          rows: Array<{ kind: string; pending: number; oldest: number | null }>;
        }>(
          `select destination_kind as kind, count(*)::int as pending,
                  extract(epoch from now() - min(created_at))::float8 as oldest
             from dw_outbox where delivered_at is null group by destination_kind`,
        );
        for (const kind of ['bullmq', 'amqp']) {
          const row = rows.find((r) => r.kind === kind);
          outboxPending.set({ kind }, row?.pending ?? 0);
          outboxOldestAge.set({ kind }, Math.max(0, row?.oldest ?? 0));
        }
      })(),
      (async () => {
        // The biggest groups first, capped.
        const { rows } = await knex.raw<{ rows: Array<{ reason: string; type: string | null; n: number }> }>(
          `select reason, type, count(*)::int as n from dw_dead_letters
            group by reason, type order by n desc limit ?`,
          [deadLetterSeries],
        );
        deadLetters.reset();
        for (const r of rows) deadLetters.set({ reason: r.reason, type: r.type ?? '' }, r.n);
      })(),
      (async () => {
        // Sagas per definition and status.
        const { rows } = await knex.raw<{ rows: Array<{ name: string; status: string; n: number }> }>(
          'select name, status, count(*)::int as n from dw_sagas group by name, status',
        );
        sagasGauge.reset();
        for (const r of rows) sagasGauge.set({ name: r.name, status: r.status }, r.n);
      })(),
    );
  }
  if (workQueue) {
    reads.push(
      (async () => {
        const depth = await workQueue();
        if (depth.ready !== undefined)
          workQueueMessages.set({ queue: depth.queue, state: 'ready' }, depth.ready);
        workQueueMessages.set({ queue: depth.queue, state: 'unacked' }, depth.unacked);
      })(),
    );
  }
  await Promise.allSettled(reads);
}

export const outboxPending = new Gauge({
  name: 'dw_outbox_pending',
  help: 'Outbox rows not delivered yet, by destination kind (read at scrape time, cached 5 s)',
  labelNames: ['kind'] as const,
  registers: [registry],
  collect: refresh,
});

export const outboxOldestAge = new Gauge({
  name: 'dw_outbox_oldest_pending_age_seconds',
  help: "Age of the oldest undelivered outbox row, by destination kind (the relay's lag; 0 when none)",
  labelNames: ['kind'] as const,
  registers: [registry],
  collect: refresh,
});

export const deadLetters = new Gauge({
  name: 'dw_dead_letters',
  help: 'Dead letters stored, by reason and type (read at scrape time, cached 5 s)',
  labelNames: ['reason', 'type'] as const,
  registers: [registry],
  collect: refresh,
});

export const sagasGauge = new Gauge({
  name: 'dw_sagas',
  help: 'Saga instances, by saga name and status (read at scrape time, cached 5 s)',
  labelNames: ['name', 'status'] as const,
  registers: [registry],
  collect: refresh,
});

export const workQueueMessages = new Gauge({
  name: 'dw_work_queue_messages',
  help: "Messages in the worker's work queue: ready (from the broker) and unacked (held by this worker)",
  labelNames: ['queue', 'state'] as const,
  registers: [registry],
  collect: refresh,
});
