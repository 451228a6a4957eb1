import type { Context } from '@opentelemetry/api';
import type { Knex } from 'knex';
import type { z } from 'zod';
import type { App } from '../shared/app.js';
import { crashPoint } from '../shared/crash-points.js';
import { classifyFailure, refusedByDatabase } from '../shared/db/failures.js';
import { databaseFailures, OutageWait, Stopped } from '../shared/db/outage.js';
import { type DeadLetterReason, deadLetterExists, storeDeadLetter } from '../shared/dead-letters.js';
import { type Envelope, Headers, type IncomingMessage } from '../shared/envelope.js';
import {
  describeCause,
  type ErrorInfo,
  InvalidMessageError,
  PoisonMessageError,
  RepeatedFailureError,
  toErrorInfo,
} from '../shared/errors.js';
import {
  finishDelivery,
  forgetDeliveries,
  inboxHas,
  insertInboxRow,
  insertInboxRows,
  startDelivery,
} from '../shared/inbox.js';
import type { Logger } from '../shared/logger.js';
import {
  handlerSeconds,
  messageCriticalSeconds,
  messageProcessingSeconds,
  messagesTotal,
  retriesTotal,
} from '../shared/metrics.js';
import { insertOutboxMessages, type OutboxMessage } from '../shared/outbox.js';
import type { QueueType } from '../shared/queue-type.js';
import { decideRetry, type RetryDecision } from '../shared/retry-policy.js';
import { sleep } from '../shared/time.js';
import { inContext, spanEvent } from '../shared/tracing.js';
import type { RetryQueues } from './retry-queues.js';
import type { EagerSteps } from './saga/eager.js';
import { runHandlersTogether, UnitOfWork } from './unit-of-work.js';

/** What schedules a delayed retry: the copy comes back to the work queue after `delayMs`. */
export type RetryScheduler = Pick<RetryQueues, 'schedule'>;

/** What the consumer does with the delivery: everything but `requeue` is acked. */
export type Outcome = 'handled' | 'duplicate' | 'retry-scheduled' | 'dead-lettered' | 'requeue';

export interface ProcessorDeps {
  app: App;
  knex: Knex;
  /** Inbox consumer name and the work queue (dead letters are replayed there). */
  queue: string;
  exchange: string;
  /** Where delayed retries go: RabbitMQ's retry queues, or a test harness's virtual-time scheduler. */
  retryQueues: RetryScheduler;
  maxMessageBytes: number;
  maxDeliveries: number;
  /**
   * The work queue's type: a quorum queue counts deliveries itself (`x-delivery-count`), a classic
   * queue needs the crash-loop accounting in dw_delivery_counts.
   */
  queueType: QueueType;
  /** Runs the first steps of sagas the handlers started, right after the commit (see EagerSteps). */
  eagerSagaSteps?: EagerSteps;
  log: Logger;
  /** Aborted on shutdown: outage backoffs stop waiting and the message is requeued. */
  signal: AbortSignal;
}

/** One delivery of a batch, with the trace context its work runs in (its consumer span). */
export interface BatchItem {
  incoming: IncomingMessage;
  context?: Context;
}

/** A first delivery that validated: it runs in the batch's transaction. */
interface BatchMember {
  index: number;
  incoming: IncomingMessage;
  context: Context | undefined;
  envelope: Envelope;
  payloads: unknown[];
  log: Logger;
}

/** What threw in a batch's transaction: one message's handler, or a batch handler's call. */
type Failing = { member: BatchMember } | { batchHandlerOf: string };

class DeadLetter {
  constructor(
    readonly reason: DeadLetterReason,
    readonly error: ErrorInfo,
    /** The parsed body, when it parsed. */
    readonly payload?: unknown,
  ) {}
}

/** Headers RabbitMQ adds when a retry copy expires back into the work queue; they grow with each round. */
function withoutBrokerDeathHeaders(headers: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(headers).filter(([name]) => !/^x-(first-|last-)?death/.test(name)),
  );
}

/**
 * Handles one message end to end: validation at the edge, then one transaction with the inbox row,
 * the handlers' writes and the outbox rows; immediate retries in process, delayed retries through
 * RabbitMQ, the dead letters when retries are exhausted or cannot help. A database outage is waited
 * out without spending attempts, so it never sends good messages to the dead letters.
 */
