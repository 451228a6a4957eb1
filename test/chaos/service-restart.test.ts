import { describe, expect, test } from 'vitest';
import { waitUntil } from '../../shared/wait.js';
import { services } from './support/faults.js';
import type { Supervisor } from './support/processes.js';
import { assertClean } from './support/run.js';
import { chaosScope } from './support/scope.js';

/**
 * Real restarts of the shared PostgreSQL, RabbitMQ and Redis during load. They disturb anything
 * else using the services, so this suite runs alone (`npm run test:chaos`, after the normal suite).
 */
const chaos = chaosScope();

type Dependency = 'postgres' | 'rabbitmq' | 'redis';

/** While the service is down, /healthz of each process says so (the readiness signal). */
async function expectReportedDown(processes: Supervisor[], dependency: Dependency): Promise<void> {
  for (const p of processes) {
    await waitUntil(
      async () => {
        const deps = (await p.current?.health())?.dependencies;
        // A worker without sagas has no Redis connection to report.
        return deps !== undefined && (!(dependency in deps) || deps[dependency] === false);
      },
      `${p.current?.name} /healthz to report ${dependency} down`,
      { timeoutMs: 30_000, intervalMs: 100 },
    );
  }
}

async function scenario(
  name: string,
  dependency: Dependency,
  restart: (whileDown: () => Promise<void>) => Promise<void>,
): Promise<void> {
  const { run, worker, relay } = await chaos.startPair(name);
  const processes = [worker, relay];
  const load = run.startLoad(800, { trips: 60 });
  for (let i = 0; i < 2; i++) {
    await run.progress(run.random.int(100, 400));
    run.fault(`${dependency} restart`);
    await restart(() => expectReportedDown(processes, dependency));
    // Recovered by themselves: healthy again without being restarted.
    await Promise.all(processes.map((p) => p.waitHealthy(60_000)));
  }
  await load.done;
  const counters = await run.settle();
  for (const p of processes) expect(p.incarnations, `${p.all[0]?.name} should not have died`).toBe(1);
  for (const p of processes)
    expect(p.outageWarnings, `${p.all[0]?.name} warnings about dependencies`).toBeLessThanOrEqual(
      10 * run.faults.length + 5,
    );
  const exits = await run.stopAll();
  assertClean(run, counters, { exits });
  expect(exits.every((e) => e.code === 0)).toBe(true);
}

describe('service restarts during load', () => {
  test('RabbitMQ stop_app / start_app', () =>
    scenario('RabbitMQ restart', 'rabbitmq', (whileDown) => services.restartRabbitmq(whileDown)));

  test('PostgreSQL restart', () =>
    scenario('PostgreSQL restart', 'postgres', (whileDown) => services.restartPostgres(whileDown)));

  test('Redis restart (comes back empty)', () =>
    scenario('Redis restart', 'redis', (whileDown) => services.restartRedis(whileDown)));
});
