import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { waitUntil } from '../../shared/wait.js';
import { StepBatcher } from '../../worker/saga/step-batcher.js';

type Item = { id: number; key: string };

/** A batcher whose batches end when the test says so; records every batch it started. */
function harness(maxBatch: number, maxInFlight: number) {
  const batches: Item[][] = [];
  const ends: Array<() => void> = [];
  let running = 0;
  let maxRunning = 0;
  const batcher = new StepBatcher<Item>({ maxBatch, maxInFlight, key: (item) => item.key }, (items) => {
    batches.push(items);
    running++;
    maxRunning = Math.max(maxRunning, running);
    return new Promise<void>((resolve) =>
      ends.push(() => {
        running--;
        resolve();
      }),
    );
  });
  return { batcher, batches, ends, maxRunning: () => maxRunning };
}

describe('StepBatcher', () => {
  it('starts a lone step at once, without waiting for more', async () => {
    const { batcher, batches } = harness(10, 1);
    batcher.submit({ id: 1, key: 'a' });
    await waitUntil(() => batches.length === 1, 'the batch to start');
    expect(batches[0]).toEqual([{ id: 1, key: 'a' }]);
  });

  it('takes the steps submitted in one turn together, and those arriving while it runs into the next batch', async () => {
    const { batcher, batches, ends } = harness(10, 1);
    for (let i = 0; i < 3; i++) batcher.submit({ id: i, key: `k${i}` });
    await waitUntil(() => batches.length === 1, 'the first batch');
    for (let i = 3; i < 6; i++) batcher.submit({ id: i, key: `k${i}` });
    expect(batches).toHaveLength(1);
    ends.shift()?.();
    await waitUntil(() => batches.length === 2, 'the second batch');
    expect(batches.map((b) => b.map((i) => i.id))).toEqual([
      [0, 1, 2],
      [3, 4, 5],
    ]);
  });

  it('spreads the steps of one turn over the free slots first, and batches only what would wait', async () => {
    const { batcher, batches, ends } = harness(10, 3);
    // Two ready steps and three free slots: each runs alone, as one by one (a slow one delays nothing).
    batcher.submit({ id: 0, key: 'a' });
    batcher.submit({ id: 1, key: 'b' });
    await waitUntil(() => batches.length === 2, 'both steps to start');
    expect(batches.map((b) => b.map((i) => i.id))).toEqual([[0], [1]]);
    // One slot left and four ready steps: they share it rather than wait.
    for (let i = 2; i < 6; i++) batcher.submit({ id: i, key: `k${i}` });
    await waitUntil(() => batches.length === 3, 'the third batch');
    expect(batches[2]?.map((i) => i.id)).toEqual([2, 3, 4, 5]);
    // Seven ready steps and two free slots: an even share each.
    for (let i = 6; i < 13; i++) batcher.submit({ id: i, key: `k${i}` });
    ends.shift()?.();
    ends.shift()?.();
    await waitUntil(() => batches.length === 5, 'two more batches');
    expect(batches.slice(3).map((b) => b.length)).toEqual([4, 3]);
  });

  it('every step runs once, batches hold at most maxBatch steps with distinct keys, at most maxInFlight at once', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 1, max: 3 }),
        fc.array(fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f'), { minLength: 1, maxLength: 40 }),
        async (maxBatch, maxInFlight, keys) => {
          const { batcher, batches, ends, maxRunning } = harness(maxBatch, maxInFlight);
          for (const [id, key] of keys.entries()) batcher.submit({ id, key });
          // Ends the batches one by one until every step ran.
          await waitUntil(
            async () => {
              ends.shift()?.();
              await new Promise((r) => setImmediate(r));
              return batches.flat().length === keys.length && ends.length === 0;
            },
            'every step to run',
            { intervalMs: 1 },
          );
          expect(
            batches
              .flat()
              .map((i) => i.id)
              .sort((x, y) => x - y),
          ).toEqual(keys.map((_, id) => id));
          for (const batch of batches) {
            expect(batch.length).toBeLessThanOrEqual(maxBatch);
            expect(new Set(batch.map((i) => i.key)).size).toBe(batch.length);
          }
          expect(maxRunning()).toBeLessThanOrEqual(maxInFlight);
        },
      ),
      { numRuns: 50 },
    );
  });
});
