import { v5 as uuidv5 } from 'uuid';
import { sagaQueueName } from '../defaults.js';
import type { OutboxMessage } from '../outbox.js';
import { traceHeaders } from '../tracing.js';

/**
 * The BullMQ queue of saga work (under BULLMQ_PREFIX). One queue for every saga of the app: a
 * step job names its saga, so a single Worker with one concurrency limit serves them all.
 */
export const sagaQueue = sagaQueueName;

export type SagaPhase = 'execute' | 'compensate';

/**
 * Runs one attempt of a step (execute) or of its compensation. `generation`, `attempt` and
 * `notBefore` say which attempt the job was written for, so that a stale copy (delivered twice,
 * relayed after it ran eagerly, of a generation the sweep replaced, a retry early) is recognised
 * and ignored; jobs written before they existed lack them and are run as before.
 */
export interface SagaStepJob {
  kind: 'step';
  sagaId: string;
  saga: string;
  /**
   * The definition version the saga started with: the job runs on that version's steps. Jobs
   * written before versions existed lack it (the runner reads it from the saga row).
   */
  version?: number;
  phase: SagaPhase;
  step: string;
  /** The saga's generation when the job was written. */
  generation?: number;
  /** The attempt the job runs (1 for the first). */
  attempt?: number;
  /** A retry's due time (epoch ms): a copy handed out earlier waits until then. */
  notBefore?: number;
}

/** Fires at a saga's deadline: compensates it unless it finished meanwhile. */
export interface SagaDeadlineJob {
  kind: 'deadline';
  sagaId: string;
  saga: string;
  /** See SagaStepJob.version. */
  version?: number;
}

export type SagaJob = SagaStepJob | SagaDeadlineJob;

export const sagaStepType = 'dw.saga.step';
export const sagaDeadlineType = 'dw.saga.deadline';

// Any fixed namespace works; it only has to never change, so ids stay stable across releases.
const namespace = '5b0a7c8e-3f0d-4f55-9f6e-2a7d0a1c9e41';

/**
 * Deterministic outbox message id (= BullMQ job id) of a step job: writing the same job twice, or
 * the relay delivering it twice, makes one job. `generation` changes when the sweep re-enqueues
 * work, so that lost jobs are replaced by new ones instead of being collapsed into the old ids.
 */
export function stepJobId(
  sagaId: string,
  phase: SagaPhase,
  step: string,
  generation: number,
  attempt = 1,
): string {
  return uuidv5(`${sagaId}/${phase}/${step}/${generation}/${attempt}`, namespace);
}

export function deadlineJobId(sagaId: string, generation: number): string {
  return uuidv5(`${sagaId}/deadline/${generation}`, namespace);
}

export interface StepMessageInput {
  sagaId: string;
  saga: string;
  /** The saga's definition version (dw_sagas.definition_version); absent: the runner reads it from the saga. */
  version?: number;
  phase: SagaPhase;
  step: string;
  generation: number;
  /** The attempt this job runs (1 for the first); retries get their own job ids. */
  attempt?: number;
  delayMs?: number;
  correlationId?: string | null;
  causationId?: string;
}

/** With the context of the active span (the handler or step that schedules this job): its parent. */
function headers(correlationId?: string | null, causationId?: string): Record<string, string> {
  return {
    ...(correlationId ? { correlationId } : {}),
    ...(causationId ? { causationId } : {}),
    ...traceHeaders(),
  };
}

/** The outbox message that makes the relay add a step job to the saga queue. */
export function stepMessage(input: StepMessageInput): OutboxMessage {
  const payload: SagaStepJob = {
    kind: 'step',
    sagaId: input.sagaId,
    saga: input.saga,
    ...(input.version !== undefined ? { version: input.version } : {}),
    phase: input.phase,
    step: input.step,
    generation: input.generation,
    attempt: input.attempt ?? 1,
    ...(input.delayMs ? { notBefore: Date.now() + Math.round(input.delayMs) } : {}),
  };
  return {
    messageId: stepJobId(input.sagaId, input.phase, input.step, input.generation, input.attempt),
    destination: { kind: 'bullmq', queue: sagaQueue },
    type: sagaStepType,
    payload,
    headers: headers(input.correlationId, input.causationId),
    ...(input.delayMs ? { options: { delay: Math.round(input.delayMs) } } : {}),
  };
}

export function deadlineMessage(input: {
  sagaId: string;
  saga: string;
  version: number;
  generation: number;
  delayMs: number;
  correlationId?: string | null;
  causationId?: string;
}): OutboxMessage {
  const payload: SagaDeadlineJob = {
    kind: 'deadline',
    sagaId: input.sagaId,
    saga: input.saga,
    version: input.version,
  };
  return {
    messageId: deadlineJobId(input.sagaId, input.generation),
    destination: { kind: 'bullmq', queue: sagaQueue },
    type: sagaDeadlineType,
    payload,
    headers: headers(input.correlationId, input.causationId),
    options: { delay: Math.max(1, Math.round(input.delayMs)) },
  };
}

/** Dead-letter message id of a step or compensation that failed for good. */
export function sagaDeadLetterId(sagaId: string, phase: SagaPhase, step: string): string {
  return `${sagaId}:${phase}:${step}`;
}
