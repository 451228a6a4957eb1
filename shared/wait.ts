import { WaitTimeoutError } from './errors.js';

export interface WaitOptions {
  /**
   * How long to keep asking before giving up with a WaitTimeoutError.
   * @defaultValue 30000
   */
  timeoutMs?: number;
  /**
   * Pause between two calls of the condition.
   * @defaultValue 50
   */
  intervalMs?: number;
}

/**
 * Calls `condition` until it returns a truthy value, and returns that value; after `timeoutMs` it
 * throws a WaitTimeoutError naming `what` and the last value. For tests and scripts that wait for
 * an effect of asynchronous processing (a row written, a dead letter stored) instead of sleeping a
 * fixed time. An error thrown by `condition` ends the wait at once.
 */
export async function waitUntil<T>(
  condition: () => Promise<T> | T,
  what: string,
  { timeoutMs = 30_000, intervalMs = 50 }: WaitOptions = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new WaitTimeoutError(what, timeoutMs, value);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
