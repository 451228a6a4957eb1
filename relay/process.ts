import type { Config } from '../shared/config.js';
import { createLogger } from '../shared/logger.js';
import { handleSignals, startHealthServer } from '../shared/process-lifecycle.js';
import type { RelayOptions } from './options.js';
import { Relay } from './relay.js';

/** `dw relay`: drains the outbox until SIGTERM (twice: at once); serves `/healthz`. */
export async function runRelayProcess(
  config: Config,
  overrides: Partial<Omit<RelayOptions, 'config' | 'logger'>>,
): Promise<void> {
  const log = createLogger({ level: config.logLevel, name: 'relay' });
  const relay = await Relay.start({ ...overrides, config, logger: log });
  const server = config.healthPort ? await startHealthServer(relay, config.healthPort, log) : undefined;
  handleSignals(relay, log, async () => {
    server?.close();
  });
}
