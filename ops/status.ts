import type { ChannelModel } from 'amqplib';
import { Queue } from 'bullmq';
import { Cluster } from 'ioredis';
import type { Knex } from 'knex';
import type { App } from '../shared/app.js';
import { countDeadLettersByReason } from '../shared/dead-letters.js';
import { retryQueueName } from '../shared/defaults.js';
import { maxRedisSeq } from '../shared/outbox.js';
import { deliveryLimitQueueName } from '../shared/queue-type.js';
import {
  createRedis,
  type NodePersistence,
  nodeName,
  persistenceRisks,
  type RedisClient,
  type RedisConfig,
  type RedisMode,
  type RedisPersistence,
  redisPersistenceByNode,
  relayRedisKeys,
} from '../shared/redis.js';
import { type RetryPolicy, retryTierMs } from '../shared/retry-policy.js';

export interface OutboxStatus {
  pending: number;
  /** Age in seconds of the oldest undelivered row; null when none is pending. */
  oldestPendingAgeSeconds: number | null;
  /** Pending rows whose delivery failed at least once. */
  failing: number;
}

export interface RabbitQueueStatus {
  name: string;
  exists: boolean;
  messages: number;
  consumers: number;
}

export interface BullQueueStatus {
  name: string;
  waiting: number;
  active: number;
  delayed: number;
  failed: number;
}

/** How much of what the relays delivered Redis may lose, and whether it did. */
export interface RedisStatus extends RedisPersistence {
  /** REDIS_MODE. The settings above are those of the master holding the relays' counter and the jobs. */
  mode: RedisMode;
  /** What the settings can lose (see the README); empty when they are as safe as Redis gets. In cluster mode, of every master, each named. */
  risks: string[];
  /** The settings of each data node: every master of a cluster, else the one server (the master, via sentinels). */
  nodes: Array<NodePersistence & { risks: string[] }>;
  /** The relays' delivery counter in Redis, and the highest value Postgres saw acknowledged. */
  deliverySeq: { redis: number; postgres: number };
  /** Redis is behind Postgres, or a loss was found and not repaired yet: a relay re-delivers soon. */
  lossPending: boolean;
  /** Losses the relays found and repaired (kept for ever; each repaired within outboxRetentionMs). */
  losses: number;
  lastLoss: { detectedAt: string; seqFrom: number; seqTo: number; rowsRedelivered: number } | null;
}

/** One saga definition version: recorded by a worker, or held by in-flight instances, or both. */
export interface SagaVersionStatus {
  name: string;
  version: number;
  /** Hash of the stage layout recorded in dw_saga_definitions; null when no worker recorded it. */
  fingerprint: string | null;
  /** When a worker first ran this version; null when no worker recorded it. */
  firstSeen: string | null;
  /** Instances running or compensating on this version. */
  inFlight: number;
  /** The last time a worker lacking this version left one of its instances untouched; else null. */
  lastUnservedAt: string | null;
  /** Whether the app `dw status` loaded (--app / DW_APP) defines this version. */
  inApp: boolean;
  /** Whether it is that app's newest version of the saga (what new instances start on). */
  newest: boolean;
}

export interface Status {
  outbox: OutboxStatus;
  deadLetters: { total: number; byReason: Record<string, number> };
  sagas: Record<string, number>;
  /** Per saga definition version (name, then version): in-flight instances and who serves them. */
  sagaVersions?: SagaVersionStatus[];
  queues: { rabbitmq: RabbitQueueStatus[]; bullmq: BullQueueStatus[] };
  redis?: RedisStatus;
}

export async function outboxStatus(knex: Knex): Promise<OutboxStatus> {
  // One pass over the partial index of pending rows.
  const { rows } = await knex.raw<{
    rows: [{ pending: number; oldest: number | null; failing: number }];
  }>(
    `select count(*)::int as pending,
            extract(epoch from now() - min(created_at))::float8 as oldest,
            count(*) filter (where attempts > 0)::int as failing
       from dw_outbox where delivered_at is null`,
  );
  const row = rows[0];
  return {
    pending: row.pending,
    oldestPendingAgeSeconds: row.oldest === null ? null : Math.max(0, Math.round(row.oldest)),
    failing: row.failing,
  };
}