export class MessageProcessor {
  /** Holds every message in flight while the database is down, logging the outage once. */
  private readonly outages: OutageWait;
  /** Unexpected failures per message id, in a row: bounded, so a failure outside the handler cannot loop. */
  private readonly unexpectedFailures = new Map<string, number>();

  constructor(private readonly deps: ProcessorDeps) {
    this.outages = new OutageWait({
      classify: databaseFailures(deps.knex),
      signal: deps.signal,
      log: deps.log,
      downMessage: 'database unavailable; holding messages until it is back',
      backMessage: 'database reachable again; handling resumes',
      outageBackoff: { baseMs: 50, maxMs: 5000 },
    });
  }

  /**
   * `holdRetries` (ordered deliveries, worker/ordered-consumer.ts): a delayed retry waits in place,
   * holding the delivery, instead of going through the retry queues, where later messages of its
   * key would overtake it; 'requeue' (left unacked) if the signal aborts meanwhile.
   */
  async process(incoming: IncomingMessage, options: { holdRetries?: AbortSignal } = {}): Promise<Outcome> {
    const started = process.hrtime.bigint();
    // Set once a redelivery was recorded as started (see checkRedelivery): settled or requeued,
    // it finished and must not count as a delivery that died.
    const delivery = { recorded: false };
    let outcome: Outcome;
    try {
      outcome = await this.processInner(incoming, delivery, options.holdRetries);
      // A requeue keeps the count: a retry that cannot be scheduled is counted like a failure.
      if (outcome !== 'requeue') this.unexpectedFailures.delete(incoming.id);
    } catch (error) {
      outcome = await this.afterUnexpectedFailure(incoming, error);
    }
    if (delivery.recorded) await this.finishRecordedDelivery(incoming.id, outcome);
    record(incoming, outcome, started);
    return outcome;
  }

  /**
   * Handles deliveries at hand together; `settled` gets each item's outcome as soon as it is known.
   * The first deliveries that validate run in one transaction: one inbox insert telling the
   * duplicates apart, each message's handlers in delivery order (each with its own UnitOfWork; a run
   * of messages of a type with a batch handler together, see runHandlersTogether), one outbox
   * insert, one commit, then the eager saga steps and onCommit hooks. Redeliveries (they need the
   * redelivery verdict) and invalid messages take the one-by-one path. If a handler throws, or the
   * transaction fails for any other reason than a database outage, the batch rolls back and its
   * messages are handled one by one, so only the failing one is retried or dead-lettered and each
   * keeps every guarantee of that path; the batch's run is not counted as an attempt. An outage is
   * waited out and the batch runs again; on shutdown its messages are requeued.
   */
  async processBatch(
    items: readonly BatchItem[],
    settled: (index: number, outcome: Outcome) => void,
  ): Promise<void> {
    const members: BatchMember[] = [];
    /** Items the one-by-one path handles: invalid (dead-lettered there) or redelivered. */
    const alone: number[] = [];
    /** A message id twice in the batch: its later copies are duplicates once the batch commits. */
    const repeats: number[] = [];
    const ids = new Set<string>();
    for (const [index, { incoming, context }] of items.entries()) {
      const validated = incoming.redelivered ? undefined : this.validate(incoming);
      if (!validated || validated instanceof DeadLetter) alone.push(index);
      else if (ids.has(incoming.id)) repeats.push(index);
      else {
        ids.add(incoming.id);
        const log = this.deps.log.child({ messageId: incoming.id, type: incoming.type });
        const envelope = envelopeOf(incoming, validated.type);
        members.push({ index, incoming, context, envelope, payloads: validated.payloads, log });
      }
    }
    const oneByOne = async (index: number) => {
      const item = items[index]!;
      settled(index, await inContext(item.context, () => this.process(item.incoming)));
    };
    if (members.length <= 1) {
      for (const index of items.keys()) await oneByOne(index);
      return;
    }
    const started = process.hrtime.bigint();
    const result = await this.whileDatabaseDown(() => this.runBatch(members), this.deps.log);
    if (result === 'requeue') {
      for (const index of [...members.map((m) => m.index), ...repeats]) {
        record(items[index]!.incoming, 'requeue', started);
        settled(index, 'requeue');
      }
    } else if ('error' in result) {
      const failing = result.failing;
      const log = failing && 'member' in failing ? failing.member.log : this.deps.log;
      log.info(
        {
          err: result.error,
          batch: members.length,
          ...(failing && 'batchHandlerOf' in failing ? { batchHandlerOf: failing.batchHandlerOf } : {}),
        },
        failing
          ? 'handler failed in a batch; the batch rolled back and its messages are handled one by one'
          : 'batch transaction failed; its messages are handled one by one',
      );
      const fallback = [...members.map((m) => m.index), ...repeats].sort((a, b) => a - b);
      for (const index of fallback) await oneByOne(index);
    } else {
      crashPoint('worker:batch-after-commit-before-ack');
      for (const member of members) {
        const outcome: Outcome = result.fresh.has(member.incoming.id) ? 'handled' : 'duplicate';
        if (outcome === 'handled') crashPoint('worker:after-commit-before-ack');
        else member.log.debug('duplicate message: already processed, no effect');
        this.unexpectedFailures.delete(member.incoming.id);
        record(member.incoming, outcome, started);
        settled(member.index, outcome);
      }
      for (const index of repeats) {
        record(items[index]!.incoming, 'duplicate', started);
        settled(index, 'duplicate');
      }
    }
    for (const index of alone) await oneByOne(index);
  }

