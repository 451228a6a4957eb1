import type { Server } from 'node:http';
import type { Config } from '../shared/config.js';
import { createLogger } from '../shared/logger.js';
import { handleSignals, startHealthServer } from '../shared/process-lifecycle.js';
import { startTelemetry } from '../shared/telemetry.js';
import type { RelayOptions } from './options.js';
import { Relay } from './relay.js';

/** `dw relay`: drains the outbox until SIGTERM (twice: at once); serves `/healthz`. */
export async function runRelayProcess(
  config: Config,
  overrides: Partial<Omit<RelayOptions, 'config' | 'logger'>>,
): Promise<void> {
  const log = createLogger({ level: config.logLevel, name: 'relay' });
  const telemetry = await startTelemetry('dw-relay', log);
  let server: Server | undefined;
  const starting = Relay.start({ ...overrides, config, logger: log });
  handleSignals(starting, log, async () => {
    server?.close();
    await telemetry?.shutdown();
  });
  const relay = await starting;
  if (config.healthPort) server = await startHealthServer(relay, config.healthPort, log);
}
