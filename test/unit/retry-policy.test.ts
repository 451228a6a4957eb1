import { describe, expect, it } from 'vitest';
import { NonRetryableError } from '../../shared/errors.js';
import { decideRetry, maxAttempts, resolveRetryPolicy } from '../../shared/retry-policy.js';

const sendInvoicePolicy = resolveRetryPolicy({
  immediateRetries: 2,
  delayed: { count: 2, initialMs: 1000, factor: 2 },
});
const noJitter = () => 0.5;

describe('decideRetry', () => {
  it('walks the SendInvoice policy: 2 immediate, then 1 s and 2 s, then the dead letters (5 attempts)', () => {
    const error = new Error('down');
    expect(decideRetry(sendInvoicePolicy, 1, error, noJitter)).toEqual({ kind: 'immediate', nextAttempt: 2 });
    expect(decideRetry(sendInvoicePolicy, 2, error, noJitter)).toEqual({ kind: 'immediate', nextAttempt: 3 });
    expect(decideRetry(sendInvoicePolicy, 3, error, noJitter)).toEqual({
      kind: 'delayed',
      nextAttempt: 4,
      tierMs: 1000,
      delayMs: 1000,
    });
    expect(decideRetry(sendInvoicePolicy, 4, error, noJitter)).toEqual({
      kind: 'delayed',
      nextAttempt: 5,
      tierMs: 2000,
      delayMs: 2000,
    });
    expect(decideRetry(sendInvoicePolicy, 5, error, noJitter)).toEqual({
      kind: 'dead-letter',
      why: 'exhausted',
    });
    expect(maxAttempts(sendInvoicePolicy)).toBe(5);
  });

  it('sends a non-retryable error straight to the dead letters, whatever the attempt', () => {
    expect(decideRetry(sendInvoicePolicy, 1, new NonRetryableError('bad data'))).toEqual({
      kind: 'dead-letter',
      why: 'non-retryable',
    });
  });

  it('spreads delays by the jitter fraction, within bounds, on the tier', () => {
    const policy = resolveRetryPolicy({
      immediateRetries: 0,
      delayed: { count: 1, initialMs: 1000, jitter: 0.1 },
    });
    const low = decideRetry(policy, 1, new Error('x'), () => 0);
    const high = decideRetry(policy, 1, new Error('x'), () => 0.999999);
    expect(low).toMatchObject({ kind: 'delayed', tierMs: 1000, delayMs: 900 });
    expect(high).toMatchObject({ kind: 'delayed', tierMs: 1000, delayMs: 1100 });
  });

  it('caps delays at maxMs and grows them by the factor', () => {
    const policy = resolveRetryPolicy({
      immediateRetries: 0,
      delayed: { count: 4, initialMs: 100, factor: 3, maxMs: 1000, jitter: 0 },
    });
    const tiers = [1, 2, 3, 4].map((attempt) => decideRetry(policy, attempt, new Error('x')));
    expect(tiers.map((d) => (d.kind === 'delayed' ? d.tierMs : d.kind))).toEqual([100, 300, 900, 1000]);
    expect(decideRetry(policy, 5, new Error('x'))).toEqual({ kind: 'dead-letter', why: 'exhausted' });
  });

  it('with no retries at all, the first failure is final', () => {
    const policy = resolveRetryPolicy({ immediateRetries: 0, delayed: { count: 0 } });
    expect(decideRetry(policy, 1, new Error('x'))).toEqual({ kind: 'dead-letter', why: 'exhausted' });
    expect(maxAttempts(policy)).toBe(1);
  });

  it('refuses policies that cannot work, saying which field', () => {
    expect(() => resolveRetryPolicy({ immediateRetries: -1 })).toThrow(/immediateRetries must be/);
    expect(() => resolveRetryPolicy({ delayed: { factor: 0.5 } })).toThrow(/delayed.factor must be/);
    expect(() => resolveRetryPolicy({ delayed: { initialMs: 2.5 } })).toThrow(/delayed.initialMs must be/);
    expect(() => resolveRetryPolicy({ delayed: { jitter: 1 } })).toThrow(/delayed.jitter must be/);
    expect(() => resolveRetryPolicy({ delayed: { initialMs: 10_000, maxMs: 1000 } })).toThrow(/maxMs/);
    expect(resolveRetryPolicy({ delayed: { count: undefined } }).delayed.count).toBe(3);
  });
});