  /**
   * The batch's transaction. Returns the ids it recorded in the inbox (the others were handled
   * before), or the application failure that rolled it back with the member whose handler threw;
   * database outages and transient failures are thrown (whileDatabaseDown runs the batch again).
   */
  private async runBatch(
    members: readonly BatchMember[],
  ): Promise<{ fresh: Set<string> } | { error: unknown; failing: Failing | undefined }> {
    const { knex, app, exchange, queue, eagerSagaSteps } = this.deps;
    const works = members.map((m) => new UnitOfWork(app, exchange, m.log));
    let failing: Failing | undefined;
    let written: readonly OutboxMessage[] = [];
    let fresh: Set<string>;
    try {
      fresh = await knex.transaction(async (trx) => {
        const inserted = await insertInboxRows(
          trx,
          queue,
          members.map((m) => m.incoming.id),
        );
        const toHandle = members.flatMap((member, k) =>
          inserted.has(member.incoming.id) ? [{ member, work: works[k]!, ...member }] : [],
        );
        for (let i = 0; i < toHandle.length; ) {
          const { type } = toHandle[i]!.envelope;
          // A type with a batch handler takes the run of fresh messages of that type that starts
          // here: messages of other types keep their place in delivery order around it.
          let end = i + 1;
          if (hasBatchHandler(app, type))
            while (end < toHandle.length && toHandle[end]!.envelope.type === type) end++;
          await runHandlersTogether(app, trx, type, toHandle.slice(i, end), (running) => {
            failing = running ? { member: running.member } : { batchHandlerOf: type };
          });
          i = end;
        }
        failing = undefined;
        const outbox: OutboxMessage[] = [];
        for (const [i, member] of members.entries()) {
          if (inserted.has(member.incoming.id)) for (const message of works[i]!.outbox) outbox.push(message);
        }
        written = eagerSagaSteps ? eagerSagaSteps.lease(outbox) : outbox;
        await insertOutboxMessages(trx, written);
        return inserted;
      });
    } catch (error) {
      for (const work of works) await work.afterRollback(error);
      if ((await classifyFailure(knex, error)) !== 'application') throw error;
      return { error, failing };
    }
    eagerSagaSteps?.run(written);
    for (const [i, member] of members.entries()) {
      if (fresh.has(member.incoming.id)) await inContext(member.context, () => works[i]!.afterCommit());
    }
    return { fresh };
  }

