/** Small statistics helpers for the benchmark (no dependency needed for medians and percentiles). */

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Nearest-rank percentile; NaN for an empty list. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

export function round(value: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/**
 * Throughput between the W-th and the last event time (ms), so start-up is left out; with
 * `notBeforeMs`, the W-th event at or after that time (several workers: once the last of them is
 * ready, so neither a head start of the first ones nor the late ones' cold start counts).
 */
export function steadyRate(timesMs: readonly number[], warmup: number, notBeforeMs = -Infinity): number {
  const sorted = [...timesMs].sort((a, b) => a - b);
  const ready = sorted.findIndex((t) => t >= notBeforeMs);
  const from = (ready < 0 ? sorted.length : ready) + warmup;
  const measured = sorted.slice(Math.min(from, Math.max(0, sorted.length - 2)));
  const spanMs = measured[measured.length - 1]! - measured[0]!;
  return spanMs > 0 ? ((measured.length - 1) * 1000) / spanMs : Number.NaN;
}

/** `value` rounded, or null where a part did not run (NaN): the JSON says null, the table n/a. */
export function roundOrNull(value: number, digits = 2): number | null {
  return Number.isFinite(value) ? round(value, digits) : null;
}
