import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { isLoopbackHost } from '../ops/dashboard/security.js';
import { startDashboard } from '../ops/dashboard/server.js';
import { loadApp } from '../shared/app.js';
import { UsageError } from '../shared/errors.js';
import { createLogger } from '../shared/logger.js';
import { config } from './infra.js';
import { integer } from './parse.js';
import { shown } from './render.js';

function hostArgument(value: string): string {
  if (!/^[A-Za-z0-9.:[\]-]{1,255}$/.test(value)) {
    throw new InvalidArgumentError(`expected a host name or IP address, got ${shown(value)}`);
  }
  return value;
}

/** `dw dashboard`: the web dashboard and its JSON API, until SIGTERM or SIGINT. */
export function registerDashboard(program: Command): void {
  program
    .command('dashboard')
    .description(
      'serve the web dashboard (dead letters, sagas, queues; replay and purge); 127.0.0.1 unless --host and DW_DASHBOARD_TOKEN',
    )
    .option('--port <n>', 'port to listen on', integer(0, 65535), 3000)
    .option(
      '--host <host>',
      'address to bind; any but loopback needs DW_DASHBOARD_TOKEN',
      hostArgument,
      '127.0.0.1',
    )
    .option(
      '--app <module>',
      'app whose work queues to show and whose sagas replays resume (default: DW_APP)',
    )
    .action(async (opts: { port: number; host: string; app?: string }) => {
      const token = process.env.DW_DASHBOARD_TOKEN || undefined;
      // Before anything is opened: an open dashboard on the network could replay and purge.
      if (!isLoopbackHost(opts.host) && !token) {
        throw new UsageError(
          `refusing to serve the dashboard on ${opts.host} without DW_DASHBOARD_TOKEN: it can replay and purge dead letters; set the token or bind 127.0.0.1`,
        );
      }
      const cfg = config();
      const app = await loadApp(opts.app ?? cfg.app);
      const logger = createLogger({ level: cfg.logLevel, name: 'dashboard', destination: 2 });
      const dashboard = await startDashboard({
        config: cfg,
        app,
        token,
        tokenUser: process.env.DW_DASHBOARD_USER || undefined,
        host: opts.host,
        port: opts.port,
        logger,
      });
      process.stdout.write(`dashboard on ${dashboard.url}${token ? ' (token required)' : ''}\n`);
      await new Promise<void>((resolve) => {
        const stop = () => {
          process.off('SIGTERM', stop);
          process.off('SIGINT', stop);
          dashboard.close().finally(resolve);
        };
        process.on('SIGTERM', stop);
        process.on('SIGINT', stop);
      });
    });
}
