import { createHash } from 'node:crypto';
import { type Attributes, ROOT_CONTEXT, type Span } from '@opentelemetry/api';
import { Queue } from 'bullmq';
import type { ResilientAmqpConnection } from '../shared/amqp.js';
import { relayDefaults } from '../shared/defaults.js';
import { publishOptions } from '../shared/envelope.js';
import type { OutboxJobData, OutboxRow } from '../shared/outbox.js';
import type { RedisClient } from '../shared/redis.js';
import {
  Attr,
  extractContext,
  failSpan,
  SpanKind,
  spanHeaders,
  tracer,
  tracingOn,
} from '../shared/tracing.js';

export interface DeliveryResult {
  delivered: number[];
  failed: Array<{ id: number; attempts: number; error: string }>;
}

/**
 * Delivers claimed outbox rows: BullMQ rows with one `addBulk` per queue (job id = outbox message
 * id, so a row delivered twice makes one job), AMQP rows as confirmed publishes. A row that fails
 * is reported alone; the rest are delivered.
 */
export class Destinations {
  private readonly queues = new Map<string, Queue>();
  /** Per destination, the last delivery started: the next one waits for it, keeping id order. */
  private readonly tails = new Map<string, Promise<void>>();

  constructor(
    private readonly redis: RedisClient,
    private readonly prefix: string,
    private readonly amqp: ResilientAmqpConnection,
    private readonly keepCompleted: { age: number; count: number },
  ) {}

  async deliver(claimed: readonly OutboxRow[]): Promise<DeliveryResult> {
    const result: DeliveryResult = { delivered: [], failed: [] };
    const spans = tracingOn() ? sendSpans(claimed) : undefined;
    const rows = spans ? spans.rows : claimed;
    try {
      await this.deliverRows(rows, result);
    } finally {
      if (spans) endSendSpans(spans.byId, result);
    }
    return result;
  }

  private async deliverRows(rows: readonly OutboxRow[], result: DeliveryResult): Promise<void> {
    const byQueue = new Map<string, OutboxRow[]>();
    const amqpRows: OutboxRow[] = [];
    for (const row of rows) {
      if (row.destination.kind === 'bullmq') {
        const list = byQueue.get(row.destination.queue) ?? [];
        list.push(row);
        byQueue.set(row.destination.queue, list);
      } else {
        amqpRows.push(row);
      }
    }
    await Promise.all([
      ...[...byQueue].map(([queue, list]) =>
        this.inTurn(`bullmq:${queue}`, () => this.addJobs(queue, list, result)),
      ),
      amqpRows.length ? this.inTurn('amqp', () => this.publishAll(amqpRows, result)) : undefined,
    ]);
  }

  /**
   * Runs `deliver` after the deliveries to the same destination started before it (by other claim
   * loops), so batches claimed in id order reach the destination in id order. Registered when
   * called, not when run: callers call it straight after their claim.
   */
  private inTurn(destination: string, deliver: () => Promise<void>): Promise<void> {
    const run = (this.tails.get(destination) ?? Promise.resolve()).then(deliver);
    const tail = run.catch(() => undefined);
    this.tails.set(destination, tail);
    void tail.then(() => {
      if (this.tails.get(destination) === tail) this.tails.delete(destination);
    });
    return run;
  }

  async close(): Promise<void> {
    await Promise.all([...this.queues.values()].map((q) => q.close()));
    this.queues.clear();
  }

  private queue(name: string): Queue {
    let queue = this.queues.get(name);
    if (!queue) {
      queue = new Queue(name, { connection: this.redis, prefix: this.prefix });
      this.queues.set(name, queue);
    }
    return queue;
  }

  private job(row: OutboxRow) {
    const data: OutboxJobData = {
      messageId: row.messageId,
      type: row.type,
      payload: row.payload,
      headers: row.headers,
    };
    return {
      name: row.type,
      data,
      opts: {
        ...row.options,
        jobId: jobIdFor(row.messageId),
        removeOnComplete: this.keepCompleted,
        removeOnFail: { age: relayDefaults.keepFailedAgeSeconds },
      },
    };
  }

