import { DwProcess } from './children.js';
import type { BenchEnv } from './env.js';
import { startWorkers, stopWorkers } from './workers.js';

export interface LiveSettings {
  concurrency: number;
  /** `dw worker` processes side by side. Default 1. */
  workers?: number;
  workerArgs: readonly string[];
  relayArgs: readonly string[];
  nodeArgs: readonly string[];
}

/** Workers and a relay running side by side, as in production: what latency, sagas and the soak use. */
export interface Live {
  /** The first worker (the only one unless `workers` > 1). */
  worker: DwProcess;
  workers: DwProcess[];
  relay: DwProcess;
  stop(): Promise<void>;
}

export async function startLive(env: BenchEnv, settings: LiveSettings): Promise<Live> {
  const { workers } = await startWorkers(
    env,
    settings.workers ?? 1,
    ['--concurrency', String(settings.concurrency), ...settings.workerArgs],
    settings.nodeArgs,
  );
  let relay: DwProcess;
  try {
    relay = await DwProcess.start(
      'relay',
      ['relay', ...settings.relayArgs],
      env.childEnv(),
      'relay started',
      settings.nodeArgs,
    );
  } catch (error) {
    await stopWorkers(workers);
    throw error;
  }
  return {
    worker: workers[0]!,
    workers,
    relay,
    async stop() {
      await Promise.all([stopWorkers(workers), relay.stop()]);
    },
  };
}
