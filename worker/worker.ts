import type { Knex } from 'knex';
import pLimit from 'p-limit';
import { ResilientAmqpConnection } from '../shared/amqp.js';
import { assertDatabaseReachable, createKnex, databaseHealthy } from '../shared/db/knex.js';
import { assertMigrated } from '../shared/db/migrate.js';
import { startHeartbeat } from '../shared/heartbeat.js';
import { startHousekeeping } from '../shared/housekeeping.js';
import type { Logger } from '../shared/logger.js';
import type { ScrapeSources } from '../shared/metrics.js';
import { orderingPluginAvailable } from '../shared/ordering.js';
import { type ChannelSource, consumedQueueOptions, resolveQueueType } from '../shared/queue-type.js';
import { settledWithin } from '../shared/time.js';
import { appTopology, type Topology } from '../shared/topology.js';
import { Consumer } from './consumer.js';
import { MessageProcessor } from './message-processor.js';
import { type ResolvedWorkerOptions, resolveWorkerOptions, type WorkerOptions } from './options.js';
import { OrderedConsumer } from './ordered-consumer.js';
import { RetryQueues } from './retry-queues.js';
import { type SagaRunner, startSagaRunner } from './saga/runner.js';

/**
 * A worker: the AMQP consumer with its handler pipeline, the saga step runner and housekeeping,
 * sharing one Postgres pool. `Worker.start` fails fast, naming any service it cannot reach.
 */
export class Worker {
  private stopped: Promise<boolean> | undefined;

  private constructor(
    readonly options: ResolvedWorkerOptions,
    readonly knex: Knex,
    private readonly ownsKnex: boolean,
    private readonly amqp: ResilientAmqpConnection,
    private readonly consumer: Consumer,
    /** The partition queues of keyed messages; undefined with orderedPartitions 0. */
    private readonly orderedConsumer: OrderedConsumer | undefined,
    private readonly sagaRunner: SagaRunner | undefined,
    private readonly housekeeping: { stop(): Promise<void> },
    /** Aborted once the grace time is over: outage backoffs stop waiting. */
    private readonly abort: AbortController,
  ) {}

  /** The process's row in dw_processes (the dashboard's live workers). */
  private heartbeat?: { stop(): Promise<void> };

  static async start(input: WorkerOptions): Promise<Worker> {
    const options = resolveWorkerOptions(input);
    const { config, app, logger: log } = options;
    const knex =
      options.knex ??
      createKnex(config.databaseUrl, { poolMax: options.poolMax, applicationName: 'dw-worker', logger: log });
    const cleanups: Array<() => Promise<unknown>> = options.knex ? [] : [() => knex.destroy()];
    try {
      await assertDatabaseReachable(knex, config.databaseUrl);
      await assertMigrated(knex, app.migrations);
      const amqp = new ResilientAmqpConnection(config.amqpUrl, {
        connectionName: `dw-worker ${app.name}`,
        logger: log,
      });
      cleanups.push(() => amqp.close());
      await amqp.start();
      // Before the consumer declares it: without an explicit type an existing queue keeps its own.
      const connection = amqp.current as ChannelSource;
      const queueType = await resolveQueueType(
        connection,
        options.queue,
        options.queueType,
        (type) => consumedQueueOptions(type, options.queue),
        { log },
      );
      const sagaRunner = await startSagaRunner({
        app,
        knex,
        redis: config,
        bullmqPrefix: config.bullmqPrefix,
        concurrency: options.sagaConcurrency,
        sweepIntervalMs: options.sagaSweepIntervalMs,
        staleAfterMs: options.sagaStaleAfterMs,
        eagerLeaseMs: options.sagaEagerLeaseMs,
        batchSize: options.sagaBatchSize,
        log,
      });
      if (sagaRunner) cleanups.push(() => sagaRunner.stop(0));
      const abort = new AbortController();
      const processor = new MessageProcessor({
        app,
        knex,
        queue: options.queue,
        exchange: config.exchange,
        retryQueues: new RetryQueues(amqp, options.queue, {
          requested: options.queueType,
          workQueue: queueType,
          log,
        }),
        queueType,
        maxMessageBytes: options.maxMessageBytes,
        maxDeliveries: options.maxDeliveries,
        eagerSagaSteps: sagaRunner?.eager,
        log,
        signal: abort.signal,
      });
      // Both consumers share the handler slots (and so the pool): `concurrency` bounds them together.
      const consumerOptions = {
        topology: appTopology(app, config.exchange, options.queue, {
          type: queueType,
          explicit: options.queueType !== undefined,
        }),
        concurrency: options.concurrency,
        prefetch: options.prefetch,
        batchSize: options.batchSize,
        limit: pLimit(options.concurrency),
      };
      const ordered = await orderedKeysOn(input, options, consumerOptions.topology, log);
      const consumer = new Consumer(
        amqp,
        // Ordered keys asked for but the broker cannot order them: keyed messages come here unordered.
        { ...consumerOptions, unorderedKeys: !ordered && options.orderedPartitions > 0 },
        processor,
        log,
      );
      const orderedConsumer =
        ordered && app.handlers.size > 0
          ? new OrderedConsumer(
              amqp,
              { ...consumerOptions, partitions: options.orderedPartitions, amqpUrl: config.amqpUrl },
              processor,
              log,
            )
          : undefined;
      if (app.handlers.size > 0) await consumer.start();
      await orderedConsumer?.start();
      const housekeeping = startHousekeeping(knex, {
        intervalMs: options.housekeepingIntervalMs,
        dedupWindowMs: options.dedupWindowMs,
        outboxRetentionMs: options.outboxRetentionMs,
        log,
      });
      const worker = new Worker(
        options,
        knex,
        !options.knex,
        amqp,
        consumer,
        orderedConsumer,
        sagaRunner,
        housekeeping,
        abort,
      );
      worker.heartbeat = startHeartbeat(knex, 'worker');
      log.info(
        {
          app: app.name,
          queue: options.queue,
          queueType,
          concurrency: options.concurrency,
          batchSize: options.batchSize,
        },
        'worker started',
      );
      return worker;
    } catch (error) {
      for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
      throw error;
    }
  }

