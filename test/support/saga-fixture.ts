import { exampleMigrations } from '../../examples/app/migrations.js';
import { Relay } from '../../relay/relay.js';
import type { App } from '../../shared/app.js';
import type { WorkerOptions } from '../../worker/options.js';
import { Worker } from '../../worker/worker.js';
import { createTestEnv, type TestEnv } from './services.js';

/** Worker options of a saga test file, on top of the app and the test env's config. */
export type SagaWorkerOptions = Omit<WorkerOptions, 'app' | 'config'>;

export interface SagaFixture {
  env: TestEnv;
  /** The running worker; undefined between stopWorker and startWorker. */
  worker: Worker | undefined;
  relay: Relay;
  /** Stops the worker gracefully; resolves with its `stop` answer (true when it ended within the grace time). */
  stopWorker(graceMs?: number): Promise<boolean>;
  /** Starts a new worker of the app (after stopWorker), with these options instead of the fixture's. */
  startWorker(options?: SagaWorkerOptions): Promise<Worker>;
  /** Stops the relay and the worker, then drops the test env. */
  stop(): Promise<void>;
}

/**
 * The setup of a saga test file: a fresh env with the example app's tables, a worker serving `app`
 * and a relay. The worker's sweep timer is off unless `options` turn it on: tests sweep by hand.
 */
export async function startSagaFixture(app: App, options: SagaWorkerOptions = {}): Promise<SagaFixture> {
  const env = await createTestEnv(exampleMigrations);
  const start = (overrides: SagaWorkerOptions = options) =>
    Worker.start({ sagaSweepIntervalMs: 0, ...overrides, app, config: env.config });
  let worker: Worker | undefined;
  let relay: Relay;
  try {
    worker = await start();
    relay = await Relay.start({ config: env.config });
  } catch (error) {
    await worker?.stop();
    await env.teardown();
    throw error;
  }
  const fixture: SagaFixture = {
    env,
    worker,
    relay,
    async stopWorker(graceMs) {
      const running = fixture.worker;
      if (!running) throw new Error('the saga fixture has no worker running');
      fixture.worker = undefined;
      return running.stop(graceMs);
    },
    async startWorker(overrides) {
      if (fixture.worker) throw new Error('the saga fixture has a worker running: stopWorker first');
      fixture.worker = await start(overrides);
      return fixture.worker;
    },
    async stop() {
      await fixture.relay.stop();
      await fixture.worker?.stop();
      await env.teardown();
    },
  };
  return fixture;
}
