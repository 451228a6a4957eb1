import { describe, expect, test } from 'vitest';
import { assertClean } from './support/run.js';
import { chaosScope } from './support/scope.js';

const chaos = chaosScope();

const graceMs = 10_000;
// Past the grace time plus the time to close connections, the process is SIGKILLed and the test fails.
const exitWithinMs = graceMs + 10_000;

describe('SIGTERM with work in flight', () => {
  test('worker and relay exit 0 within their grace time, nothing is lost', async () => {
    const run = await chaos.run('SIGTERM with work in flight');
    const worker = await run.spawn('worker', 'worker', { args: ['--shutdown-grace', String(graceMs)] });
    const relay = await run.spawn('relay', 'relay');
    await Promise.all([worker.waitHealthy(), relay.waitHealthy()]);
    const load = run.startLoad(1000);
    const exits: Array<{ who: string; code?: number | null; signal?: string | null }> = [];
    // The worker first: it consumes only while the test waits for progress, so messages are left
    // for each round to hold in flight.
    for (let i = 0; i < 3; i++) {
      await run.progress(run.random.int(10, 80));
      // Handlers are certainly in flight: blocked on a lock the test releases only once the
      // worker is shutting down, so they must finish during the grace time.
      const release = await run.holdHandlers();
      run.fault(`SIGTERM ${worker.current?.name} with handlers in flight`);
      const exit = await worker.stopAndRestart(async (proc) => {
        proc.signal('SIGTERM');
        await proc.waitForLog('shutting down gracefully').finally(release);
      }, exitWithinMs);
      exits.push({ who: 'worker', code: exit?.code, signal: exit?.signal });
    }
    for (let i = 0; i < 3; i++) {
      await run.progress(run.random.int(10, 80));
      // A running relay (a signal during Node's own bootstrap, before any code runs, cannot be handled).
      await relay.waitHealthy();
      run.fault(`SIGTERM ${relay.current?.name}`);
      const exit = await relay.stopAndRestart(async (proc) => proc.signal('SIGTERM'), exitWithinMs);
      exits.push({ who: 'relay', code: exit?.code, signal: exit?.signal });
    }
    await load.done;
    const counters = await run.settle();
    const final = await run.stopAll();
    assertClean(run, counters, { exits, final });
    // Exit 0 means drained within the grace time; 1 would mean the grace time ran out.
    expect(exits).toEqual(exits.map((e) => ({ ...e, code: 0, signal: null })));
    expect(final.every((e) => e.code === 0)).toBe(true);
  });

  test('a second SIGTERM exits at once; redelivery covers what was in flight', async () => {
    const run = await chaos.run('second SIGTERM exits at once');
    const worker = await run.spawn('worker', 'worker', { args: ['--shutdown-grace', String(graceMs)] });
    await run.spawn('relay', 'relay');
    await worker.waitHealthy();
    const load = run.startLoad(1000);
    const exits = [];
    for (let i = 0; i < 3; i++) {
      await run.progress(run.random.int(10, 80));
      const release = await run.holdHandlers();
      run.fault(`SIGTERM twice ${worker.current?.name} with handlers in flight`);
      try {
        exits.push(
          await worker.stopAndRestart(async (proc) => {
            proc.signal('SIGTERM');
            await proc.waitForLog('shutting down gracefully');
            proc.signal('SIGTERM');
          }, exitWithinMs),
        );
      } finally {
        await release();
      }
    }
    await load.done;
    const counters = await run.settle();
    const final = await run.stopAll();
    assertClean(run, counters, { exits, final });
    // 130: stopped by the second signal while its handlers were still held.
    expect(exits.map((e) => e?.code)).toEqual([130, 130, 130]);
  });
});
