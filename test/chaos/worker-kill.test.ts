import { describe, expect, test } from 'vitest';
import { assertClean } from './support/run.js';
import { chaosScope } from './support/scope.js';

const chaos = chaosScope();

describe('worker SIGKILL', () => {
  test('killed at random instants many times while a load is in flight: nothing lost, nothing twice', async () => {
    const { run, worker } = await chaos.startPair('worker SIGKILL at random instants');
    const load = run.startLoad(1000);
    const kills = 6;
    for (let i = 0; i < kills; i++) {
      // Kill after a random amount of progress, so the kill lands at a random point of the pipeline.
      await run.progress(run.random.int(10, 120));
      run.fault(`SIGKILL worker #${i}`);
      await worker.killAndRestart();
    }
    await load.done;
    const counters = await run.settle();
    const exits = await run.stopAll();
    assertClean(run, counters, { exits });
    expect(exits.every((e) => e.code === 0)).toBe(true);
    expect(worker.incarnations).toBe(kills + 1);
  });

  test('crash after commit, before ack (DW_CRASH_POINTS), restarted each time', async () => {
    const run = await chaos.run('worker crash after commit before ack');
    const crashes = 4;
    // Crash points armed for the first incarnations only, so the run ends.
    const worker = await run.spawn('worker', 'worker', {
      envFor: (n) =>
        n < crashes
          ? { DW_CRASH_POINTS: 'worker:after-commit-before-ack', DW_CRASH_PROBABILITY: '0.02' }
          : {},
    });
    const relay = await run.spawn('relay', 'relay');
    await relay.waitHealthy();
    run.startLoad(1000);
    const counters = await run.settle();
    const exits = await run.stopAll();
    assertClean(run, counters, { exits, crashPointHits: worker.crashPointHits });
    expect(worker.crashPointHits).toBeGreaterThan(0);
    expect(exits.every((e) => e.code === 0)).toBe(true);
  });

  test('crash after storing a dead letter, before ack: one dead letter per invalid message, nothing else', async () => {
    const run = await chaos.run('worker crash after dead letter before ack');
    const crashes = 3;
    const worker = await run.spawn('worker', 'worker', {
      envFor: (n) =>
        n < crashes
          ? { DW_CRASH_POINTS: 'worker:after-dead-letter-before-ack', DW_CRASH_PROBABILITY: '0.2' }
          : {},
    });
    await run.spawn('relay', 'relay');
    run.startLoad(500, { invalid: 60 });
    const counters = await run.settle();
    const exits = await run.stopAll();
    assertClean(run, counters, { exits, crashPoints: worker.crashPoints });
    expect(worker.crashPoints).toEqual({ 'worker:after-dead-letter-before-ack': crashes });
    expect(exits.every((e) => e.code === 0)).toBe(true);
  });
});
