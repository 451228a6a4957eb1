import type { Command } from 'commander';
import { loadApp } from '../shared/app.js';
import { redactUrl } from '../shared/config.js';
import { ensureDatabase, migrate } from '../shared/db/migrate.js';
import { workerDefaults } from '../shared/defaults.js';
import { declareOrderedTopology, orderedExchangeName } from '../shared/ordering.js';
import { appTopology, declareTopology } from '../shared/topology.js';
import { config, withAmqpChannel, withDatabase } from './infra.js';
import { integer } from './parse.js';

export function registerMigrate(program: Command): void {
  program
    .command('migrate')
    .description(
      "create the database if missing, apply durable-worker's and the app's migrations, declare the app's exchange and queue",
    )
    .option('--app <module>', 'app module whose migrations to apply too (default: DW_APP)')
    .option(
      '--ordered-partitions <n>',
      `partition queues of keyed messages to declare, as the workers will use; 0: none (default: DW_ORDERED_PARTITIONS, else ${workerDefaults.orderedPartitions})`,
      integer(0, workerDefaults.maxOrderedPartitions),
    )
    .action(async (opts: { app?: string; orderedPartitions?: number }) => {
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
      const topology = appTopology(app, cfg.exchange);
      const partitions = opts.orderedPartitions ?? cfg.orderedPartitions ?? workerDefaults.orderedPartitions;
      await withAmqpChannel(cfg, async (channel, connection) => {
        await declareTopology(channel, topology);
        if (partitions > 0 && topology.types.length > 0)
          await declareOrderedTopology(
            cfg.amqpUrl,
            () => connection.createChannel(),
            channel,
            topology,
            partitions,
          );
      });
      process.stdout.write(`declared exchange ${topology.exchange} and queue ${topology.queue}\n`);
      if (partitions > 0 && topology.types.length > 0)
        process.stdout.write(
          `declared exchange ${orderedExchangeName(topology.exchange)} and ${partitions} ordered partition queue(s) ${topology.queue}.ordered.<0-${partitions - 1}>\n`,
        );
    });
}