  /**
   * A failure outside the handler's retry machinery (a bug, a record Postgres would not store):
   * requeued after a pause, and dead-lettered with what happened once it repeats `maxDeliveries`
   * times, instead of holding a prefetch slot forever. Never lost: if even that store fails, requeue.
   */
  private async afterUnexpectedFailure(incoming: IncomingMessage, error: unknown): Promise<Outcome> {
    const { log, maxDeliveries, signal } = this.deps;
    const failures = (this.unexpectedFailures.get(incoming.id) ?? 0) + 1;
    this.unexpectedFailures.delete(incoming.id);
    const context = { err: error, messageId: incoming.id, type: incoming.type, failures };
    if (failures >= maxDeliveries && !signal.aborted) {
      try {
        await storeDeadLetter(this.deps.knex, {
          source: 'amqp',
          queue: this.deps.queue,
          messageId: incoming.id,
          type: incoming.type ?? null,
          reason: 'handler-failed',
          error: toErrorInfo(new RepeatedFailureError(failures, error)),
          attempts: incoming.attempt,
          body: incoming.body,
          headers: withoutBrokerDeathHeaders(incoming.headers),
          properties: { correlationId: incoming.correlationId, timestamp: incoming.timestamp.toISOString() },
        });
        log.error(context, 'processing failed unexpectedly again and again: dead-lettered');
        spanEvent('dw.dead_letter', () => ({
          'dw.dead_letter.reason': 'handler-failed',
          'exception.message': describeCause(error),
        }));
        return 'dead-lettered';
      } catch (storeError) {
        log.error({ ...context, storeError: describeCause(storeError) }, 'could not dead-letter either');
      }
    }
    // Keep the map small: the oldest entry goes first (a Map iterates in insertion order).
    if (this.unexpectedFailures.size >= 10_000) {
      this.unexpectedFailures.delete(this.unexpectedFailures.keys().next().value as string);
    }
    this.unexpectedFailures.set(incoming.id, failures);
    log.error(context, 'unexpected failure while processing; the message will be redelivered');
    await sleep(1000, signal);
    return 'requeue';
  }

  private async finishRecordedDelivery(messageId: string, outcome: Outcome): Promise<void> {
    const { knex, queue, log } = this.deps;
    try {
      if (outcome === 'requeue') await finishDelivery(knex, queue, messageId);
      else await forgetDeliveries(knex, queue, messageId);
    } catch (error) {
      // Rare (the database went away just now): the delivery then counts as one that died.
      log.warn({ err: error, messageId }, 'could not record the end of a redelivery');
    }
  }

  /** Validate, then the redelivery verdict, then the transaction loop, then the retry decision. */
  private async processInner(
    incoming: IncomingMessage,
    delivery: { recorded: boolean },
    holdRetries?: AbortSignal,
  ): Promise<Outcome> {
    const log = this.deps.log.child({ messageId: incoming.id, type: incoming.type });
    const validated = this.validate(incoming);
    if (validated instanceof DeadLetter) {
      log.warn(
        { reason: validated.reason, error: validated.error.message },
        'invalid message: dead-lettered',
      );
      return this.deadLetter(incoming, validated, log);
    }
    if (incoming.redelivered) {
      const verdict = await this.redeliveryVerdict(incoming, delivery, validated.payload, log);
      if (verdict !== 'ok') return verdict;
    }

    const policy = this.deps.app.retryPolicyFor(validated.type);
    const envelope = envelopeOf(incoming, validated.type);
    // When the first attempt failed: kept across retries for the dead-letter entry.
    let firstFailedAt = stringOrUndefined(incoming.headers[Headers.firstFailedAt]);
    for (;;) {
      const result = await this.whileDatabaseDown(
        () => this.runTransaction(envelope, validated.payloads, log),
        log,
      );
      if (result === 'handled' || result === 'duplicate' || result === 'requeue') {
        if (result !== 'requeue') crashPoint('worker:after-commit-before-ack');
        return result;
      }
      const error = result.error;
      if (refusedByDatabase(error)) return this.deadLetterRefused(incoming, error, validated.payload, log);
      firstFailedAt ??= new Date().toISOString();
      const decision = decideRetry(policy, envelope.attempt, error);
      if (decision.kind === 'immediate') {
        // Retries are expected and the final failure is logged as an error: keep these quieter.
        log.info({ err: error, attempt: envelope.attempt }, 'handler failed; retrying at once');
        spanEvent('dw.retry', () => retryEvent('immediate', envelope.attempt, error));
        retriesTotal.inc({ tier: 'immediate' });
        envelope.attempt = decision.nextAttempt;
        continue;
      }
      if (decision.kind === 'delayed' && holdRetries) {
        log.info(
          { err: error, attempt: envelope.attempt, delayMs: decision.delayMs },
          'handler failed; retrying in place after a delay (ordered key: later messages of the key wait)',
        );
        spanEvent('dw.retry', () => ({
          ...retryEvent('delayed', envelope.attempt, error),
          'dw.retry.delay_ms': decision.delayMs,
        }));
        retriesTotal.inc({ tier: `${decision.tierMs}ms` });
        await sleep(decision.delayMs, holdRetries);
        if (holdRetries.aborted) return 'requeue';
        envelope.attempt = decision.nextAttempt;
        continue;
      }
      if (decision.kind === 'delayed') {
        return this.scheduleRetry(
          incoming,
          decision,
          { error, attempt: envelope.attempt, firstFailedAt },
          log,
        );
      }
      log.error(
        { err: error, attempt: envelope.attempt, why: decision.why },
        'handler failed for good: dead-lettered',
      );
      return this.deadLetter(
        {
          ...incoming,
          attempt: envelope.attempt,
          headers: { ...incoming.headers, [Headers.firstFailedAt]: firstFailedAt },
        },
        new DeadLetter('handler-failed', toErrorInfo(error), validated.payload),
        log,
      );
    }
  }

