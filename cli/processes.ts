import { type Command, Option } from 'commander';
import { runRelayProcess } from '../relay/process.js';
import { MAX_TIMER_MS, relayDefaults, workerDefaults } from '../shared/defaults.js';
import type { QueueType } from '../shared/queue-type.js';
import { runWorkerProcess } from '../worker/process.js';
import { config } from './infra.js';
import { integer, queueTypeOption } from './parse.js';

/** `--flag <n>` parsed by `parse` whose help shows the default that applies when it is absent. */
function numberOption(flags: string, description: string, parse: (value: string) => number, value: number) {
  return new Option(flags, description).argParser(parse).default(value, String(value));
}

export function registerProcesses(program: Command): void {
  program
    .command('worker')
    .description('run a worker: consume messages, run saga steps; SIGTERM stops gracefully')
    .option('--app <module>', 'app module (default: DW_APP, the bundled example app)')
    .addOption(
      numberOption(
        '--concurrency <n>',
        'messages handled at once',
        integer(1, 1000),
        workerDefaults.concurrency,
      ),
    )
    .addOption(
      numberOption(
        '--batch-size <n>',
        'deliveries at hand handled in one transaction (1: one by one)',
        integer(1, workerDefaults.maxBatchSize),
        workerDefaults.batchSize,
      ),
    )
    .addOption(
      // No fixed default: it follows --concurrency and --batch-size.
      new Option(
        '--prefetch <n>',
        `unacked messages RabbitMQ may push ahead (default: ${workerDefaults.prefetchPerConcurrency} x concurrency x batch size)`,
      ).argParser(integer(1, workerDefaults.maxPrefetch)),
    )
    .addOption(
      // No fixed default: DW_ORDERED_PARTITIONS when set.
      new Option(
        '--ordered-partitions <n>',
        `partition queues of keyed messages, the same for every worker of the queue; 0: no ordered keys (default: DW_ORDERED_PARTITIONS, else ${workerDefaults.orderedPartitions})`,
      ).argParser(integer(0, workerDefaults.maxOrderedPartitions)),
    )
    .addOption(
      numberOption(
        '--saga-concurrency <n>',
        'saga steps run at once',
        integer(1, 1000),
        workerDefaults.sagaConcurrency,
      ),
    )
    .addOption(
      numberOption(
        '--saga-batch-size <n>',
        'saga steps per transaction (1: one each)',
        integer(1, workerDefaults.maxSagaBatchSize),
        workerDefaults.sagaBatchSize,
      ),
    )
    .addOption(
      numberOption(
        '--shutdown-grace <ms>',
        'grace time on SIGTERM',
        integer(0, MAX_TIMER_MS),
        workerDefaults.shutdownGraceMs,
      ),
    )
    .addOption(queueTypeOption())
    .action(
      async (opts: {
        app?: string;
        queueType?: QueueType;
        concurrency?: number;
        batchSize?: number;
        prefetch?: number;
        orderedPartitions?: number;
        sagaConcurrency?: number;
        sagaBatchSize?: number;
        shutdownGrace?: number;
      }) => {
        await runWorkerProcess(config(), {
          app: opts.app,
          concurrency: opts.concurrency,
          batchSize: opts.batchSize,
          prefetch: opts.prefetch,
          orderedPartitions: opts.orderedPartitions,
          sagaConcurrency: opts.sagaConcurrency,
          sagaBatchSize: opts.sagaBatchSize,
          shutdownGraceMs: opts.shutdownGrace,
          queueType: opts.queueType,
        });
      },
    );

  program
    .command('relay')
    .description('run a relay: drain the outbox into BullMQ and RabbitMQ (several may run at once)')
    .addOption(
      numberOption(
        '--batch-size <n>',
        'outbox rows per transaction',
        integer(1, relayDefaults.maxBatchSize),
        relayDefaults.batchSize,
      ),
    )
    .addOption(
      numberOption(
        '--concurrency <n>',
        'claim loops side by side',
        integer(1, 64),
        relayDefaults.concurrency,
      ),
    )
    .addOption(
      numberOption(
        '--poll-interval <ms>',
        'polling fallback when no NOTIFY arrives',
        integer(10, MAX_TIMER_MS),
        relayDefaults.pollIntervalMs,
      ),
    )
    .action(async (opts: { batchSize?: number; concurrency?: number; pollInterval?: number }) => {
      await runRelayProcess(config(), {
        batchSize: opts.batchSize,
        concurrency: opts.concurrency,
        pollIntervalMs: opts.pollInterval,
      });
    });
}