  private async addJobs(queueName: string, rows: OutboxRow[], result: DeliveryResult): Promise<void> {
    let queue: Queue;
    try {
      // A name BullMQ refuses (a row written by an older version, or by SQL) fails its rows only.
      queue = this.queue(queueName);
    } catch (error) {
      const message = `invalid BullMQ queue name ${JSON.stringify(queueName)}: ${(error as Error).message}`;
      for (const row of rows) result.failed.push({ id: row.id, attempts: row.attempts, error: message });
      return;
    }
    try {
      await queue.addBulk(rows.map((row) => this.job(row)));
      result.delivered.push(...rows.map((r) => r.id));
      return;
    } catch {
      // Find the rows at fault one by one; the others still go.
    }
    for (const row of rows) {
      try {
        const { name, data, opts } = this.job(row);
        await queue.add(name, data, opts);
        result.delivered.push(row.id);
      } catch (error) {
        result.failed.push({ id: row.id, attempts: row.attempts, error: (error as Error).message });
      }
    }
  }

  private async publishAll(rows: OutboxRow[], result: DeliveryResult): Promise<void> {
    if (rows.length === 0) return;
    const settled = await Promise.allSettled(rows.map((row) => this.publish(row)));
    const retry: OutboxRow[] = [];
    settled.forEach((s, i) => {
      if (s.status === 'fulfilled') result.delivered.push(rows[i]!.id);
      else retry.push(rows[i]!);
    });
    // One bad publish (a missing exchange) closes the channel under its neighbours: retry them alone.
    for (const row of retry) {
      try {
        await this.publish(row);
        result.delivered.push(row.id);
      } catch (error) {
        result.failed.push({ id: row.id, attempts: row.attempts, error: (error as Error).message });
      }
    }
  }

  private async publish(row: OutboxRow): Promise<void> {
    if (row.destination.kind !== 'amqp') return;
    const options = publishOptions({
      id: row.messageId,
      type: row.type,
      payload: row.payload,
      correlationId: row.headers.correlationId,
      causationId: row.headers.causationId,
      traceparent: row.headers.traceparent,
      headers: row.headers.tracestate ? { tracestate: row.headers.tracestate } : undefined,
      // Keyed (ctx.publish with orderingKey): the row's exchange is the ordered one already.
      orderingKey: row.headers.orderingKey,
    });
    // Mandatory: a type nothing is bound to is returned (UnroutableError), not confirmed and lost.
    await this.amqp.publishMandatory(
      row.destination.exchange,
      row.destination.routingKey,
      Buffer.from(JSON.stringify(row.payload)),
      options,
    );
  }
}

/**
 * One producer span per row, a child of the context stored with the row (the span that wrote it),
 * so that the relay's hop sits in each message's own trace; a single batch span could belong to
 * one trace only. The row goes out carrying the span's context: the consumer's span becomes its
 * child. Rows without a stored context get a span of their own trace.
 */
function sendSpans(rows: readonly OutboxRow[]): { rows: OutboxRow[]; byId: Map<number, Span> } {
  const byId = new Map<number, Span>();
  const traced = rows.map((row) => {
    const bullmq = row.destination.kind === 'bullmq';
    const destination = bullmq
      ? (row.destination as { queue: string }).queue
      : (row.destination as { exchange: string }).exchange;
    const attributes: Attributes = {
      [Attr.system]: bullmq ? 'bullmq' : 'rabbitmq',
      [Attr.operationType]: 'send',
      [Attr.operationName]: 'send',
      [Attr.destination]: destination,
      [Attr.messageId]: row.messageId,
      [Attr.messageType]: row.type,
    };
    if (row.headers.correlationId) attributes[Attr.conversationId] = row.headers.correlationId;
    if (!bullmq) attributes[Attr.routingKey] = (row.destination as { routingKey: string }).routingKey;
    const span = tracer.startSpan(
      `send ${destination}`,
      { kind: SpanKind.PRODUCER, attributes },
      extractContext(row.headers, ROOT_CONTEXT),
    );
    byId.set(row.id, span);
    const { traceparent: _parent, tracestate: _state, ...headers } = row.headers;
    return { ...row, headers: { ...headers, ...spanHeaders(span) } };
  });
  return { rows: traced, byId };
}

function endSendSpans(byId: Map<number, Span>, result: DeliveryResult): void {
  for (const failure of result.failed) {
    const span = byId.get(failure.id);
    if (span) failSpan(span, new Error(failure.error));
  }
  for (const span of byId.values()) span.end();
}

/**
 * The BullMQ job id of an outbox message: the message id itself, unless BullMQ would refuse it
 * (ids made only of digits clash with its own numbering; ':' is its key separator), in which case
 * a hash of it, which is just as stable.
 */
export function jobIdFor(messageId: string): string {
  if (!/^\d+$/.test(messageId) && !messageId.includes(':')) return messageId;
  return `h-${createHash('sha1').update(messageId).digest('hex')}`;
}