  /**
   * What a redelivery comes to before its handlers run: 'ok' to handle it, or the outcome when it
   * was handled or dead-lettered already, is poison (dead-lettered now), or shutdown started.
   */
  private async redeliveryVerdict(
    incoming: IncomingMessage,
    delivery: { recorded: boolean },
    payload: unknown,
    log: Logger,
  ): Promise<Outcome | 'ok'> {
    const verdict = await this.whileDatabaseDown(() => this.checkRedelivery(incoming, delivery), log);
    if (verdict === 'duplicate') log.debug('redelivered message: already processed, no effect');
    if (!(verdict instanceof DeadLetter)) return verdict;
    log.error({ reason: verdict.reason, error: verdict.error.message }, 'poison message: dead-lettered');
    return this.deadLetter(incoming, new DeadLetter(verdict.reason, verdict.error, payload), log);
  }

  /** The same bytes fail the same way every time: retrying cannot help. */
  private deadLetterRefused(
    incoming: IncomingMessage,
    error: unknown,
    payload: unknown,
    log: Logger,
  ): Promise<Outcome> {
    log.warn({ err: error }, 'PostgreSQL refused the payload: dead-lettered');
    return this.deadLetter(
      incoming,
      new DeadLetter(
        'invalid-payload',
        toErrorInfo(
          new InvalidMessageError(
            'invalid-payload',
            `PostgreSQL refused what handling this message wrote (${describeCause(error)}); its body is kept byte for byte in the dead letter. Reject such input in the schema (e.g. NUL or lone surrogates in strings, deep nesting)`,
          ),
        ),
        payload,
      ),
      log,
    );
  }

  /** Sends a copy through the retry queue of `decision`'s tier; the delivery in hand is then acked. */
  private async scheduleRetry(
    incoming: IncomingMessage,
    decision: Extract<RetryDecision, { kind: 'delayed' }>,
    failed: { error: unknown; attempt: number; firstFailedAt: string },
    log: Logger,
  ): Promise<Outcome> {
    log.info(
      { err: failed.error, attempt: failed.attempt, delayMs: decision.delayMs },
      'handler failed; retrying after a delay',
    );
    spanEvent('dw.retry', () => ({
      ...retryEvent('delayed', failed.attempt, failed.error),
      'dw.retry.delay_ms': decision.delayMs,
    }));
    try {
      await this.deps.retryQueues.schedule(decision.tierMs, decision.delayMs, incoming.body, {
        messageId: incoming.id,
        type: incoming.type,
        correlationId: incoming.correlationId,
        contentType: 'application/json',
        timestamp: Math.floor(incoming.timestamp.getTime() / 1000),
        persistent: true,
        headers: {
          ...withoutBrokerDeathHeaders(incoming.headers),
          [Headers.attempt]: decision.nextAttempt,
          [Headers.firstFailedAt]: failed.firstFailedAt,
        },
      });
      retriesTotal.inc({ tier: `${decision.tierMs}ms` });
      return 'retry-scheduled';
    } catch (publishError) {
      // The message stays unacked and comes back with the same attempt. Paused and counted like
      // any failure outside the handler: a retry queue the broker keeps refusing (other arguments,
      // a reject-publish policy) must not spin the message for ever.
      log.warn({ err: publishError }, 'could not schedule the retry; the message will be redelivered');
      return this.afterUnexpectedFailure(incoming, publishError);
    }
  }