export async function sagaCountsByStatus(knex: Knex): Promise<Record<string, number>> {
  const rows = (await knex('dw_sagas')
    .select('status')
    .count('* as count')
    .groupBy('status')
    .orderBy('status')) as unknown as Array<{ status: string; count: string | number }>;
  return Object.fromEntries(rows.map((r) => [r.status, Number(r.count)]));
}

/**
 * Every saga version the database knows (recorded by a worker, or held by in-flight instances)
 * with its in-flight count, and whether `app` defines it.
 */
export async function sagaVersionStatus(knex: Knex, app: App): Promise<SagaVersionStatus[]> {
  // A full join: a version may be recorded with nothing in flight, or in flight with no record
  // (instances started before versions existed). The partial index covers the in-flight counts.
  const { rows } = await knex.raw<{
    rows: Array<{
      name: string;
      version: number;
      fingerprint: string | null;
      first_seen: Date | null;
      in_flight: number;
      unserved_at: Date | null;
    }>;
  }>(
    `with counts as (
       select name, definition_version as version, count(*)::int as in_flight, max(unserved_at) as unserved_at
         from dw_sagas where status in ('running', 'compensating')
        group by name, definition_version)
     select coalesce(d.name, c.name) as name, coalesce(d.version, c.version) as version,
            d.fingerprint, d.first_seen, coalesce(c.in_flight, 0) as in_flight, c.unserved_at
       from dw_saga_definitions d
       full join counts c on c.name = d.name and c.version = d.version
      order by 1, 2`,
  );
  return rows.map((r) => ({
    name: r.name,
    version: r.version,
    fingerprint: r.fingerprint,
    firstSeen: r.first_seen?.toISOString() ?? null,
    inFlight: r.in_flight,
    lastUnservedAt: r.unserved_at?.toISOString() ?? null,
    inApp: app.sagaDefinition(r.name, r.version) !== undefined,
    newest: app.sagas.get(r.name)?.version === r.version,
  }));
}

export async function bullmqDestinations(knex: Knex): Promise<string[]> {
  const rows: Array<{ destination: string }> = await knex('dw_outbox')
    .distinct('destination')
    .where('destination_kind', 'bullmq')
    .orderBy('destination');
  return rows.map((r) => r.destination);
}

export async function deadLetterQueues(knex: Knex): Promise<string[]> {
  const rows: Array<{ queue: string }> = await knex('dw_dead_letters')
    .distinct('queue')
    .where('source', 'amqp')
    .orderBy('queue');
  return rows.map((r) => r.queue);
}

/** Delay tiers a policy's retries use: each is a retry queue `<queue>.retry.<tier>ms`. */
export function retryTiers(policy: RetryPolicy): number[] {
  return Array.from({ length: policy.delayed.count }, (_, i) => retryTierMs(policy, i));
}

/**
 * The app's work queue, every retry queue its policies can use, and (quorum work queues) the queue
 * of messages that reached the broker's delivery limit, which should stay empty.
 */
export function appQueueNames(app: App, workQueue: string): string[] {
  const tiers = new Set<number>();
  for (const type of app.handlers.keys()) for (const t of retryTiers(app.retryPolicyFor(type))) tiers.add(t);
  return [
    workQueue,
    ...[...tiers].sort((a, b) => a - b).map((t) => retryQueueName(workQueue, t)),
    deliveryLimitQueueName(workQueue),
  ];
}

/** `host:port` of the cluster master whose slots hold `key`; undefined outside cluster mode. */
async function nodeHolding(redis: RedisClient, key: string): Promise<string | undefined> {
  if (!(redis instanceof Cluster)) return undefined;
  try {
    const slot = Number(await redis.cluster('KEYSLOT', key));
    const master = redis.slots[slot]?.[0];
    const node = redis.nodes('master').find((n) => nodeName(n) === master);
    return node ? nodeName(node) : master;
  } catch {
    return undefined;
  }
}

