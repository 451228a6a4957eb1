import type { Server } from 'node:http';
import { loadApp } from '../shared/app.js';
import type { Config } from '../shared/config.js';
import { createLogger } from '../shared/logger.js';
import { handleSignals, startHealthServer } from '../shared/process-lifecycle.js';
import { startTelemetry } from '../shared/telemetry.js';
import type { WorkerOptions } from './options.js';
import { Worker } from './worker.js';

/** `dw worker`: loads the app, starts a worker, serves `/healthz`, stops on SIGTERM (twice: at once). */
export async function runWorkerProcess(
  config: Config,
  overrides: Partial<Omit<WorkerOptions, 'app' | 'config' | 'logger'>> & { app?: string },
): Promise<void> {
  const log = createLogger({ level: config.logLevel, name: 'worker' });
  const { app: appModule, ...options } = overrides;
  const app = await loadApp(appModule ?? config.app);
  const telemetry = await startTelemetry('dw-worker', log);
  let server: Server | undefined;
  const starting = Worker.start({ ...options, app, config, logger: log });
  handleSignals(starting, log, async () => {
    server?.close();
    await telemetry?.shutdown();
  });
  const worker = await starting;
  if (config.healthPort) server = await startHealthServer(worker, config.healthPort, log);
}
