import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type Backoff, backoffMs } from '../../shared/backoff.js';

const seed = Number(process.env.FC_SEED ?? 20240909);
const attempts = fc.integer({ min: 0, max: 2000 });
const random = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true });
const backoffs = fc
  .record({
    baseMs: fc.integer({ min: 1, max: 10_000 }),
    extraMs: fc.integer({ min: 0, max: 1_000_000 }),
    factor: fc.double({ min: 1, max: 4, noNaN: true }),
  })
  .map(({ baseMs, extraMs, factor }): Backoff => ({ baseMs, maxMs: baseMs + extraMs, factor }));

describe('backoffMs', () => {
  it('doubles from the base and stops at the cap', () => {
    const backoff = { baseMs: 50, maxMs: 5000 };
    expect([0, 1, 2, 3, 6, 7, 100, 5000].map((a) => backoffMs(a, backoff))).toEqual([
      50, 100, 200, 400, 3200, 5000, 5000, 5000,
    ]);
  });

  it('grows with the attempt until the cap and never goes above it', () => {
    fc.assert(
      fc.property(backoffs, attempts, (backoff, attempt) => {
        const now = backoffMs(attempt, backoff);
        const next = backoffMs(attempt + 1, backoff);
        expect(next).toBeGreaterThanOrEqual(now);
        expect(next).toBeLessThanOrEqual(backoff.maxMs);
        expect(now).toBeGreaterThanOrEqual(Math.min(backoff.baseMs, backoff.maxMs));
        expect(Number.isInteger(now)).toBe(true);
      }),
      { seed },
    );
  });

  it('spreads by ± jitter around the unspread delay', () => {
    fc.assert(
      fc.property(backoffs, attempts, fc.double({ min: 0, max: 1, noNaN: true }), random, (b, a, j, r) => {
        const plain = backoffMs(a, b);
        const spread = backoffMs(a, { ...b, jitter: j }, () => r);
        expect(spread).toBeGreaterThanOrEqual(Math.floor(plain * (1 - j)));
        expect(spread).toBeLessThanOrEqual(Math.ceil(plain * (1 + j)));
      }),
      { seed },
    );
  });

  it('full jitter picks a delay between 0 and the unspread one', () => {
    fc.assert(
      fc.property(backoffs, attempts, random, (b, a, r) => {
        const spread = backoffMs(a, { ...b, jitter: 'full' }, () => r);
        expect(spread).toBeGreaterThanOrEqual(0);
        expect(spread).toBeLessThanOrEqual(backoffMs(a, b));
      }),
      { seed },
    );
    expect(backoffMs(3, { baseMs: 4, maxMs: 200, jitter: 'full' }, () => 0.5)).toBe(16);
  });

  it('stays finite for any attempt, and zero for a zero base', () => {
    expect(backoffMs(Number.MAX_SAFE_INTEGER, { baseMs: 1000, maxMs: 60_000 })).toBe(60_000);
    expect(backoffMs(5, { baseMs: 0, maxMs: 100 })).toBe(0);
  });
});
