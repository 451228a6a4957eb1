import { describe, expect, test } from 'vitest';
import { assertClean } from './support/run.js';
import { chaosScope } from './support/scope.js';

const chaos = chaosScope();

describe('BookTrip sagas under faults', () => {
  test('worker killed after step commits, during compensations and at random: every saga terminal, effects once, compensations in reverse', async () => {
    const run = await chaos.run('sagas: worker crashes in steps and compensations');
    // Crash points armed until two incarnations died during a compensation (inside its
    // transaction, before the commit) and two right after a step committed; random SIGKILLs too.
    const worker = await run.spawn('worker', 'worker', {
      envFor: (_, hits) => {
        const armed = [
          (hits['saga:during-compensation'] ?? 0) < 2 && 'saga:during-compensation=0.3',
          (hits['saga:after-step-commit'] ?? 0) < 2 && 'saga:after-step-commit=0.03',
        ].filter(Boolean);
        return { DW_CRASH_POINTS: armed.join(',') };
      },
    });
    const relay = await run.spawn('relay', 'relay');
    await relay.waitHealthy();
    const load = run.startLoad(300, { trips: 150 });
    for (let i = 0; i < 2; i++) {
      await run.progress(run.random.int(50, 150));
      run.fault(`SIGKILL ${worker.current?.name}`);
      await worker.killAndRestart();
    }
    await load.done;
    const counters = await run.settle(150_000);
    const exits = await run.stopAll();
    assertClean(run, counters, { exits, crashPoints: worker.crashPoints });
    expect(worker.crashPoints).toEqual({ 'saga:during-compensation': 2, 'saga:after-step-commit': 2 });
    expect(exits.every((e) => e.code === 0)).toBe(true);
  });

  test('relays killed between add and mark while sagas run: step jobs delivered twice change nothing', async () => {
    const run = await chaos.run('sagas: relay crashes after add before mark');
    const relays = await Promise.all(
      [0, 1].map((i) =>
        run.spawn('relay', `relay${i}`, {
          args: ['--batch-size', '10'],
          envFor: (n) =>
            n < 3 ? { DW_CRASH_POINTS: 'relay:after-add-before-mark', DW_CRASH_PROBABILITY: '0.1' } : {},
        }),
      ),
    );
    await run.spawn('worker', 'worker');
    run.startLoad(200, { trips: 150 });
    const counters = await run.settle(150_000);
    const exits = await run.stopAll();
    const hits = relays.reduce((n, r) => n + r.crashPointHits, 0);
    assertClean(run, counters, { exits, crashPointHits: hits });
    expect(hits).toBeGreaterThan(0);
    expect(exits.every((e) => e.code === 0)).toBe(true);
  });

  test('Redis restarts empty while sagas run: recovered without a person', async () => {
    const redis = await chaos.privateRedis();
    const { run, worker, relay } = await chaos.startPair('sagas: Redis restart losing its data', {
      redisUrl: redis.url,
    });
    const load = run.startLoad(300, { trips: 150 });
    for (let i = 0; i < 2; i++) {
      await run.progress(run.random.int(50, 150));
      await redis.restart();
      run.fault('redis restarted empty');
    }
    await load.done;
    const counters = await run.settle(150_000);
    await Promise.all([worker.waitHealthy(60_000), relay.waitHealthy(60_000)]);
    expect(worker.incarnations).toBe(1);
    expect(relay.incarnations).toBe(1);
    const exits = await run.stopAll();
    assertClean(run, counters, { exits });
    expect(exits.every((e) => e.code === 0)).toBe(true);
  });
});