  /** Checks at the edge; nothing here touches the database. */
  private validate(
    incoming: IncomingMessage,
  ): DeadLetter | { type: string; payload: unknown; payloads: unknown[] } {
    if (incoming.body.length > this.deps.maxMessageBytes) {
      return new DeadLetter(
        'invalid-payload',
        toErrorInfo(
          new InvalidMessageError(
            'invalid-payload',
            `message body is ${incoming.body.length} bytes, over the limit of ${this.deps.maxMessageBytes} (WorkerOptions.maxMessageBytes)`,
          ),
        ),
      );
    }
    if (incoming.id.includes('\0')) {
      // The id is the inbox key, a text column: PostgreSQL cannot store NUL in text.
      return new DeadLetter(
        'invalid-payload',
        toErrorInfo(
          new InvalidMessageError(
            'invalid-payload',
            'the messageId contains a NUL character, which PostgreSQL cannot store as the inbox key; publish it with another messageId',
          ),
        ),
      );
    }
    let payload: unknown;
    try {
      payload = JSON.parse(incoming.body.toString('utf8'));
    } catch (error) {
      return new DeadLetter(
        'invalid-json',
        toErrorInfo(new InvalidMessageError('invalid-json', `body is not JSON: ${(error as Error).message}`)),
      );
    }
    const type = incoming.type;
    const handlers = type ? this.deps.app.handlers.get(type) : undefined;
    if (!type || !handlers?.length) {
      return new DeadLetter(
        'unknown-type',
        toErrorInfo(
          new InvalidMessageError(
            'unknown-type',
            type
              ? `no handler for message type "${type}" in app ${this.deps.app.name}`
              : 'message has neither a type property nor a routing key',
          ),
        ),
        payload,
      );
    }
    const payloads: unknown[] = [];
    for (const handler of handlers) {
      const parsed = (handler.schema as z.ZodType).safeParse(payload);
      if (!parsed.success) {
        const issues = parsed.error.issues
          .map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`)
          .join('; ');
        return new DeadLetter(
          'invalid-payload',
          toErrorInfo(
            new InvalidMessageError(
              'invalid-payload',
              `${type} payload does not match its schema: ${issues}`,
            ),
          ),
          payload,
        );
      }
      payloads.push(parsed.data);
    }
    return { type, payload, payloads };
  }

  /**
   * A redelivered message was in flight when a worker died or lost its connection, was requeued,
   * or kills the worker each time. Already committed (the inbox holds it) or dead-lettered (the
   * process died between storing and acking): just ack. Otherwise, past `maxDeliveries`
   * redeliveries that died the message is poison. A quorum queue counts them itself
   * (deliveryCountVerdict); on a classic queue this delivery is recorded as started, and the
   * recorded deliveries that never finished are the ones that died. The first delivery is never
   * recorded (no write on the hot path), so a prefetched bystander that never started is not
   * taken for a death.
   */
  private async checkRedelivery(
    incoming: IncomingMessage,
    delivery: { recorded: boolean },
  ): Promise<DeadLetter | 'duplicate' | 'dead-lettered' | 'ok'> {
    const { knex, queue, maxDeliveries, queueType } = this.deps;
    if (await inboxHas(knex, queue, incoming.id)) return 'duplicate';
    if (!incoming.headers[Headers.replayedFrom] && (await deadLetterExists(knex, queue, incoming.id))) {
      return 'dead-lettered';
    }
    if (queueType === 'quorum') return deliveryCountVerdict(incoming, maxDeliveries);
    const unfinished = await startDelivery(knex, queue, incoming.id);
    delivery.recorded = true;
    // This one is among them; the others died (or, rarely, still run after a connection loss).
    const died = unfinished - 1;
    if (died >= maxDeliveries) {
      return new DeadLetter('handler-failed', toErrorInfo(new PoisonMessageError(died, maxDeliveries)));
    }
    return 'ok';
  }

  private async runTransaction(
    envelope: Envelope,
    payloads: readonly unknown[],
    log: Logger,
  ): Promise<'handled' | 'duplicate' | { error: unknown }> {
    const { knex, app, exchange, queue, eagerSagaSteps } = this.deps;
    const uow = new UnitOfWork(app, exchange, log);
    let result: 'handled' | 'duplicate';
    let written: readonly OutboxMessage[] = [];
    try {
      result = await knex.transaction(async (trx) => {
        if (!(await insertInboxRow(trx, queue, envelope.id))) return 'duplicate';
        await uow.runHandlers(trx, envelope, payloads);
        written = eagerSagaSteps ? eagerSagaSteps.lease(uow.outbox) : uow.outbox;
        await insertOutboxMessages(trx, written);
        return 'handled';
      });
    } catch (error) {
      await uow.afterRollback(error);
      // An outage or a serialization conflict is not the handler's fault: whileDatabaseDown runs it again.
      if ((await classifyFailure(knex, error)) !== 'application') throw error;
      return { error };
    }
    if (result === 'handled') {
      eagerSagaSteps?.run(written);
      await uow.afterCommit();
    } else {
      log.debug('duplicate message: already processed, no effect');
    }
    return result;
  }

  private async deadLetter(incoming: IncomingMessage, dead: DeadLetter, log: Logger): Promise<Outcome> {
    const { knex, queue } = this.deps;
    spanEvent('dw.dead_letter', () => ({
      'dw.dead_letter.reason': dead.reason,
      'exception.message': dead.error.message,
    }));
    const firstFailedAt = incoming.headers[Headers.firstFailedAt];
    const result = await this.whileDatabaseDown(async () => {
      await storeDeadLetter(knex, {
        source: 'amqp',
        queue,
        messageId: incoming.id,
        type: incoming.type ?? null,
        reason: dead.reason,
        error: dead.error,
        attempts: incoming.attempt,
        firstFailedAt: validDate(firstFailedAt),
        payload: dead.payload,
        body: incoming.body,
        headers: withoutBrokerDeathHeaders(incoming.headers),
        properties: { correlationId: incoming.correlationId, timestamp: incoming.timestamp.toISOString() },
      });
      return 'dead-lettered' as const;
    }, log);
    if (result === 'dead-lettered') crashPoint('worker:after-dead-letter-before-ack');
    return result;
  }

  /**
   * Runs `fn` until it stops failing for lack of a database (outage, restart, terminated session,
   * serialization conflict), backing off up to 5 s. Returns 'requeue' if shutdown starts meanwhile.
   */
  private async whileDatabaseDown<T>(fn: () => Promise<T>, log: Logger): Promise<T | 'requeue'> {
    if (this.deps.signal.aborted) return 'requeue';
    const result = await this.outages.run(fn, log);
    return result instanceof Stopped ? 'requeue' : result;
  }
}

/**
 * The crash-loop verdict on a quorum queue, without a write: the broker's `x-delivery-count` is
 * how many deliveries of the message went back to the queue unacked (the process died, its
 * connection or channel was lost; before RabbitMQ 4.3 a requeue too). The first of them is not
 * counted, as on a classic queue, so `maxDeliveries` means the same on both. Only read on a
 * redelivery: RabbitMQ sets the header itself then, whatever a publisher put there.
 */
function deliveryCountVerdict(incoming: IncomingMessage, maxDeliveries: number): DeadLetter | 'ok' {
  const count = Number(incoming.headers['x-delivery-count']);
  const died = Number.isSafeInteger(count) ? count - 1 : 0;
  if (died < maxDeliveries) return 'ok';
  return new DeadLetter('handler-failed', toErrorInfo(new PoisonMessageError(died, maxDeliveries)));
}

/** Per-message metrics, whichever path handled the message. */
function record(incoming: IncomingMessage, outcome: Outcome, started: bigint): void {
  messagesTotal.inc({ outcome });
  if (outcome !== 'handled') return;
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  handlerSeconds.observe(seconds);
  // Handled: the type is one of the app's, so the label stays bounded.
  const type = incoming.type ?? '';
  messageProcessingSeconds.observe({ type }, seconds);
  messageCriticalSeconds.observe({ type }, Math.max(0, Date.now() - incoming.timestamp.getTime()) / 1000);
}

function hasBatchHandler(app: App, type: string): boolean {
  return app.handlers.get(type)?.some((h) => h.handleBatch) ?? false;
}

function envelopeOf(incoming: IncomingMessage, type: string): Envelope {
  return {
    id: incoming.id,
    type,
    correlationId: incoming.correlationId,
    causationId: incoming.causationId,
    traceparent: incoming.traceparent,
    attempt: incoming.attempt,
    timestamp: incoming.timestamp,
    headers: incoming.headers,
  };
}

function retryEvent(kind: 'immediate' | 'delayed', attempt: number, error: unknown) {
  return { 'dw.retry.kind': kind, 'dw.retry.attempt': attempt, 'exception.message': describeCause(error) };
}

function stringOrUndefined(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  return undefined;
}

function validDate(value: unknown): Date | undefined {
  const text = stringOrUndefined(value);
  const date = text ? new Date(text) : undefined;
  return date && !Number.isNaN(date.getTime()) ? date : undefined;
}
