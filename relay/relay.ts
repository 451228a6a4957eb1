import type { Knex } from 'knex';
import { ResilientAmqpConnection } from '../shared/amqp.js';
import { backoffMs } from '../shared/backoff.js';
import { crashPoint, faultHook } from '../shared/crash-points.js';
import { assertDatabaseReachable, createKnex, databaseHealthy } from '../shared/db/knex.js';
import { assertMigrated } from '../shared/db/migrate.js';
import { OutageWait, Stopped } from '../shared/db/outage.js';
import { startHeartbeat } from '../shared/heartbeat.js';
import {
  outboxFailuresTotal,
  outboxRelayedTotal,
  relayBatchSeconds,
  relayBatchSize,
  type ScrapeSources,
} from '../shared/metrics.js';
import {
  claimOutboxBatch,
  lockForRedisDelivery,
  markOutboxDelivered,
  markOutboxFailed,
} from '../shared/outbox.js';
import {
  assertPrefixFitsRedis,
  assertRedisReachable,
  createRedis,
  type RedisClient,
  redisHealthy,
  warnUnlessNoEviction,
} from '../shared/redis.js';
import { sleep } from '../shared/time.js';
import { Destinations } from './destinations.js';
import { type RelayOptions, type ResolvedRelayOptions, resolveRelayOptions } from './options.js';
import { OutboxListener } from './outbox-listener.js';
import { RedisLossDetector } from './redis-loss.js';

/**
 * Drains the outbox: claim a batch (FOR UPDATE SKIP LOCKED, so relays share the work), deliver it,
 * mark the delivered rows with the batch's Redis position in one statement, commit. A crash after delivery and before the commit leaves the rows pending:
 * they are delivered again, and BullMQ's job id (the outbox message id) absorbs the repeat.
 */
