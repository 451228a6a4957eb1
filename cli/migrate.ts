import type { Command } from 'commander';
import { loadApp } from '../shared/app.js';
import { redactUrl } from '../shared/config.js';
import { ensureDatabase, migrate } from '../shared/db/migrate.js';
import { workerDefaults } from '../shared/defaults.js';
import {
  declareOrderedTopology,
  declareUnorderedFallback,
  orderedExchangeName,
  orderingPluginAvailable,
} from '../shared/ordering.js';
import { consumedQueueOptions, type QueueType, resolveQueueType } from '../shared/queue-type.js';
import { appTopology, declareTopology } from '../shared/topology.js';
import { config, withAmqpChannel, withDatabase } from './infra.js';
import { integer, queueTypeOption } from './parse.js';

export function registerMigrate(program: Command): void {
  program
    .command('migrate')
    .description(
      "create the database if missing, apply durable-worker's and the app's migrations, declare the app's exchange and queue",
    )
    .option('--app <module>', 'app module whose migrations to apply too (default: DW_APP)')
    .addOption(queueTypeOption())
    .option(
      '--ordered-partitions <n>',
      `partition queues of keyed messages to declare, as the workers will use; 0: none (default: DW_ORDERED_PARTITIONS, else ${workerDefaults.orderedPartitions})`,
      integer(0, workerDefaults.maxOrderedPartitions),
    )
    .action(async (opts: { app?: string; queueType?: QueueType; orderedPartitions?: number }) => {
      const cfg = config();
      const app = await loadApp(opts.app ?? cfg.app);
      if (await ensureDatabase(cfg.databaseUrl)) {
        process.stderr.write(`created database ${redactUrl(cfg.databaseUrl)}\n`);
      }
      const applied = await withDatabase(cfg, (knex) => migrate(knex, app.migrations));
      process.stdout.write(
        applied.length
          ? `applied ${applied.length} migration(s): ${applied.join(', ')}\n`
          : 'already up to date\n',
      );
      const requested = opts.queueType ?? cfg.queueType;
      const partitions = opts.orderedPartitions ?? cfg.orderedPartitions ?? workerDefaults.orderedPartitions;
      let unordered = false;
      const topology = await withAmqpChannel(cfg, async (channel, connection) => {
        const queue = appTopology(app, cfg.exchange).queue;
        const type = await resolveQueueType(connection, queue, requested, (t) =>
          consumedQueueOptions(t, queue),
        );
        const declared = appTopology(app, cfg.exchange, queue, { type, explicit: requested !== undefined });
        await declareTopology(channel, declared, connection);
        const explicit = opts.orderedPartitions !== undefined || cfg.orderedPartitions !== undefined;
        if (
          partitions > 0 &&
          declared.types.length > 0 &&
          !explicit &&
          !(await orderingPluginAvailable(cfg.amqpUrl, declared))
        ) {
          // As the workers do: keyed messages are then handled without ordering, never unroutable.
          await declareUnorderedFallback(channel, declared);
          process.stderr.write(
            'RabbitMQ lacks the consistent-hash exchange plugin: messages with an ordering key will be handled without ordering (rabbitmq-plugins enable rabbitmq_consistent_hash_exchange)\n',
          );
          unordered = true;
        } else if (partitions > 0 && declared.types.length > 0)
          await declareOrderedTopology(
            cfg.amqpUrl,
            () => connection.createChannel(),
            channel,
            declared,
            partitions,
            connection,
          );
        return declared;
      });
      process.stdout.write(
        `declared exchange ${topology.exchange} and queue ${topology.queue} (${topology.queueType})\n`,
      );
      if (partitions > 0 && topology.types.length > 0 && !unordered)
        process.stdout.write(
          `declared exchange ${orderedExchangeName(topology.exchange)} and ${partitions} ordered partition queue(s) ${topology.queue}.ordered.<0-${partitions - 1}>\n`,
        );
    });
}
