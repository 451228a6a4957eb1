import { createServer, type Server } from 'node:http';
import type { Logger } from './logger.js';
import {
  collectProcessMetrics,
  dependencyUp,
  registry,
  type ScrapeSources,
  setScrapeSources,
} from './metrics.js';

export interface Stoppable {
  stop(graceMs?: number): Promise<boolean>;
  health(): Promise<Record<string, boolean>>;
  /** Problems in words for `/healthz` (e.g. why a worker is not consuming); optional. */
  problems?(): string[];
  /** What the gauges read at scrape time come from (see ScrapeSources); optional. */
  scrapeSources?(): ScrapeSources;
}

/**
 * Two-stage shutdown: the first SIGTERM/SIGINT stops gracefully (exit 0 once drained, 1 if the
 * grace time ran out); a second signal exits at once, leaving in-flight messages to redelivery.
 * Installed before the component has finished starting, so that a signal during start-up also
 * ends in a graceful stop rather than the default abrupt exit.
 */
export function handleSignals(
  component: Promise<Stoppable>,
  log: Logger,
  onStopped?: () => Promise<void>,
): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now; in-flight work will be redelivered');
      process.exit(130);
    }
    stopping = true;
    log.info({ signal }, 'shutting down gracefully (send the signal again to force)');
    void component
      .then(async (started) => {
        const drained = await started.stop();
        await onStopped?.();
        process.exit(drained ? 0 : 1);
      })
      .catch((error) => {
        log.error({ err: error }, 'shutdown failed');
        process.exit(1);
      });
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

/**
 * `/healthz` (200 when every dependency answers, 503 with the list otherwise, and `problems` in
 * words when the component names any) and `/metrics` (Prometheus text format).
 */
export async function startHealthServer(component: Stoppable, port: number, log: Logger): Promise<Server> {
  collectProcessMetrics();
  if (component.scrapeSources) setScrapeSources(component.scrapeSources());
  const server = createServer((req, res) => {
    if (req.url === '/healthz' || req.url === '/readyz') {
      void component.health().then((deps) => {
        for (const [dependency, up] of Object.entries(deps)) dependencyUp.set({ dependency }, up ? 1 : 0);
        const problems = component.problems?.() ?? [];
        const ok = Object.values(deps).every(Boolean) && problems.length === 0;
        res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({
            status: ok ? 'ok' : 'degraded',
            dependencies: deps,
            ...(problems.length ? { problems } : {}),
          }),
        );
      });
      return;
    }
    if (req.url === '/metrics') {
      void registry.metrics().then(
        (text) => {
          res.writeHead(200, { 'content-type': registry.contentType });
          res.end(text);
        },
        (error: unknown) => {
          log.warn({ err: error }, 'could not collect the metrics');
          res.writeHead(500).end();
        },
      );
      return;
    }
    res.writeHead(404).end();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '0.0.0.0', resolve);
  });
  log.info({ port }, 'health endpoint listening on /healthz and /metrics');
  return server;
}
