import { randomUUID } from 'node:crypto';
import { type Attributes, type Context, context } from '@opentelemetry/api';
import type { Knex } from 'knex';
import type { App, HandlerContext, NonEmptyBatch, SendOptions, StartSagaOptions } from '../shared/app.js';
import type { Envelope } from '../shared/envelope.js';
import { InvalidOrderingKeyError, NonRetryableError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import { assertOrderingKey, orderedExchangeName } from '../shared/ordering.js';
import { type Destination, type OutboxMessage, resolveDestination } from '../shared/outbox.js';
import type { SagaDefinition } from '../shared/saga/definition.js';
import { startSaga } from '../shared/saga/start.js';
import { Attr, inContext, inSpan, traceHeaders, tracingOn } from '../shared/tracing.js';

/**
 * Outbox messages and hooks gathered by handlers, per savepoint level: a dispatch that rolls back
 * to its savepoint drops its outbox messages and commit hooks, and runs its rollback hooks.
 */
class Scope {
  readonly outbox: OutboxMessage[] = [];
  readonly commitHooks: Array<() => unknown> = [];
  readonly rollbackHooks: Array<(error: unknown) => unknown> = [];

  absorb(child: Scope): void {
    this.outbox.push(...child.outbox);
    this.commitHooks.push(...child.commitHooks);
    this.rollbackHooks.push(...child.rollbackHooks);
  }
}

/** The work of one message in one transaction: its handlers, their outbox messages and hooks. */
export class UnitOfWork {
  private readonly root = new Scope();

  constructor(
    private readonly app: App,
    private readonly exchange: string,
    private readonly log: Logger,
  ) {}

  /** Outbox messages to insert before commit. */
  get outbox(): readonly OutboxMessage[] {
    return this.root.outbox;
  }

  /** Runs every handler of the envelope's type with `payloads[i]` validated for handler i. */
  async runHandlers(trx: Knex.Transaction, envelope: Envelope, payloads: readonly unknown[]): Promise<void> {
    await this.runIn(this.root, trx, envelope, payloads);
  }

  async afterCommit(): Promise<void> {
    for (const hook of this.root.commitHooks) {
      try {
        await hook();
      } catch (error) {
        this.log.error({ err: error }, 'an onCommit hook failed (the transaction is committed)');
      }
    }
  }

  async afterRollback(error: unknown): Promise<void> {
    await runRollbackHooks(this.root, error, this.log);
  }

  /**
   * The context handlers of this message get, for a batch handler's entry. `traceContext` is the
   * message's own consumer span: what the entry sends is its child, whichever span the batch
   * handler's call runs in.
   */
  batchContext(trx: Knex.Transaction, envelope: Envelope, traceContext?: Context): HandlerContext {
    return this.context(this.root, trx, envelope, traceContext);
  }

  private async runIn(
    scope: Scope,
    trx: Knex.Transaction,
    envelope: Envelope,
    payloads: readonly unknown[],
  ): Promise<void> {
    const handlers = this.app.handlers.get(envelope.type) ?? [];
    const ctx = this.context(scope, trx, envelope);
    for (const [i, handler] of handlers.entries()) {
      await runHandler(envelope.type, i, { [Attr.messageId]: envelope.id }, () =>
        handler.handle(payloads[i], ctx),
      );
    }
  }

  private context(
    scope: Scope,
    trx: Knex.Transaction,
    envelope: Envelope,
    traceContext?: Context,
  ): HandlerContext {
    // The context of the span that sends (the handler's, a dispatch's), taken now: the relay's span
    // and whatever consumes the message become its children. Without tracing the incoming
    // traceparent is passed on as it came.
    const headers = (): Record<string, string> => ({
      correlationId: envelope.correlationId,
      causationId: envelope.id,
      ...traceHeaders(envelope.traceparent, traceContext ?? context.active()),
    });
    const send = (destination: Destination, type: string, payload: unknown, options: SendOptions = {}) => {
      const messageId = options.id ?? randomUUID();
      const resolved = resolveDestination(destination);
      const orderingKey =
        options.orderingKey === undefined ? undefined : assertOrderingKey(options.orderingKey);
      if (orderingKey !== undefined && resolved.kind !== 'amqp')
        throw new InvalidOrderingKeyError(
          'an ordering key applies to AMQP messages (ctx.publish), not to BullMQ jobs',
        );
      scope.outbox.push({
        messageId,
        destination: resolved,
        type,
        payload,
        headers: orderingKey === undefined ? headers() : { ...headers(), orderingKey },
        ...(options.delay ? { options: { delay: options.delay } } : {}),
      });
      return messageId;
    };
    return {
      trx,
      envelope,
      log: this.log,
      send,
      publish: (type, payload, options) => {
        // Keyed messages go to the ordered exchange, whose partitions keep each key in order.
        const exchange =
          options?.orderingKey === undefined ? this.exchange : orderedExchangeName(this.exchange);
        return send({ exchange, routingKey: type }, type, payload, options);
      },
      dispatch: (type, payload) =>
        inContext(traceContext, () => this.dispatch(scope, trx, envelope, type, payload)),
      onCommit: (fn) => {
        scope.commitHooks.push(fn);
      },
      onRollback: (fn) => {
        scope.rollbackHooks.push(fn);
      },
      startSaga: (saga, input, options) =>
        inContext(traceContext, () => this.startSaga(scope, trx, envelope, saga, input, options)),
    };
  }

  private async startSaga<State extends object>(
    scope: Scope,
    trx: Knex.Transaction,
    envelope: Envelope,
    saga: SagaDefinition<State>,
    input: State,
    options: StartSagaOptions = {},
  ): Promise<{ id: string; started: boolean }> {
    // Only the app's own sagas have a step runner; any other would stay `running` for ever.
    if (this.app.sagaDefinition(saga.name, saga.version) !== saga) {
      throw new NonRetryableError(
        `saga ${saga.name}${this.app.sagas.has(saga.name) ? ` version ${saga.version}` : ''} is not registered in app ${this.app.name}: add it to defineApp({ sagas: [...] })`,
      );
    }
    const started = await startSaga(trx, {
      // New instances start on the newest version, whichever version the handler names.
      saga: this.app.sagas.get(saga.name)!,
      input,
      id: options.id,
      correlationId: envelope.correlationId,
      causationId: envelope.id,
    });
    scope.outbox.push(...started.outbox);
    return { id: started.id, started: started.started };
  }

  private async dispatch(
    parent: Scope,
    trx: Knex.Transaction,
    parentEnvelope: Envelope,
    type: string,
    payload: unknown,
  ): Promise<void> {
    const handlers = this.app.handlers.get(type);
    if (!handlers?.length)
      throw new NonRetryableError(`dispatch: this app has no handler for message type ${type}`);
    const payloads = handlers.map((h) => {
      const parsed = h.schema.safeParse(payload);
      if (!parsed.success)
        throw new NonRetryableError(`dispatch: invalid ${type} payload: ${parsed.error.message}`);
      return parsed.data;
    });
    const envelope: Envelope = {
      ...parentEnvelope,
      id: randomUUID(),
      type,
      causationId: parentEnvelope.id,
    };
    const scope = new Scope();
    try {
      // A nested knex transaction is a savepoint inside the message's transaction.
      await inSpan(
        `dispatch ${type}`,
        { attributes: { [Attr.messageType]: type, [Attr.messageId]: envelope.id } },
        () => trx.transaction((savepoint) => this.runIn(scope, savepoint, envelope, payloads)),
      );
    } catch (error) {
      await runRollbackHooks(scope, error, this.log);
      throw error;
    }
    parent.absorb(scope);
  }
}

/** A message of a batch whose type has a batch handler. */
export interface GroupMember {
  work: UnitOfWork;
  envelope: Envelope;
  payloads: readonly unknown[];
  /** The message's consumer span (tracing on). */
  context?: Context;
}

/**
 * Runs the handlers of one message type for a run of consecutive messages of a batch (one message
 * unless the type has a batch handler), in the batch's transaction, handler by handler in
 * registration order: a batch handler once with every message, any other handler once per message.
 * Each message keeps its handlers' order, and its own outbox rows and hooks. `running` names the
 * message a failure would belong to (undefined while a batch handler runs for all of them).
 */
export async function runHandlersTogether<M extends GroupMember>(
  app: App,
  trx: Knex.Transaction,
  type: string,
  members: readonly M[],
  running: (member: M | undefined) => void,
): Promise<void> {
  // A handler per message sends from its own `handle` span, as on the one-by-one path; a batch
  // handler's entry from its message's consumer span, not from the batch call's span (one trace).
  const own = members.map((m) => m.work.batchContext(trx, m.envelope));
  let entries: HandlerContext[] | undefined;
  for (const [i, handler] of (app.handlers.get(type) ?? []).entries()) {
    const { handleBatch } = handler;
    if (handleBatch) {
      running(undefined);
      entries ??= members.map((m) => m.work.batchContext(trx, m.envelope, m.context));
      const contexts = entries;
      const batch = members.map((m, k) => ({ message: m.payloads[i], ctx: contexts[k]! }));
      await inContext(members[0]?.context, () =>
        runHandler(type, i, { [Attr.batchSize]: batch.length }, () =>
          handleBatch(batch as unknown as NonEmptyBatch<unknown>),
        ),
      );
      continue;
    }
    for (const [k, member] of members.entries()) {
      running(member);
      await inContext(member.context, () =>
        runHandler(type, i, { [Attr.messageId]: member.envelope.id }, () =>
          handler.handle(member.payloads[i], own[k]!),
        ),
      );
    }
  }
}

/** One handler call, under a `handle <type>` span when tracing is on. */
async function runHandler(
  type: string,
  index: number,
  attributes: Attributes,
  call: () => Promise<void> | void,
): Promise<void> {
  if (!tracingOn()) return call();
  await inSpan(
    `handle ${type}`,
    { attributes: { [Attr.messageType]: type, 'dw.handler.index': index, ...attributes } },
    async () => call(),
  );
}

async function runRollbackHooks(scope: Scope, error: unknown, log: Logger): Promise<void> {
  for (const hook of scope.rollbackHooks) {
    try {
      await hook(error);
    } catch (hookError) {
      log.error({ err: hookError }, 'an onRollback hook failed');
    }
  }
}
