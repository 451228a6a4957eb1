import type { Command } from 'commander';
import { runRelayProcess } from '../../relay/process.js';
import { runWorkerProcess } from '../../worker/process.js';
import { config } from './infra.js';
import { integer } from './parse.js';

export function registerProcesses(program: Command): void {
  program
    .command('worker')
    .description('run a worker: consume messages, run saga steps; SIGTERM stops gracefully')
    .option('--app <module>', 'app module (default: DW_APP, the bundled example app)')
    .option('--concurrency <n>', 'messages handled at once (default 10)', integer(1, 1000))
    .option(
      '--prefetch <n>',
      'unacked messages RabbitMQ may push ahead (default 2 x concurrency)',
      integer(1, 65535),
    )
    .option('--saga-concurrency <n>', 'saga steps run at once (default 10)', integer(1, 1000))
    .option('--shutdown-grace <ms>', 'grace time on SIGTERM (default 30000)', integer(0))
    .action(
      async (opts: {
        app?: string;
        concurrency?: number;
        prefetch?: number;
        sagaConcurrency?: number;
        shutdownGrace?: number;
      }) => {
        await runWorkerProcess(config(), {
          app: opts.app,
          concurrency: opts.concurrency,
          prefetch: opts.prefetch,
          sagaConcurrency: opts.sagaConcurrency,
          shutdownGraceMs: opts.shutdownGrace,
        });
      },
    );

  program
    .command('relay')
    .description('run a relay: drain the outbox into BullMQ and RabbitMQ (several may run at once)')
    .option('--batch-size <n>', 'outbox rows per transaction (default 500)', integer(1, 10_000))
    .option('--concurrency <n>', 'claim loops side by side (default 4)', integer(1, 64))
    .option('--poll-interval <ms>', 'polling fallback when no NOTIFY arrives (default 1000)', integer(10))
    .action(async (opts: { batchSize?: number; concurrency?: number; pollInterval?: number }) => {
      await runRelayProcess(config(), {
        batchSize: opts.batchSize,
        concurrency: opts.concurrency,
        pollIntervalMs: opts.pollInterval,
      });
    });
}
