import { describe, expect, it } from 'vitest';
import { WaitTimeoutError } from '../../shared/errors.js';
import { waitUntil } from '../../shared/wait.js';

describe('waitUntil', () => {
  it('returns the first truthy value of the condition', async () => {
    let calls = 0;
    const value = await waitUntil(() => (++calls >= 3 ? { calls } : undefined), 'the third call', {
      intervalMs: 1,
    });
    expect(value).toEqual({ calls: 3 });
    expect(calls).toBe(3);
  });

  it('throws a WaitTimeoutError naming what it waited for and the last value', async () => {
    const error = await waitUntil(async () => 0, 'a row', { timeoutMs: 20, intervalMs: 5 }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(WaitTimeoutError);
    expect(error).toMatchObject({ code: 'DW_WAIT_TIMEOUT', what: 'a row', timeoutMs: 20, last: 0 });
    expect((error as Error).message).toBe('timed out after 20 ms waiting for a row (last: 0)');
  });

  it('stops at once when the condition throws', async () => {
    let calls = 0;
    const failure = new Error('broken');
    await expect(
      waitUntil(
        () => {
          calls++;
          throw failure;
        },
        'never',
        { intervalMs: 1 },
      ),
    ).rejects.toBe(failure);
    expect(calls).toBe(1);
  });
});