/** Message counts of RabbitMQ queues; a queue that does not exist is reported, not fatal. */
export async function rabbitQueueStatus(
  connection: ChannelModel,
  names: string[],
): Promise<RabbitQueueStatus[]> {
  const result: RabbitQueueStatus[] = [];
  for (const name of names) {
    // A failed checkQueue closes its channel, so each check gets its own.
    const channel = await connection.createChannel();
    channel.on('error', () => {});
    try {
      const { messageCount, consumerCount } = await channel.checkQueue(name);
      result.push({ name, exists: true, messages: messageCount, consumers: consumerCount });
      await channel.close().catch(() => {});
    } catch {
      result.push({ name, exists: false, messages: 0, consumers: 0 });
    }
  }
  return result;
}

export async function bullQueueStatus(
  redisConfig: RedisConfig,
  prefix: string,
  names: string[],
): Promise<BullQueueStatus[]> {
  const result: BullQueueStatus[] = [];
  // One connection for every queue; commands fail instead of waiting forever for a Redis that is down.
  const redis = createRedis(redisConfig, { role: 'probe', bullmqPrefix: prefix });
  redis.on('error', () => {});
  try {
    for (const name of names) {
      const queue = new Queue(name, { connection: redis, prefix });
      try {
        const counts = await queue.getJobCounts('waiting', 'active', 'delayed', 'failed');
        result.push({
          name,
          waiting: counts.waiting ?? 0,
          active: counts.active ?? 0,
          delayed: counts.delayed ?? 0,
          failed: counts.failed ?? 0,
        });
      } finally {
        await queue.close();
      }
    }
  } finally {
    redis.disconnect();
  }
  return result;
}

export async function deadLetterStatus(knex: Knex): Promise<Status['deadLetters']> {
  const byReason = await countDeadLettersByReason(knex);
  return { total: Object.values(byReason).reduce((a, b) => a + b, 0), byReason };
}

/** The losses the relays recorded: how many, and the last one. */
export async function redisLosses(knex: Knex): Promise<Pick<RedisStatus, 'losses' | 'lastLoss'>> {
  // Newest first by id; the count over the whole (tiny) table in the same statement.
  const { rows } = await knex.raw<{
    rows: Array<{ n: number; detected_at: Date; seq_from: string; seq_to: string; rows_redelivered: number }>;
  }>(
    `select count(*) over ()::int as n, detected_at, seq_from, seq_to, rows_redelivered
       from dw_redis_losses order by id desc limit 1`,
  );
  const last = rows[0];
  return {
    losses: last?.n ?? 0,
    lastLoss: last
      ? {
          detectedAt: last.detected_at.toISOString(),
          seqFrom: Number(last.seq_from),
          seqTo: Number(last.seq_to),
          rowsRedelivered: last.rows_redelivered,
        }
      : null,
  };
}

/** Redis's persistence settings, and the relays' delivery counter against Postgres. */
export async function redisStatus(
  knex: Knex,
  redisConfig: RedisConfig,
  prefix: string,
): Promise<RedisStatus> {
  // Postgres first: a counter read after it that is lower means a loss (see relay/redis-loss.ts).
  const postgres = await maxRedisSeq(knex);
  const losses = await redisLosses(knex);
  const redis = createRedis(redisConfig, { role: 'probe', bullmqPrefix: prefix });
  redis.on('error', () => {});
  try {
    const keys = relayRedisKeys(prefix);
    const [counter, loss] = await Promise.all([redis.get(keys.counter), redis.exists(keys.loss)]);
    const nodes = (await redisPersistenceByNode(redis)).map((n) => ({ ...n, risks: persistenceRisks(n) }));
    const home = (await nodeHolding(redis, keys.counter)) ?? nodes[0]?.node;
    const main = nodes.find((n) => n.node === home) ?? nodes[0];
    const persistence: RedisPersistence = {
      appendonly: main?.appendonly ?? null,
      appendfsync: main?.appendfsync ?? null,
      save: main?.save ?? null,
      maxmemoryPolicy: main?.maxmemoryPolicy ?? null,
    };
    const seq = Number(counter ?? 0);
    return {
      ...persistence,
      mode: redisConfig.redisMode ?? 'single',
      risks:
        nodes.length > 1 ? nodes.flatMap((n) => n.risks.map((r) => `${n.node}: ${r}`)) : (main?.risks ?? []),
      nodes,
      deliverySeq: { redis: seq, postgres },
      lossPending: seq < postgres || loss > 0,
      ...losses,
    };
  } finally {
    redis.disconnect();
  }
}
