import { describe, expect, test } from 'vitest';
import { assertClean } from './support/run.js';
import { chaosScope } from './support/scope.js';

const chaos = chaosScope();

// Issue 11, item 1: batched message handling (batching is on by default) keeps every guarantee of
// one-by-one handling. The load is queued before the worker starts, so batches form at once.

describe('worker batches under faults', () => {
  test('SIGKILL after a batch commit, before its acks, with handlers failing mid-batch: nothing lost, nothing twice', async () => {
    const run = await chaos.run('worker SIGKILL after batch commit before acks');
    // Joins (5% published twice), invoices whose handler throws 0 to 5 times (retried, or
    // dead-lettered after 5 attempts), invalid messages: every batch mixes them.
    const load = run.startLoad(1000, { invoices: 150, invalid: 20 });
    await load.done;
    // Armed for the first incarnations only, so the run ends; likely enough that each of them dies
    // within its first batches (a restart's first deliveries are redeliveries: one by one).
    const crashes = 3;
    const worker = await run.spawn('worker', 'worker', {
      // A smaller prefetch than the default: each kill hands fewer messages back as redeliveries
      // (handled one by one), leaving first deliveries for the next incarnations' batches.
      args: ['--prefetch', '100'],
      envFor: (n) =>
        n < crashes
          ? { DW_CRASH_POINTS: 'worker:batch-after-commit-before-ack', DW_CRASH_PROBABILITY: '0.2' }
          : {},
    });
    await run.spawn('relay', 'relay');
    const counters = await run.settle(150_000);
    const exits = await run.stopAll();
    const fallbacks = worker.logged('handler failed in a batch');
    assertClean(run, counters, { exits, crashPoints: worker.crashPoints, fallbacks });
    const hits = worker.crashPoints['worker:batch-after-commit-before-ack'] ?? 0;
    expect(hits).toBeGreaterThan(0);
    expect(hits).toBeLessThanOrEqual(crashes);
    expect(Object.keys(worker.crashPoints)).toEqual(['worker:batch-after-commit-before-ack']);
    // The failing handlers were inside batches: those rolled back and went one by one.
    expect(fallbacks).toBeGreaterThan(0);
    expect(exits.every((e) => e.code === 0)).toBe(true);
  });

  test('SIGKILL at random instants while batches with failing handlers are in flight', async () => {
    const { run, worker } = await chaos.startPair(
      'worker SIGKILL at random instants, batches failing mid-way',
    );
    const load = run.startLoad(800, { invoices: 120, invalid: 10 });
    const kills = 4;
    for (let i = 0; i < kills; i++) {
      await run.progress(run.random.int(20, 150));
      run.fault(`SIGKILL worker #${i}`);
      await worker.killAndRestart();
    }
    await load.done;
    const counters = await run.settle(150_000);
    const exits = await run.stopAll();
    assertClean(run, counters, { exits, fallbacks: worker.logged('handler failed in a batch') });
    expect(worker.incarnations).toBe(kills + 1);
    expect(exits.every((e) => e.code === 0)).toBe(true);
  });
});
