import { describe, expect, test } from 'vitest';
import { closeAmqpConnectionsOf, deleteAndRedeclareQueue, shortConsumerTimeout } from './support/faults.js';
import type { Supervisor } from './support/processes.js';
import { assertClean, type ChaosRun } from './support/run.js';
import { chaosScope } from './support/scope.js';

const chaos = chaosScope();

/** The worker consumes again by itself (no restart), then everything settles with counters at zero. */
async function expectCleanRecovery(run: ChaosRun, worker: Supervisor, relay: Supervisor): Promise<void> {
  const counters = await run.settle();
  await Promise.all([worker.waitHealthy(60_000), relay.waitHealthy(60_000)]);
  for (const p of [worker, relay]) expect(p.incarnations, `${p.all[0]?.name} should not have died`).toBe(1);
  expect(worker.outageWarnings, 'worker warnings about dependencies').toBeLessThanOrEqual(
    3 * run.faults.length + 5,
  );
  const exits = await run.stopAll();
  assertClean(run, counters, { exits });
  expect(exits.every((e) => e.code === 0)).toBe(true);
}

describe('AMQP channel faults (the connection stays up)', () => {
  test('consumer cancelled: the work queue is deleted and declared again during load', async () => {
    const { run, worker, relay } = await chaos.startPair('work queue deleted and declared again during load');
    const load = run.startLoad(800);
    for (let i = 0; i < 2; i++) {
      await run.progress(run.random.int(50, 200));
      const dropped = await deleteAndRedeclareQueue(run.topology);
      run.fault(`queue deleted with ${dropped} messages and declared again`);
      // /healthz says 200 only once the worker consumes again (it went 503 meanwhile).
      await worker.waitHealthy(60_000);
      // What the broker dropped with the queue, or as unroutable while it was gone, is published
      // again (same ids); the counters then check the worker took every message exactly once.
      run.fault(`republished ${await run.republishUnhandled()} messages the broker dropped`);
    }
    await load.done;
    await expectCleanRecovery(run, worker, relay);
  });

  test('consumer_timeout closes the worker channel (406) while handlers wait on Postgres', async () => {
    const { run, worker, relay } = await chaos.startPair('consumer_timeout during a Postgres lock');
    // The worker's next channel gets a 5 s consumer timeout: make it reconnect within the window.
    const restoreTick = await shortConsumerTimeout(5000, 500, async () => {
      const proc = worker.current;
      run.fault(`closed ${await closeAmqpConnectionsOf([proc?.pid ?? 0])} AMQP connections`);
      await proc?.waitForLog('RabbitMQ connection restored', 60_000);
      await worker.waitHealthy(60_000);
    });
    const load = run.startLoad(600);
    try {
      // Handlers hold their deliveries past the timeout: the broker closes the channel (406).
      const release = await run.holdHandlers();
      try {
        // The worker says so (with the broker's reason), and subscribes again by itself.
        await worker.current?.waitForLog('delivery acknowledgement on channel', 60_000);
        run.fault('consumer_timeout closed the worker channel');
      } finally {
        await release();
      }
    } finally {
      await restoreTick();
    }
    await load.done;
    await expectCleanRecovery(run, worker, relay);
  });
});
