/** How a retry loop spaces its tries: exponential from `baseMs`, capped at `maxMs`. */
export interface Backoff {
  /** The delay after the first failure (attempt 0). */
  baseMs: number;
  /** The longest delay, before jitter. */
  maxMs: number;
  /**
   * What each further attempt multiplies the delay by.
   * @defaultValue 2
   */
  factor?: number;
  /**
   * How the delay is spread, so that many waiters do not retry in step: a fraction `j` (0 to 1)
   * spreads it uniformly over ± j of itself (so up to `maxMs × (1 + j)`); `'full'` picks it
   * uniformly between 0 and itself.
   * @defaultValue 0 (no spread)
   */
  jitter?: number | 'full';
}

/**
 * The delay in whole ms before the try after failed attempt `attempt` (0 for the first failure):
 * `min(maxMs, baseMs × factor^attempt)`, rounded, then spread by `jitter`. The one backoff of the
 * code base: every retry loop takes its delays from here.
 */
export function backoffMs(attempt: number, backoff: Backoff, random: () => number = Math.random): number {
  const { baseMs, maxMs, factor = 2, jitter = 0 } = backoff;
  // A huge attempt makes the product Infinity, which the cap absorbs; a zero base stays zero.
  const exponential = baseMs <= 0 ? 0 : Math.round(Math.min(maxMs, baseMs * factor ** Math.max(0, attempt)));
  if (!jitter) return exponential;
  if (jitter === 'full') return Math.round(exponential * random());
  return Math.max(0, Math.round(exponential * (1 + jitter * (2 * random() - 1))));
}