  /**
   * Which dependencies answer right now (for `/healthz`), and `consuming`: whether the worker takes
   * messages from its queue (false while it subscribes again after the broker closed its channel or
   * cancelled its consumer; `problems` says why).
   */
  async health(): Promise<Record<string, boolean>> {
    const database = await databaseHealthy(this.knex);
    const result: Record<string, boolean> = { postgres: database, rabbitmq: this.amqp.connected };
    if (this.hasHandlers)
      result.consuming = this.consumer.consuming && (this.orderedConsumer?.consuming ?? true);
    if (this.sagaRunner) result.redis = await this.sagaRunner.healthy();
    return result;
  }

  /**
   * The worker's `/metrics` reads the outbox, dead letters and sagas, and its work queue's depth
   * (ready from the broker, on a channel of its own: a failed check closes it), at scrape time.
   */
  scrapeSources(): ScrapeSources {
    const queue = this.options.queue;
    return {
      knex: this.knex,
      workQueue: async () => {
        const unacked = this.hasHandlers
          ? this.consumer.unsettled + (this.orderedConsumer?.unsettled ?? 0)
          : 0;
        const connection = this.amqp.current;
        if (!connection || !this.hasHandlers) return { queue, ready: undefined, unacked };
        const channel = await connection.createChannel();
        channel.on('error', () => {});
        try {
          return { queue, ready: (await channel.checkQueue(queue)).messageCount, unacked };
        } finally {
          await channel.close().catch(() => {});
        }
      },
    };
  }

  /** What `/healthz` reports as wrong beyond unreachable dependencies. */
  problems(): string[] {
    if (!this.hasHandlers) return [];
    const why = [this.consumer.notConsumingBecause, this.orderedConsumer?.notConsumingBecause];
    return why.filter((w): w is string => w !== undefined);
  }

  private get hasHandlers(): boolean {
    return this.options.app.handlers.size > 0;
  }

  /**
   * Graceful stop: no new messages or steps; started ones get `graceMs` to finish, then whatever
   * is still running is abandoned unacked (redelivery covers it). True when everything finished.
   */
  stop(graceMs = this.options.shutdownGraceMs): Promise<boolean> {
    this.stopped ??= (async () => {
      const log = this.options.logger;
      log.info({ graceMs }, 'worker stopping');
      const started = Date.now();
      // Messages and saga steps stop together: no new step starts while the consumer drains (a step
      // committing now, or a handler starting a saga, leaves its next steps to the relay).
      const [drained, orderedDrained] = await Promise.all([
        this.consumer.stop(graceMs),
        this.orderedConsumer?.stop(graceMs) ?? true,
        settledWithin(this.housekeeping.stop(), graceMs),
        this.sagaRunner?.stop(graceMs),
      ]);
      this.abort.abort();
      // Bounded as well: a broker or database that stopped answering must not hold the exit.
      await settledWithin(this.amqp.close(), closeMs);
      await this.heartbeat?.stop();
      if (this.ownsKnex) await settledWithin(this.knex.destroy(), closeMs);
      log.info({ drained: drained && orderedDrained, ms: Date.now() - started }, 'worker stopped');
      return drained && orderedDrained;
    })();
    return this.stopped;
  }
}

/** What a stop waits past its grace time for each connection to close. */
const closeMs = 1000;

/**
 * Whether this worker consumes ordered partitions. With the default partition count (neither
 * `orderedPartitions` nor DW_ORDERED_PARTITIONS set) a broker without the consistent-hash plugin
 * is not fatal: the worker runs, keyed messages are handled without ordering, and it says so. An
 * explicit count still fails with OrderingPluginMissingError.
 */
async function orderedKeysOn(
  input: WorkerOptions,
  options: ResolvedWorkerOptions,
  topology: Topology,
  log: Logger,
): Promise<boolean> {
  if (options.orderedPartitions === 0 || topology.types.length === 0) return false;
  const explicit = input.orderedPartitions !== undefined || input.config.orderedPartitions !== undefined;
  if (explicit || (await orderingPluginAvailable(options.config.amqpUrl, topology))) return true;
  log.warn(
    { queue: topology.queue },
    'RabbitMQ lacks the consistent-hash exchange plugin: messages with an ordering key are handled WITHOUT ordering. Enable it (rabbitmq-plugins enable rabbitmq_consistent_hash_exchange) and restart the workers, or set DW_ORDERED_PARTITIONS=0 to silence this',
  );
  return false;
}
