import { MAX_TIMER_MS } from './defaults.js';
import { InvalidOptionError } from './errors.js';

/**
 * Option checks shared by resolveWorkerOptions and resolveRelayOptions: an absent value takes its
 * default, a present one must be what the option can use, else an InvalidOptionError names it.
 */

/** A whole number from `min` (1 by default; 0 where 0 turns the feature off) to `max`. */
export function countOption(
  name: string,
  value: unknown,
  fallback: number,
  { min = 1, max = Number.MAX_SAFE_INTEGER }: { min?: number; max?: number } = {},
): number {
  if (value === undefined) return fallback;
  if (typeof value === 'number' && Number.isInteger(value) && value >= min && value <= max) return value;
  const allowed =
    max === Number.MAX_SAFE_INTEGER
      ? `a whole number of at least ${min}`
      : `a whole number from ${min} to ${max}`;
  throw new InvalidOptionError(name, allowed, value);
}

/**
 * Whole milliseconds from `min` (0 by default). `timer` durations drive a setTimeout, which fires at
 * once past MAX_TIMER_MS (about 24.8 days), so they stop there.
 */
export function durationOption(
  name: string,
  value: unknown,
  fallback: number,
  { min = 0, timer = false }: { min?: number; timer?: boolean } = {},
): number {
  if (value === undefined) return fallback;
  const max = timer ? MAX_TIMER_MS : Number.MAX_SAFE_INTEGER;
  if (typeof value === 'number' && Number.isInteger(value) && value >= min && value <= max) return value;
  const allowed = timer
    ? `a whole number of milliseconds from ${min} to ${MAX_TIMER_MS}`
    : `a whole number of milliseconds of at least ${min}`;
  throw new InvalidOptionError(name, allowed, value);
}
