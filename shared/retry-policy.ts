import { type Backoff, backoffMs } from './backoff.js';
import { retryPolicyDefaults } from './defaults.js';
import { DefinitionError, isRetryable } from './errors.js';

/**
 * How a failing message is retried: first `immediateRetries` attempts at once in the same process,
 * then `delayed.count` attempts after exponentially growing delays (through RabbitMQ retry queues),
 * then the dead letters. Attempts in all: 1 + immediateRetries + delayed.count.
 */
export interface RetryPolicy {
  /**
   * Retries right away in the same process.
   * @defaultValue 2
   */
  immediateRetries: number;
  delayed: {
    /**
     * Retries after a delay.
     * @defaultValue 3
     */
    count: number;
    /**
     * First delay in ms.
     * @defaultValue 1000
     */
    initialMs: number;
    /**
     * Growth per retry.
     * @defaultValue 2
     */
    factor: number;
    /**
     * Cap on one delay in ms.
     * @defaultValue 300000 (5 minutes)
     */
    maxMs: number;
    /**
     * Spread each delay by ± this fraction, so retries of many messages do not arrive in step.
     * @defaultValue 0.1
     */
    jitter: number;
  };
}

export type RetryPolicyInput = {
  immediateRetries?: number;
  delayed?: Partial<RetryPolicy['delayed']>;
};

export const defaultRetryPolicy: RetryPolicy = {
  immediateRetries: retryPolicyDefaults.immediateRetries,
  delayed: { ...retryPolicyDefaults.delayed },
};

/** Fills in defaults from `base` and refuses values that cannot work (at defineApp time). */
export function resolveRetryPolicy(
  input: RetryPolicyInput | undefined,
  base = defaultRetryPolicy,
): RetryPolicy {
  const policy: RetryPolicy = {
    immediateRetries: input?.immediateRetries ?? base.immediateRetries,
    delayed: { ...base.delayed, ...stripUndefined(input?.delayed ?? {}) },
  };
  const { count, initialMs, factor, maxMs, jitter } = policy.delayed;
  const problems = [
    wholeAtLeast(policy.immediateRetries, 0) ? '' : 'immediateRetries must be a whole number >= 0',
    wholeAtLeast(count, 0) ? '' : 'delayed.count must be a whole number >= 0',
    wholeAtLeast(initialMs, 1) ? '' : 'delayed.initialMs must be a whole number of ms >= 1',
    Number.isFinite(factor) && factor >= 1 ? '' : 'delayed.factor must be a number >= 1',
    wholeAtLeast(maxMs, initialMs) ? '' : 'delayed.maxMs must be a whole number of ms >= delayed.initialMs',
    jitter >= 0 && jitter < 1 ? '' : 'delayed.jitter must be a fraction from 0 to below 1',
  ].filter(Boolean);
  if (problems.length) throw new DefinitionError(`invalid retry policy: ${problems.join('; ')}`);
  return policy;
}

function wholeAtLeast(value: number, min: number): boolean {
  return Number.isInteger(value) && value >= min;
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

export type RetryDecision =
  | { kind: 'immediate'; nextAttempt: number }
  | { kind: 'delayed'; nextAttempt: number; delayMs: number; tierMs: number }
  | { kind: 'dead-letter'; why: 'non-retryable' | 'exhausted' };

/**
 * What to do after attempt `attempt` (1-based) failed with `error`. Pure: `random` is injected so
 * the jitter can be tested.
 */
export function decideRetry(
  policy: RetryPolicy,
  attempt: number,
  error: unknown,
  random: () => number = Math.random,
): RetryDecision {
  if (!isRetryable(error)) return { kind: 'dead-letter', why: 'non-retryable' };
  if (attempt <= policy.immediateRetries) return { kind: 'immediate', nextAttempt: attempt + 1 };
  const delayIndex = attempt - 1 - policy.immediateRetries;
  if (delayIndex >= policy.delayed.count) return { kind: 'dead-letter', why: 'exhausted' };
  return {
    kind: 'delayed',
    nextAttempt: attempt + 1,
    tierMs: retryTierMs(policy, delayIndex),
    delayMs: Math.max(1, backoffMs(delayIndex, delayedBackoff(policy, true), random)),
  };
}

/** The retry queue's delay for delayed retry `delayIndex` (0 for the first): the unspread backoff. */
export function retryTierMs(policy: RetryPolicy, delayIndex: number): number {
  return backoffMs(delayIndex, delayedBackoff(policy, false));
}

function delayedBackoff(policy: RetryPolicy, spread: boolean): Backoff {
  const { initialMs, factor, maxMs, jitter } = policy.delayed;
  return { baseMs: initialMs, maxMs, factor, jitter: spread ? jitter : 0 };
}

export function maxAttempts(policy: RetryPolicy): number {
  return 1 + policy.immediateRetries + policy.delayed.count;
}
