import { DwProcess } from './children.js';
import type { BenchEnv } from './env.js';

export interface LiveSettings {
  concurrency: number;
  workerArgs: readonly string[];
  relayArgs: readonly string[];
  nodeArgs: readonly string[];
}

/** A worker and a relay running side by side, as in production: what latency, sagas and the soak use. */
export interface Live {
  worker: DwProcess;
  relay: DwProcess;
  stop(): Promise<void>;
}

export async function startLive(env: BenchEnv, settings: LiveSettings): Promise<Live> {
  const worker = await DwProcess.start(
    'worker',
    ['worker', '--concurrency', String(settings.concurrency), ...settings.workerArgs],
    env.childEnv(),
    'worker started',
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
    await worker.stop();
    throw error;
  }
  return {
    worker,
    relay,
    async stop() {
      await Promise.all([worker.stop(), relay.stop()]);
    },
  };
}
