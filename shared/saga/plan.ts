import { backoffMs } from '../backoff.js';
import type { StepRetryPolicy } from './definition.js';
import type { SagaPhase } from './jobs.js';

/** What a step record says, as far as planning cares. */
export interface StepRecord {
  step: string;
  phase: SagaPhase;
  status: 'running' | 'completed' | 'failed';
  /** Attempts recorded so far (a retried step's next job runs attempts + 1). */
  attempts?: number;
}

/** What planning needs of a saga definition: its stages, and which steps can be compensated. */
export interface PlannableSaga {
  readonly stages: ReadonlyArray<ReadonlyArray<{ name: string; compensate?: unknown }>>;
}

/** The stage to work on next and its steps that still have to run, or the end of the phase. */
export type Plan = { kind: 'stage'; phase: SagaPhase; stage: number; pending: string[] } | { kind: 'done' };

function completed(records: readonly StepRecord[], phase: SagaPhase): Set<string> {
  return new Set(records.filter((r) => r.phase === phase && r.status === 'completed').map((r) => r.step));
}

/** Forward: the first stage with a step not completed yet; done when every step completed. */
export function planExecution(saga: PlannableSaga, records: readonly StepRecord[]): Plan {
  const done = completed(records, 'execute');
  for (const [stage, steps] of saga.stages.entries()) {
    const pending = steps.filter((s) => !done.has(s.name)).map((s) => s.name);
    if (pending.length > 0) return { kind: 'stage', phase: 'execute', stage, pending };
  }
  return { kind: 'done' };
}

/**
 * Backward: the latest stage holding a completed step whose compensation has not completed;
 * steps without a compensate function are skipped. Done when nothing is left to compensate.
 */
export function planCompensation(saga: PlannableSaga, records: readonly StepRecord[]): Plan {
  const executed = completed(records, 'execute');
  const compensated = completed(records, 'compensate');
  for (let stage = saga.stages.length - 1; stage >= 0; stage--) {
    const pending = (saga.stages[stage] ?? [])
      .filter((s) => s.compensate && executed.has(s.name) && !compensated.has(s.name))
      .map((s) => s.name);
    if (pending.length > 0) return { kind: 'stage', phase: 'compensate', stage, pending };
  }
  return { kind: 'done' };
}

/**
 * The attempt a new job of `step` runs: one past those recorded. A job written with a lower one
 * would be ignored as stale, so the sweep and replays must write this one.
 */
export function nextAttempt(records: readonly StepRecord[], phase: SagaPhase, step: string): number {
  const record = records.find((r) => r.phase === phase && r.step === step);
  return (record?.attempts ?? 0) + 1;
}

/** Delay before attempt `attempt + 1`: exponential from backoffMs, capped, spread by ± jitter. */
export function retryDelayMs(
  policy: StepRetryPolicy,
  attempt: number,
  random: () => number = Math.random,
): number {
  const backoff = { baseMs: policy.backoffMs, maxMs: policy.maxBackoffMs, jitter: policy.jitter };
  return backoffMs(attempt - 1, backoff, random);
}

/** A step (or compensation) whose attempt ended: completed, or failed for good. */
export interface StepEnd {
  phase: SagaPhase;
  /** The stage of the step in its saga's definition. */
  stage: number;
  outcome: 'completed' | 'failed';
}

/**
 * What follows a step's end. `stage`: write the jobs of the plan's pending steps (the next
 * stage, or the stage still to compensate). `group-pending`: siblings of the step's parallel group
 * are still to complete, the last of them moves on. `read-records`: the step's siblings decide,
 * plan again with the step records read after this step's own was written.
 */
export type NextStage =
  | Extract<Plan, { kind: 'stage' }>
  | { kind: 'group-pending' }
  | { kind: 'saga-completed' }
  | { kind: 'saga-compensated' }
  | { kind: 'begin-compensation' }
  | { kind: 'saga-failed' }
  | { kind: 'read-records' };

/**
 * What a step's end leads to. A completed step alone in its stage decides without `records`: the
 * next stage's steps run (their first attempts), or the last one completes the saga with its
 * own record. A completed parallel group member or compensation needs the step records, this
 * step's included: without them it answers `read-records`. A failure for good begins the
 * compensation of an executing saga and fails a compensating one.
 */
export function planNextStage(saga: PlannableSaga, end: StepEnd, records?: readonly StepRecord[]): NextStage {
  if (end.outcome === 'failed')
    return { kind: end.phase === 'execute' ? 'begin-compensation' : 'saga-failed' };
  const stageSize = saga.stages[end.stage]?.length ?? 1;
  if (end.phase === 'execute' && stageSize === 1) {
    if (end.stage === saga.stages.length - 1) return { kind: 'saga-completed' };
    const next = saga.stages[end.stage + 1] ?? [];
    return { kind: 'stage', phase: 'execute', stage: end.stage + 1, pending: next.map((s) => s.name) };
  }
  if (!records) return { kind: 'read-records' };
  if (end.phase === 'execute') {
    const plan = planExecution(saga, records);
    if (plan.kind === 'done') return { kind: 'saga-completed' };
    return plan.stage !== end.stage ? plan : { kind: 'group-pending' };
  }
  const plan = planCompensation(saga, records);
  // The step's own stage too, while siblings are pending there: the caller writes their jobs again.
  return plan.kind === 'done' ? { kind: 'saga-compensated' } : plan;
}
