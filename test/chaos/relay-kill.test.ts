import { describe, expect, test } from 'vitest';
import { assertClean } from './support/run.js';
import { chaosScope } from './support/scope.js';

const chaos = chaosScope();

describe('relay SIGKILL', () => {
  test('crash between the BullMQ add and marking the outbox row, three relays at once', async () => {
    const run = await chaos.run('relay crash after add before mark, 3 relays');
    const crashesPerRelay = 2;
    const relays = await Promise.all(
      [0, 1, 2].map((i) =>
        run.spawn('relay', `relay${i}`, {
          // Small batches: more transactions, so more instants between add and mark.
          args: ['--batch-size', '20'],
          envFor: (n) =>
            n < crashesPerRelay
              ? { DW_CRASH_POINTS: 'relay:after-add-before-mark', DW_CRASH_PROBABILITY: '0.1' }
              : {},
        }),
      ),
    );
    await run.spawn('worker', 'worker');
    run.startLoad(1000);
    const counters = await run.settle();
    const exits = await run.stopAll();
    const hits = relays.reduce((n, r) => n + r.crashPointHits, 0);
    assertClean(run, counters, { exits, crashPointHits: hits });
    expect(hits).toBeGreaterThan(0);
    expect(exits.every((e) => e.code === 0)).toBe(true);
  });

  test('two relays SIGKILLed at random instants while the outbox fills', async () => {
    const run = await chaos.run('two relays SIGKILLed at random');
    const relays = await Promise.all(
      [0, 1].map((i) => run.spawn('relay', `relay${i}`, { args: ['--batch-size', '50'] })),
    );
    await Promise.all(relays.map((r) => r.waitHealthy()));
    await run.spawn('worker', 'worker');
    const load = run.startLoad(1000);
    for (let i = 0; i < 6; i++) {
      await run.progress(run.random.int(20, 150));
      const victim = run.random.pick(relays);
      run.fault(`SIGKILL ${victim.current?.name}`);
      await victim.killAndRestart();
    }
    await load.done;
    const counters = await run.settle();
    const exits = await run.stopAll();
    assertClean(run, counters, { exits });
    expect(exits.every((e) => e.code === 0)).toBe(true);
  });
});

describe('relay and worker SIGKILLed together', () => {
  test('a relay and a worker killed at the same instant, several times, under load with sagas', async () => {
    const run = await chaos.run('relay + worker SIGKILLed together');
    const relay = await run.spawn('relay', 'relay', { args: ['--batch-size', '20'] });
    const worker = await run.spawn('worker', 'worker');
    await Promise.all([relay.waitHealthy(), worker.waitHealthy()]);
    const load = run.startLoad(800, { trips: 40 });
    for (let i = 0; i < 4; i++) {
      await run.progress(run.random.int(30, 150));
      run.fault('SIGKILL relay and worker together');
      await Promise.all([relay.killAndRestart(), worker.killAndRestart()]);
    }
    await load.done;
    const counters = await run.settle(150_000);
    const exits = await run.stopAll();
    assertClean(run, counters, { exits });
    expect(exits.every((e) => e.code === 0)).toBe(true);
  });
});
