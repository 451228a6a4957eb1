import type { Knex } from 'knex';
import type { z } from 'zod';
import type { Migration } from './db/migrate.js';
import type { Envelope } from './envelope.js';
import { DefinitionError } from './errors.js';
import type { Logger } from './logger.js';
import type { Destination } from './outbox.js';
import { type RetryPolicy, type RetryPolicyInput, resolveRetryPolicy } from './retry-policy.js';
import { type SagaDefinition, validateSaga } from './saga/definition.js';

export interface SendOptions {
  /** Message id of the outbox row (and so the BullMQ job id). Default: a new uuid. */
  id?: string;
  /** BullMQ: run the job after this many ms. */
  delay?: number;
  /**
   * AMQP: the message's ordering key (the `x-ordering-key` header). With `publish`, the message goes
   * to the ordered exchange `<exchange>.ordered`: messages with the same key are handled one at a
   * time in the order the relay publishes them (README, "Ordered processing by key"). At most 1024
   * bytes, not empty; an invalid key throws InvalidOrderingKeyError.
   */
  orderingKey?: string;
}

export interface StartSagaOptions {
  /** Saga id; starting the same id twice is a no-op. Default: a new uuid. */
  id?: string;
}

/** What a message handler receives next to the validated message. */
export interface HandlerContext {
  /** The transaction of this message: inbox row, the handler's writes and the outbox rows commit together. */
  trx: Knex.Transaction;
  envelope: Envelope;
  log: Logger;
  /** Adds an outbox message (a BullMQ job, or an AMQP publish) that is sent only if this transaction commits. */
  send(destination: Destination, type: string, payload: unknown, options?: SendOptions): string;
  /** Publishes an integration event on the app's exchange (routing key = type), through the outbox. */
  publish(type: string, payload: unknown, options?: SendOptions): string;
  /**
   * Runs this app's handlers of `type` now, inside this transaction, under a savepoint: if they
   * throw, their writes roll back to the savepoint and the error propagates unless caught.
   */
  dispatch(type: string, payload: unknown): Promise<void>;
  /** Runs after the transaction committed (effects outside the database). Errors are logged. */
  onCommit(fn: () => unknown): void;
  /** Runs after the transaction (or the enclosing dispatch's savepoint) rolled back. */
  onRollback(fn: (error: unknown) => unknown): void;
  /** Starts a saga in this transaction: its row and first steps commit with the handler's writes. */
  startSaga<State extends object>(
    saga: SagaDefinition<State>,
    input: State,
    options?: StartSagaOptions,
  ): Promise<{ id: string; started: boolean }>;
}

export interface HandlerOptions {
  /** Retry policy of this message type. Default: the app's `retry`, else 2 immediate + 3 delayed retries. */
  retry?: RetryPolicyInput;
}

/** One message of a batch handler's call: the validated message and its own context. */
export interface BatchEntry<T> {
  message: T;
  /**
   * This message's context: its envelope, and `send`, `publish`, `startSaga`, `onCommit` on its
   * behalf (causation id, correlation id, trace). `ctx.trx` is the batch's transaction, the same
   * for every entry.
   */
  ctx: HandlerContext;
}

/** A batch handler's batch: never empty, so `batch[0].ctx.trx` is the transaction. */
export type NonEmptyBatch<T> = readonly [BatchEntry<T>, ...BatchEntry<T>[]];

export interface HandlerDefinition<S extends z.ZodType = z.ZodType> {
  readonly type: string;
  readonly schema: S;
  readonly handle: (message: z.output<S>, ctx: HandlerContext) => Promise<void> | void;
  /**
   * Set by defineBatchHandler, and only there: the messages of a batch in one call (`handle`
   * calls it with one), so a message runs the same code batched or not.
   */
  readonly handleBatch?: (batch: NonEmptyBatch<z.output<S>>) => Promise<void> | void;
  readonly options: HandlerOptions;
}

/** Registers `handle` for messages of `type`; the payload is validated by `schema` before it is called. */
export function defineHandler<S extends z.ZodType>(
  type: string,
  schema: S,
  handle: (message: z.output<S>, ctx: HandlerContext) => Promise<void> | void,
  options: HandlerOptions = {},
): HandlerDefinition<S> {
  return { type, schema, handle, options };
}

/**
 * Registers `handleBatch` for messages of `type`: when the worker handles several deliveries of the
 * type in one transaction (`batchSize`), it gets them all in one call, so it can write them with
 * multi-row statements (MassTransit's `Batch<T>` consumers). Each entry keeps its own context, and
 * every guarantee stays per message: if the call throws, the transaction rolls back and each message
 * is handled again alone, in a call with a batch of one, so only the failing message is retried or
 * dead-lettered. A batch is whatever was at hand (never waited for), so it may hold one message.
 * Duplicates are left out before the call.
 */
export function defineBatchHandler<S extends z.ZodType>(
  type: string,
  schema: S,
  handleBatch: (batch: NonEmptyBatch<z.output<S>>) => Promise<void> | void,
  options: HandlerOptions = {},
): HandlerDefinition<S> {
  return { type, schema, handle: (message, ctx) => handleBatch([{ message, ctx }]), handleBatch, options };
}

export interface AppInput {
  /** Endpoint name: names the work queue (`<exchange>.<name>`) and the inbox consumer. Default "app". */
  name?: string;
  handlers?: readonly HandlerDefinition<z.ZodType>[];
  /**
   * The app's sagas. Several versions of one saga (same name, distinct `version`) may be listed:
   * instances run to the end on the version they started with; new ones start on the newest.
   */
  // biome-ignore lint/suspicious/noExplicitAny: sagas of any state type live side by side
  sagas?: readonly SagaDefinition<any>[];
  /** The app's own tables, applied by `dw migrate` after durable-worker's. */
  migrations?: readonly Migration[];
  /** Retry policy of message types whose handlers set none. */
  retry?: RetryPolicyInput;
}