export class Relay {
  private stopping = false;
  private readonly loops: Promise<void>[] = [];
  /** Aborted as the stop starts: a loop waiting out a failure ends instead of trying again. */
  private readonly halt = new AbortController();
  /**
   * Any failure of a batch (PostgreSQL, Redis or RabbitMQ away) is waited out the same way,
   * logged once for all loops.
   */
  private readonly outages: OutageWait;
  private claimTail: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly options: ResolvedRelayOptions,
    readonly knex: Knex,
    private readonly ownsKnex: boolean,
    private readonly redis: RedisClient,
    private readonly amqp: ResilientAmqpConnection,
    private readonly destinations: Destinations,
    private readonly listener: OutboxListener,
    private readonly redisLoss: RedisLossDetector,
  ) {
    this.outages = new OutageWait({
      classify: () => 'outage',
      signal: this.halt.signal,
      log: options.logger,
      downMessage: 'relay cannot deliver right now; retrying with backoff',
      backMessage: 'relay delivering again',
      outageBackoff: { baseMs: 100, maxMs: 5000 },
    });
  }

  /** The process's row in dw_processes (the dashboard's live relays). */
  private heartbeat?: { stop(): Promise<void> };

  static async start(input: RelayOptions): Promise<Relay> {
    const options = resolveRelayOptions(input);
    const { config, logger: log } = options;
    const knex =
      options.knex ??
      createKnex(config.databaseUrl, {
        poolMax: options.concurrency + 2,
        applicationName: 'dw-relay',
        logger: log,
      });
    const cleanups: Array<() => Promise<unknown>> = options.knex ? [] : [() => knex.destroy()];
    try {
      assertPrefixFitsRedis(config.redisMode, config.bullmqPrefix);
      await assertDatabaseReachable(knex, config.databaseUrl);
      await assertMigrated(knex);
      await assertRedisReachable(config);
      const redis = createRedis(config, { bullmqPrefix: config.bullmqPrefix });
      redis.on('error', () => {});
      cleanups.push(async () => redis.disconnect());
      await warnUnlessNoEviction(redis, log);
      const amqp = new ResilientAmqpConnection(config.amqpUrl, { connectionName: 'dw-relay', logger: log });
      cleanups.push(() => amqp.close());
      await amqp.start();
      const listener = new OutboxListener(config.databaseUrl, log);
      cleanups.push(() => listener.close());
      await listener.start();
      const destinations = new Destinations(redis, config.bullmqPrefix, amqp, options.keepCompleted);
      const redisLoss = new RedisLossDetector(redis, config.bullmqPrefix, knex, options.pollIntervalMs, log);
      const relay = new Relay(options, knex, !options.knex, redis, amqp, destinations, listener, redisLoss);
      for (let i = 0; i < options.concurrency; i++) relay.loops.push(relay.loop());
      relay.heartbeat = startHeartbeat(knex, 'relay');
      log.info({ batchSize: options.batchSize, concurrency: options.concurrency }, 'relay started');
      return relay;
    } catch (error) {
      for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
      throw error;
    }
  }

  /** The relay's `/metrics` reads the outbox, dead letters and sagas at scrape time. */
  scrapeSources(): ScrapeSources {
    return { knex: this.knex };
  }

  async health(): Promise<Record<string, boolean>> {
    const postgres = await databaseHealthy(this.knex);
    return { postgres, redis: await redisHealthy(this.redis), rabbitmq: this.amqp.connected };
  }

  /** Lets the batches in flight finish (up to `graceMs`), then closes every connection. */
  async stop(graceMs = this.options.shutdownGraceMs): Promise<boolean> {
    if (this.stopping) return true;
    this.stopping = true;
    this.halt.abort();
    this.listener.release();
    const drained = await Promise.race([
      Promise.all(this.loops).then(() => true),
      sleep(graceMs).then(() => false),
    ]);
    await this.listener.close();
    await this.heartbeat?.stop();
    await this.destinations.close();
    await this.amqp.close();
    this.redis.disconnect();
    if (this.ownsKnex) await this.knex.destroy();
    this.options.logger.info({ drained }, 'relay stopped');
    return drained;
  }

  /**
   * The claim loops take turns claiming, so one relay claims its batches in id order; with
   * Destinations adding each queue's batches in claim order, id order holds within a destination
   * however many loops run.
   */
  private claimInTurn<T>(claim: () => Promise<T>): Promise<T> {
    const turn = this.claimTail.then(claim);
    this.claimTail = turn.catch(() => undefined);
    return turn;
  }

  /** Claims and delivers one batch; returns how many rows it claimed. */
  async drainOnce(): Promise<number> {
    const { batchSize } = this.options;
    await this.redisLoss.repairIfNeeded();
    const started = process.hrtime.bigint();
    const claimed = await this.knex.transaction(async (trx) => {
      // What Redis must hold and which Redis data set it is are read beside the claim (on other
      // connections), before the adds.
      const [rows, redisMark, lineage] = await this.claimInTurn(async () => {
        // In turn, so that a loop holding the lock never waits for one blocked behind a repair.
        await lockForRedisDelivery(trx);
        return Promise.all([
          claimOutboxBatch(trx, batchSize),
          this.redisLoss.mark(),
          this.redisLoss.lineage(),
        ]);
      });
      if (rows.length === 0) return 0;
      // Called right after the claim, before any other await: each queue gets its batches in the
      // order they were claimed (see Destinations).
      const { delivered, failed } = await this.destinations.deliver(rows);
      const added = new Set(delivered);
      const jobRows = rows.filter((r) => r.destination.kind === 'bullmq' && added.has(r.id));
      const hook = faultHook('relay:after-add-before-seq');
      if (hook) await hook();
      const jobIds = jobRows.map((r) => r.id);
      const redisSeq = await this.redisLoss.recordDelivery(jobIds, redisMark, lineage, async () => {
        // Redis lost its data after the adds: add the jobs again (same ids) or roll back.
        const again = await this.destinations.deliver(jobRows);
        if (again.failed.length) throw new Error(`adding jobs again failed: ${again.failed[0]?.error}`);
      });
      await markOutboxDelivered(trx, delivered, jobIds, redisSeq);
      // The mark commits only now, after the delivery.
      crashPoint('relay:after-add-before-mark');
      // Losing this commit in a crash only means delivering the batch again, which the job ids
      // absorb: no need to wait for the WAL flush (the setting applies at commit).
      await trx.raw('set local synchronous_commit = off');
      for (const f of failed) {
        await markOutboxFailed(trx, f.id, f.error, backoffMs(f.attempts, { baseMs: 1000, maxMs: 60_000 }));
      }
      outboxRelayedTotal.inc({ kind: 'all' }, delivered.length);
      if (failed.length) {
        outboxFailuresTotal.inc(failed.length);
        this.options.logger.warn({ failed }, 'some outbox rows could not be delivered; they will be retried');
      }
      return rows.length;
    });
    if (claimed === 0) await this.redisLoss.checkIdle();
    else {
      relayBatchSize.observe(claimed);
      relayBatchSeconds.observe(Number(process.hrtime.bigint() - started) / 1e9);
    }
    return claimed;
  }

  private async loop(): Promise<void> {
    const { pollIntervalMs, batchSize } = this.options;
    while (!this.stopping) {
      const claimed = await this.outages.run(() => this.drainOnce());
      if (claimed instanceof Stopped) return;
      // A full batch means more is probably waiting: go on at once.
      if (claimed < batchSize) await this.listener.wait(pollIntervalMs);
    }
  }
}
