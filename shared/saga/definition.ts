import type { Knex } from 'knex';
import { stepRetryDefaults } from '../defaults.js';
import { DefinitionError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Destination } from '../outbox.js';

/** What a saga step or compensation receives. */
export interface StepContext<State> {
  /** The step's transaction: its writes commit together with the step's completion record. */
  trx: Knex.Transaction;
  sagaId: string;
  sagaName: string;
  step: string;
  phase: 'execute' | 'compensate';
  /** The saga's state as of the start of this step (a parallel group's members all see the same). */
  state: Readonly<State>;
  /** 1-based attempt of this step or compensation. */
  attempt: number;
  /** Stable per saga, step and phase: pass it to external APIs so that a retried call is not repeated. */
  idempotencyKey: string;
  correlationId: string;
  log: Logger;
  /**
   * Aborted when the attempt passes its timeoutMs: pass it to fetch and other I/O so that they
   * stop too (the attempt's database query is cancelled by the runner).
   */
  signal: AbortSignal;
  /** Writes an outbox row in the step's transaction. */
  send(destination: Destination, type: string, payload: unknown): void;
}

export type StepResult<State> = Partial<State> | undefined;
export type StepRun<State> = (
  ctx: StepContext<State>,
  // biome-ignore lint/suspicious/noConfusingVoidType: a step may return nothing
) => Promise<StepResult<State> | void> | StepResult<State> | void;
export type StepCompensate<State> = (ctx: StepContext<State>) => Promise<void> | void;

/** Attempts and backoff of one step or compensation. */
export interface StepRetryPolicy {
  /**
   * Attempts in all, the first included.
   * @defaultValue 3
   */
  attempts: number;
  /**
   * Delay before the second attempt in ms; doubles each time.
   * @defaultValue 100
   */
  backoffMs: number;
  /**
   * Cap on one delay in ms.
   * @defaultValue 30000
   */
  maxBackoffMs: number;
  /**
   * Spread each delay by ± this fraction.
   * @defaultValue 0.2
   */
  jitter: number;
}

export const defaultStepRetry: StepRetryPolicy = { ...stepRetryDefaults };

export interface StepOptions<State> {
  run: StepRun<State>;
  compensate?: StepCompensate<State>;
  retry?: Partial<StepRetryPolicy>;
  /** An attempt running longer than this fails (and is retried per `retry`). Default: no limit. */
  timeoutMs?: number;
}

/** A step is a bare function, a `[run, compensate]` pair, or the full options. */
export type StepInput<State> =
  | StepRun<State>
  | readonly [StepRun<State>, StepCompensate<State>]
  | StepOptions<State>;

export type ParallelStepInput<State> = { name: string } & StepOptions<State>;

export interface StepDefinition<State> {
  name: string;
  /** Position of the step's group in the saga; steps of a parallel group share it. */
  stage: number;
  run: StepRun<State>;
  compensate?: StepCompensate<State>;
  retry: StepRetryPolicy;
  timeoutMs?: number;
}

export interface SagaOptions {
  /** Compensate a saga that has not completed this long after it started. Default: no deadline. */
  deadlineMs?: number;
  /** Retry policy of steps that do not set their own. Default: 3 attempts from 100 ms. */
  retry?: Partial<StepRetryPolicy>;
}

/** A saga definition, built with `defineSaga<State>(name).step(...).parallel([...])`. */
export class SagaDefinition<State extends object = Record<string, unknown>> {
  readonly stages: StepDefinition<State>[][] = [];
  readonly deadlineMs: number | undefined;
  private readonly defaultRetry: StepRetryPolicy;

  constructor(
    readonly name: string,
    options: SagaOptions = {},
  ) {
    if (!name || !/^[A-Za-z0-9_.-]+$/.test(name)) {
      throw new DefinitionError(`saga name "${name}" must be non-empty letters, digits, _ . or -`);
    }
    if (options.deadlineMs !== undefined && !(options.deadlineMs > 0)) {
      throw new DefinitionError(`saga ${name}: deadlineMs must be a positive number of milliseconds`);
    }
    this.deadlineMs = options.deadlineMs;
    this.defaultRetry = resolveStepRetry(options.retry, defaultStepRetry, name);
  }

  /** Adds a step that runs after the previous ones completed. */
  step(name: string, input: StepInput<State>): this {
    this.stages.push([this.toDefinition(name, input, this.stages.length)]);
    return this;
  }

  /** Adds a group of steps that run concurrently; the saga goes on when all completed. */
  parallel(steps: readonly ParallelStepInput<State>[]): this {
    if (steps.length === 0)
      throw new DefinitionError(`saga ${this.name}: a parallel group needs at least one step`);
    const stage = this.stages.length;
    this.stages.push(steps.map(({ name, ...options }) => this.toDefinition(name, options, stage)));
    return this;
  }

  /** Every step in order of definition. */
  get steps(): StepDefinition<State>[] {
    return this.stages.flat();
  }

  getStep(name: string): StepDefinition<State> | undefined {
    return this.steps.find((s) => s.name === name);
  }

  private toDefinition(name: string, input: StepInput<State>, stage: number): StepDefinition<State> {
    if (!name || typeof name !== 'string')
      throw new DefinitionError(`saga ${this.name}: every step needs a name`);
    const options: StepOptions<State> =
      typeof input === 'function'
        ? { run: input }
        : Array.isArray(input)
          ? { run: input[0], compensate: input[1] }
          : (input as StepOptions<State>);
    if (typeof options.run !== 'function') {
      throw new DefinitionError(`saga ${this.name}: step ${name} needs a run function`);
    }
    if (options.compensate !== undefined && typeof options.compensate !== 'function') {
      throw new DefinitionError(`saga ${this.name}: step ${name} has a compensate that is not a function`);
    }
    if (options.timeoutMs !== undefined && !(options.timeoutMs > 0)) {
      throw new DefinitionError(`saga ${this.name}: step ${name} timeoutMs must be a positive number`);
    }
    return {
      name,
      stage,
      run: options.run,
      compensate: options.compensate,
      retry: resolveStepRetry(options.retry, this.defaultRetry, `${this.name}/${name}`),
      timeoutMs: options.timeoutMs,
    };
  }
}

function resolveStepRetry(
  input: Partial<StepRetryPolicy> | undefined,
  base: StepRetryPolicy,
  where: string,
): StepRetryPolicy {
  const policy = { ...base, ...input };
  if (!Number.isInteger(policy.attempts) || policy.attempts < 1) {
    throw new DefinitionError(`${where}: retry.attempts must be a whole number of at least 1`);
  }
  if (
    !(policy.backoffMs >= 0) ||
    !(policy.maxBackoffMs >= 0) ||
    !(policy.jitter >= 0 && policy.jitter <= 1)
  ) {
    throw new DefinitionError(`${where}: retry.backoffMs and maxBackoffMs must be >= 0, jitter within 0..1`);
  }
  return policy;
}

export function defineSaga<State extends object = Record<string, unknown>>(
  name: string,
  options?: SagaOptions,
): SagaDefinition<State> {
  return new SagaDefinition<State>(name, options);
}

/** Refuses a saga that cannot work; called by defineApp. */
export function validateSaga(saga: SagaDefinition<object>): void {
  if (saga.stages.length === 0)
    throw new DefinitionError(`saga ${saga.name} has no steps; add one with .step()`);
  const seen = new Set<string>();
  for (const step of saga.steps) {
    if (seen.has(step.name)) {
      throw new DefinitionError(
        `saga ${saga.name} has two steps named "${step.name}"; step names must be unique`,
      );
    }
    seen.add(step.name);
  }
}