export interface App {
  name: string;
  /** Handlers per message type, in registration order. */
  handlers: ReadonlyMap<string, readonly HandlerDefinition<z.ZodType>[]>;
  /** The newest version of each saga, by name: what new instances start on. */
  // biome-ignore lint/suspicious/noExplicitAny: see AppInput
  sagas: ReadonlyMap<string, SagaDefinition<any>>;
  /** Every registered version of each saga, by name, then version. */
  // biome-ignore lint/suspicious/noExplicitAny: see AppInput
  sagaVersions: ReadonlyMap<string, ReadonlyMap<number, SagaDefinition<any>>>;
  /** The definition instances of `name` started on `version` run on; undefined when the app lacks it. */
  // biome-ignore lint/suspicious/noExplicitAny: see AppInput
  sagaDefinition(name: string, version: number): SagaDefinition<any> | undefined;
  migrations: readonly Migration[];
  retryPolicyFor(type: string): RetryPolicy;
}

/** Builds an app, refusing definitions that cannot work (with a message that says which and why). */
export function defineApp(input: AppInput): App {
  const name = input.name ?? 'app';
  if (!/^[A-Za-z0-9_.-]{1,100}$/.test(name)) {
    throw new DefinitionError(`app name "${name}" may hold letters, digits, _ . - only`);
  }
  const handlers = new Map<string, HandlerDefinition<z.ZodType>[]>();
  const policies = new Map<string, RetryPolicy>();
  const appPolicy = resolveRetryPolicy(input.retry);
  for (const h of input.handlers ?? []) {
    if (!h.type || typeof h.handle !== 'function' || typeof h.schema?.safeParse !== 'function') {
      throw new DefinitionError(`handler for "${h.type}" needs a type, a zod schema and a function`);
    }
    if (h.handleBatch !== undefined && typeof h.handleBatch !== 'function') {
      throw new DefinitionError(
        `batch handler for "${h.type}" is not a function: build it with defineBatchHandler(type, schema, fn)`,
      );
    }
    handlers.set(h.type, [...(handlers.get(h.type) ?? []), h]);
    if (h.options.retry) {
      if (policies.has(h.type)) {
        throw new DefinitionError(`message type ${h.type} has retry policies on two handlers; set it on one`);
      }
      policies.set(h.type, resolveRetryPolicy(h.options.retry, appPolicy));
    }
  }
  // biome-ignore lint/suspicious/noExplicitAny: see AppInput
  const sagaVersions = new Map<string, Map<number, SagaDefinition<any>>>();
  for (const saga of input.sagas ?? []) {
    validateSaga(saga);
    const versions = sagaVersions.get(saga.name) ?? new Map();
    if (versions.has(saga.version)) {
      throw new DefinitionError(
        `saga "${saga.name}" is registered twice with version ${saga.version}; give each definition its own version (defineSaga(name, { version }))`,
      );
    }
    sagaVersions.set(saga.name, versions.set(saga.version, saga));
  }
  // biome-ignore lint/suspicious/noExplicitAny: see AppInput
  const sagas = new Map<string, SagaDefinition<any>>();
  for (const [sagaName, versions] of sagaVersions) {
    sagas.set(sagaName, versions.get(Math.max(...versions.keys()))!);
  }
  const migrationNames = new Set<string>();
  for (const m of input.migrations ?? []) {
    if (migrationNames.has(m.name)) throw new DefinitionError(`two migrations are named "${m.name}"`);
    migrationNames.add(m.name);
  }
  return {
    name,
    handlers,
    sagas,
    sagaVersions,
    sagaDefinition: (sagaName, version) => sagaVersions.get(sagaName)?.get(version),
    migrations: input.migrations ?? [],
    retryPolicyFor: (type) => policies.get(type) ?? appPolicy,
  };
}

/**
 * Loads the app a module exports (default export, or a named `app`). A path (`./app.js`, `/srv/app.js`,
 * or `dist/app.js` naming an existing file) is taken from the current directory; anything else is a
 * package name.
 */
export async function loadApp(specifier: string): Promise<App> {
  const { pathToFileURL } = await import('node:url');
  const { isAbsolute, resolve } = await import('node:path');
  const { statSync } = await import('node:fs');
  // Without the file check, `DW_APP=dist/app.js` would be looked up as a package beside durable-worker.
  const isPath =
    specifier.startsWith('.') ||
    isAbsolute(specifier) ||
    statSync(resolve(specifier), { throwIfNoEntry: false })?.isFile() === true;
  // A device or a FIFO (`--app /dev/zero`) would be read by the module loader forever.
  if (isPath && statSync(resolve(specifier), { throwIfNoEntry: false })?.isFile() === false) {
    throw new DefinitionError(`the app module "${specifier}" (DW_APP / --app) is not a regular file`);
  }
  const target = isPath ? pathToFileURL(resolve(specifier)).href : specifier;
  let mod: { default?: unknown; app?: unknown };
  try {
    mod = await import(target);
  } catch (error) {
    throw new DefinitionError(
      `cannot load the app module "${specifier}" (DW_APP / --app): ${(error as Error).message}`,
      {
        cause: error,
      },
    );
  }
  const app = (mod.default ?? mod.app) as App | undefined;
  if (!app || !(app.handlers instanceof Map)) {
    throw new DefinitionError(
      `module "${specifier}" must export an app built with defineApp() (default or "app")`,
    );
  }
  return app;
}
