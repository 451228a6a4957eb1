import { describe, expect, test } from 'vitest';
import { waitUntil } from '../../shared/wait.js';
import { closeAmqpConnectionsOf, terminateDatabaseSessions } from './support/faults.js';
import type { Supervisor } from './support/processes.js';
import { assertClean, type ChaosRun } from './support/run.js';
import { chaosScope } from './support/scope.js';

const chaos = chaosScope();

/** Each process must recover by itself, and say so on /healthz; no restarts by the supervisor. */
async function expectRecoveredWithoutRestart(processes: Supervisor[]): Promise<void> {
  await Promise.all(processes.map((p) => p.waitHealthy(60_000)));
  for (const p of processes) expect(p.incarnations, `${p.all[0]?.name} should not have died`).toBe(1);
}

/** A log storm is many lines per outage (one per message, per retry); a few per outage is what we expect. */
function expectNoLogStorm(processes: Supervisor[], faults: number): void {
  for (const p of processes)
    expect(p.outageWarnings, `${p.all[0]?.name} warnings about dependencies`).toBeLessThanOrEqual(
      3 * faults + 5,
    );
}

/**
 * After the load: everything settled with all counters at zero, both processes recovered by
 * themselves without a log storm, and both stop cleanly.
 */
async function expectCleanRecovery(run: ChaosRun, processes: Supervisor[]): Promise<void> {
  const counters = await run.settle();
  await expectRecoveredWithoutRestart(processes);
  expectNoLogStorm(processes, run.faults.length);
  const exits = await run.stopAll();
  assertClean(run, counters, { exits });
  expect(exits.every((e) => e.code === 0)).toBe(true);
}

describe('dependencies going away during load', () => {
  test('Postgres sessions terminated (pg_terminate_backend) again and again', async () => {
    const { run, worker, relay } = await chaos.startPair('pg_terminate_backend during load');
    const load = run.startLoad(1000);
    for (let i = 0; i < 6; i++) {
      await run.progress(run.random.int(20, 150));
      const n = await terminateDatabaseSessions(run.database);
      run.fault(`terminated ${n} sessions`);
    }
    await load.done;
    await expectCleanRecovery(run, [worker, relay]);
  });

  test('RabbitMQ closes the worker and relay connections during load', async () => {
    const { run, worker, relay } = await chaos.startPair('AMQP connections closed during load');
    const load = run.startLoad(1000);
    for (let i = 0; i < 3; i++) {
      await run.progress(run.random.int(50, 200));
      const pids = [worker.current?.pid ?? 0, relay.current?.pid ?? 0];
      const n = await closeAmqpConnectionsOf(pids);
      run.fault(`closed ${n} AMQP connections`);
      // The next fault only once the worker consumes again.
      await worker.waitHealthy();
    }
    await load.done;
    await expectCleanRecovery(run, [worker, relay]);
    expect(run.faults.some((f) => !f.startsWith('closed 0'))).toBe(true);
  });

  test('Redis restarts and loses its data: the relay delivers again, nothing lost', async () => {
    const redis = await chaos.privateRedis();
    const { run, worker, relay } = await chaos.startPair('Redis restart losing its data', {
      redisUrl: redis.url,
    });
    const load = run.startLoad(1000);
    for (let i = 0; i < 3; i++) {
      await run.progress(run.random.int(100, 300));
      await redis.restart(async () => {
        // While Redis is down the relay says so; the worker and relay stay up.
        await waitUntil(
          async () => (await relay.current?.health())?.dependencies.redis === false,
          'the relay /healthz to report Redis down',
        );
      });
      run.fault('redis restarted empty');
    }
    await load.done;
    await expectCleanRecovery(run, [worker, relay]);
  });
});
