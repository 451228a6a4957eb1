import { createHash } from 'node:crypto';
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
  /**
   * Version of the saga's stages. In-flight instances keep running on the version they started
   * with; change it whenever steps are added, removed, renamed, reordered, regrouped or gain or
   * lose a compensation, and keep the old version in the app until its instances finished.
   * @defaultValue 1
   */
  version?: number;
  /** Compensate a saga that has not completed this long after it started. Default: no deadline. */
  deadlineMs?: number;
  /** Retry policy of steps that do not set their own. Default: 3 attempts from 100 ms. */
  retry?: Partial<StepRetryPolicy>;
}

/** A saga definition, built with `defineSaga<State>(name).step(...).parallel([...])`. */
export class SagaDefinition<State extends object = Record<string, unknown>> {
  readonly stages: StepDefinition<State>[][] = [];
  readonly deadlineMs: number | undefined;
  /** See SagaOptions.version. */
  readonly version: number;
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
    const version = options.version ?? defaultSagaVersion;
    if (!Number.isSafeInteger(version) || version < 1 || version > 2_147_483_647) {
      throw new DefinitionError(
        `saga ${name}: version must be a whole number from 1; got ${String(version)}`,
      );
    }
    this.version = version;
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

  /** The shape of the stages (no code): what the fingerprint covers. */
  get layout(): StageLayout {
    return sagaLayout(this.stages);
  }

  /** Stable hash of the layout: the same stages give the same fingerprint in any process or release. */
  get fingerprint(): string {
    return layoutFingerprint(this.layout);
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

/** Version of a saga defined without `version`. */
export const defaultSagaVersion = 1;

/** One stage as stored in dw_saga_definitions.stages: its steps, each with whether it can be compensated. */
export type StageLayout = ReadonlyArray<ReadonlyArray<{ name: string; compensate: boolean }>>;

/**
 * The layout of a saga's stages: step names, which steps form a parallel group, which have a
 * compensation. Members of a group run at once, so their order inside it is not part of it (sorted).
 */
export function sagaLayout(
  stages: ReadonlyArray<ReadonlyArray<{ name: string; compensate?: unknown }>>,
): StageLayout {
  return stages.map((stage) =>
    stage
      .map((s) => ({ name: s.name, compensate: typeof s.compensate === 'function' || s.compensate === true }))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
  );
}

/** sha256 of the canonical JSON of a layout (sagaLayout), in hex. */
export function layoutFingerprint(layout: StageLayout): string {
  const canonical = JSON.stringify(
    sagaLayout(layout).map((stage) => stage.map((s) => [s.name, s.compensate ? 1 : 0])),
  );
  return createHash('sha256').update(canonical).digest('hex');
}

/**
 * What changed from layout `before` to `after`, one phrase per change (empty: the same layout):
 * steps added, removed, renamed (one step out and one in at the same stage), moved to another
 * stage or group, gaining or losing a compensation, and stages regrouped.
 */
export function diffLayouts(before: StageLayout, after: StageLayout): string[] {
  const index = (layout: StageLayout) => {
    const map = new Map<string, { stage: number; compensate: boolean; group: string }>();
    for (const [stage, steps] of sagaLayout(layout).entries()) {
      const group = JSON.stringify(steps.map((s) => s.name));
      for (const s of steps) map.set(s.name, { stage, compensate: s.compensate, group });
    }
    return map;
  };
  const old = index(before);
  const now = index(after);
  const q = (name: string) => JSON.stringify(name);
  const removed = [...old.keys()].filter((n) => !now.has(n));
  const added = [...now.keys()].filter((n) => !old.has(n));
  const changes: string[] = [];
  // One step out and one in at the same stage reads as a rename.
  const renamed = new Set<string>();
  for (const from of removed) {
    const stage = old.get(from)!.stage;
    const outs = removed.filter((n) => old.get(n)!.stage === stage);
    const ins = added.filter((n) => now.get(n)!.stage === stage);
    if (outs.length === 1 && ins.length === 1 && before.length === after.length) {
      changes.push(`step ${q(from)} renamed to ${q(ins[0]!)}`);
      renamed.add(from).add(ins[0]!);
    }
  }
  for (const n of removed) if (!renamed.has(n)) changes.push(`step ${q(n)} removed`);
  for (const n of added) if (!renamed.has(n)) changes.push(`step ${q(n)} added`);
  for (const [n, was] of old) {
    const is = now.get(n);
    if (!is) continue;
    if (was.stage !== is.stage)
      changes.push(`step ${q(n)} moved from stage ${was.stage + 1} to ${is.stage + 1}`);
    else if (was.group !== is.group) changes.push(`step ${q(n)} regrouped (its parallel group changed)`);
    if (was.compensate !== is.compensate)
      changes.push(`step ${q(n)} ${is.compensate ? 'gained' : 'lost'} its compensation`);
  }
  // Every step where it was, yet the stages differ (cannot happen with unique names; kept as a guard).
  if (changes.length === 0 && layoutFingerprint(before) !== layoutFingerprint(after)) {
    changes.push('stages regrouped');
  }
  return changes;
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
