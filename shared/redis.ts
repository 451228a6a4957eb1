import { Cluster, type ClusterOptions, Redis, type RedisOptions } from 'ioredis';
import { backoffMs } from './backoff.js';
import { type Config, type RedisMode, redactUrl } from './config.js';
import { redisDefaults } from './defaults.js';
import { ConfigError, RedisClusterPrefixError, ServiceUnavailableError } from './errors.js';
import type { Logger } from './logger.js';

export type { RedisMode } from './config.js';

/** Where Redis is: the part of the configuration every Redis user passes to `createRedis`. */
export type RedisConfig = Pick<
  Config,
  'redisUrl' | 'redisMode' | 'redisSentinelName' | 'redisSentinelPassword'
>;

/** A connection to a single node or through sentinels (`Redis`), or to a Redis Cluster (`Cluster`). */
export type RedisClient = Redis | Cluster;

/**
 * What a connection is for:
 * - `bullmq`: BullMQ queues and workers, the relays' scripts; commands wait for a reconnection
 *   instead of failing (`maxRetriesPerRequest: null`, as BullMQ requires), reconnection backs off
 *   up to 5 s.
 * - `probe`: one-shot readers (`dw status`, reachability checks): a command fails after one retry
 *   and the connection does not reconnect, so a Redis that is down gives an answer, not a hang.
 */
export type RedisRole = 'bullmq' | 'probe';

export interface CreateRedisOptions {
  /**
   * What the connection is for (see RedisRole).
   * @defaultValue `'bullmq'`
   */
  role?: RedisRole;
  /**
   * Connect on the first command instead of at once.
   * @defaultValue false
   */
  lazy?: boolean;
  /**
   * The BullMQ prefix the connection will serve; in cluster mode one without a hash tag is
   * refused with a RedisClusterPrefixError. Unset: not checked.
   */
  bullmqPrefix?: string;
  /** Probe connections: how long to wait for the connection, in ms. @defaultValue 5000 */
  connectTimeoutMs?: number;
}

/** One seed node (cluster), sentinel or server, from one entry of REDIS_URL. */
interface RedisEndpoint {
  host: string;
  port: number;
  username?: string;
  password?: string;
  tls: boolean;
  db: number;
}

/** The entries of REDIS_URL (comma-separated), as written. */
export function redisUrls(redisUrl: string): string[] {
  return redisUrl
    .split(',')
    .map((u) => u.trim())
    .filter((u) => u !== '');
}

function endpoint(url: string, defaultPort: number): RedisEndpoint {
  const u = new URL(url);
  const db = u.pathname.replace(/^\//, '');
  return {
    // new URL keeps the brackets of an IPv6 host; sockets want it bare.
    host: u.hostname.replace(/^\[(.*)\]$/, '$1') || '127.0.0.1',
    port: u.port ? Number(u.port) : defaultPort,
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    tls: u.protocol === 'rediss:',
    db: db ? Number(db) : 0,
  };
}

/**
 * The hash tag of a key as Redis Cluster computes it: the text between the first `{` and the first
 * `}` after it, when not empty; undefined when the key has none (then the whole key is hashed).
 */
export function hashTag(key: string): string | undefined {
  const open = key.indexOf('{');
  if (open < 0) return undefined;
  const close = key.indexOf('}', open + 1);
  if (close < 0 || close === open + 1) return undefined;
  return key.slice(open + 1, close);
}

/**
 * BullMQ's Lua scripts touch several keys of a queue at once, which Redis Cluster allows only when
 * they hash to one slot: the prefix must carry a hash tag. Throws RedisClusterPrefixError otherwise.
 */
export function assertPrefixFitsRedis(mode: RedisMode | undefined, prefix: string): void {
  if (mode === 'cluster' && hashTag(prefix) === undefined) throw new RedisClusterPrefixError(prefix);
}

/**
 * The one way durable-worker connects to Redis, in any REDIS_MODE:
 * - `single`: `new Redis(url)`; a database number in the URL is honoured.
 * - `cluster`: ioredis' `Cluster` over the seed nodes of REDIS_URL; credentials and TLS (`rediss://`)
 *   of the first URL apply to every node.
 * - `sentinel`: `new Redis({ sentinels, name })`: ioredis asks the sentinels of REDIS_URL for the
 *   master of REDIS_SENTINEL_NAME and follows failovers. Credentials, TLS and the database number
 *   of the first URL are the master's; REDIS_SENTINEL_PASSWORD is the sentinels' own.
 */
export function createRedis(config: RedisConfig, options: CreateRedisOptions = {}): RedisClient {
  const mode = config.redisMode ?? redisDefaults.mode;
  if (options.bullmqPrefix !== undefined) assertPrefixFitsRedis(mode, options.bullmqPrefix);
  const role = options.role ?? 'bullmq';
  const urls = redisUrls(config.redisUrl);
  const base: RedisOptions =
    role === 'bullmq'
      ? {
          maxRetriesPerRequest: null,
          enableReadyCheck: true,
          retryStrategy: (times) => backoffMs(times, { baseMs: 50, maxMs: 5000 }),
        }
      : {
          maxRetriesPerRequest: 1,
          retryStrategy: () => null,
          connectTimeout: options.connectTimeoutMs ?? redisDefaults.probeTimeoutMs,
        };
  const lazyConnect = options.lazy ?? false;
  if (mode === 'cluster') {
    const seeds = urls.map((u) => endpoint(u, 6379));
    const first = seeds[0];
    const clusterOptions: ClusterOptions = {
      lazyConnect,
      enableReadyCheck: true,
      // BullMQ reads maxRetriesPerRequest from the node options of a cluster.
      redisOptions: {
        ...base,
        ...(first?.username ? { username: first.username } : {}),
        ...(first?.password ? { password: first.password } : {}),
        ...(first?.tls ? { tls: {} } : {}),
      },
      // TLS: connect to node hostnames as announced (not resolved to IPs first), so the certificate
      // check sees the name it holds (managed clusters such as ElastiCache).
      ...(first?.tls
        ? { dnsLookup: (address: string, done: (e: null, a: string) => void) => done(null, address) }
        : {}),
      clusterRetryStrategy:
        role === 'bullmq' ? (times) => backoffMs(times, { baseMs: 50, maxMs: 5000 }) : () => null,
      ...(role === 'probe'
        ? { slotsRefreshTimeout: options.connectTimeoutMs ?? redisDefaults.probeTimeoutMs }
        : {}),
    };
    return new Cluster(
      seeds.map((s) => ({ host: s.host, port: s.port })),
      clusterOptions,
    );
  }
  if (mode === 'sentinel') {
    if (!config.redisSentinelName) {
      throw new ConfigError([
        'REDIS_MODE=sentinel needs REDIS_SENTINEL_NAME, the master name of the sentinels (sentinel monitor <name> …)',
      ]);
    }
    const sentinels = urls.map((u) => endpoint(u, 26379));
    const first = sentinels[0];
    return new Redis({
      ...base,
      lazyConnect,
      sentinels: sentinels.map((s) => ({ host: s.host, port: s.port })),
      name: config.redisSentinelName,
      db: first?.db ?? 0,
      ...(first?.username ? { username: first.username } : {}),
      ...(first?.password ? { password: first.password } : {}),
      ...(config.redisSentinelPassword ? { sentinelPassword: config.redisSentinelPassword } : {}),
      ...(first?.tls ? { tls: {}, sentinelTLS: {}, enableTLSForSentinelMode: true } : {}),
      sentinelRetryStrategy:
        role === 'bullmq' ? (times) => backoffMs(times, { baseMs: 50, maxMs: 5000 }) : () => null,
      // Follow a failover as the sentinels announce it (+switch-master), and leave a demoted master
      // that refuses writes (READONLY) for the one the sentinels name, resending the command.
      ...(role === 'bullmq'
        ? {
            failoverDetector: true,
            reconnectOnError: (error: Error) => (error.message.startsWith('READONLY') ? 2 : false),
          }
        : {}),
    });
  }
  return new Redis(urls[0] ?? redisDefaults.url, { ...base, lazyConnect });
}

/** REDIS_URL with passwords hidden, for messages. */
export function redactRedisUrl(redisUrl: string): string {
  return redisUrls(redisUrl).map(redactUrl).join(',');
}

/** Fails with a message naming Redis and its URL when it does not answer within `timeoutMs`. */
export async function assertRedisReachable(
  config: RedisConfig,
  timeoutMs: number = redisDefaults.probeTimeoutMs,
): Promise<void> {
  const probe = createRedis(config, { role: 'probe', lazy: true, connectTimeoutMs: timeoutMs });
  probe.on('error', () => {});
  try {
    await withTimeout(
      (async () => {
        await probe.connect();
        await probe.ping();
      })(),
      timeoutMs,
    );
  } catch (error) {
    throw new ServiceUnavailableError('Redis', redactRedisUrl(config.redisUrl), error);
  } finally {
    probe.disconnect();
  }
}

/** A cluster that cannot reach any seed keeps refreshing its slots; bound the wait. */
function withTimeout<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

/** The servers that hold data: every master of a cluster, else the one server (the master, via sentinels). */
export function dataNodes(redis: RedisClient): Redis[] {
  return redis instanceof Cluster ? redis.nodes('master') : [redis];
}

/**
 * Destroys the sockets of a connection now: a Redis that stopped answering (hung, blackholed)
 * never acknowledges a close, and commands still waiting fail only then.
 */
export function destroySockets(redis: RedisClient): void {
  const nodes = redis instanceof Cluster ? redis.nodes() : [redis];
  for (const node of nodes) node.stream?.destroy();
}

/** `host:port` of a data node, for messages. */
export function nodeName(node: Redis): string {
  // Through sentinels the options hold no address: the master's is the socket's peer.
  const stream = node.options.sentinels?.length ? node.stream : undefined;
  if (stream?.remoteAddress) return `${stream.remoteAddress}:${stream.remotePort}`;
  return `${node.options.host ?? '?'}:${node.options.port ?? '?'}`;
}

/**
 * BullMQ loses jobs when Redis evicts keys under memory pressure; only `noeviction` is safe.
 * Warns (does not refuse): managed Redis services sometimes hide CONFIG. Every master of a cluster
 * is asked.
 */
export async function warnUnlessNoEviction(redis: RedisClient, log: Logger): Promise<void> {
  for (const node of await readyDataNodes(redis)) {
    try {
      const reply = (await node.config('GET', 'maxmemory-policy')) as string[];
      const policy = reply[1];
      if (policy && policy !== 'noeviction') {
        log.warn(
          { policy, node: nodeName(node) },
          `Redis maxmemory-policy is "${policy}": under memory pressure Redis may evict BullMQ jobs. Set it to noeviction (CONFIG SET maxmemory-policy noeviction).`,
        );
      }
    } catch (error) {
      log.debug({ err: error }, 'could not read Redis maxmemory-policy');
    }
  }
}

/** The data nodes once the connection is ready (a cluster knows its masters only then). */
async function readyDataNodes(redis: RedisClient): Promise<Redis[]> {
  if (redis.status !== 'ready') await redis.ping().catch(() => undefined);
  return dataNodes(redis);
}

/**
 * The relays' Redis keys: the delivery counter and the record of a loss not repaired yet (see
 * relay/redis-loss.ts). One hash tag, so a Redis Cluster runs a script over all three. In cluster
 * mode the prefix carries a hash tag (assertPrefixFitsRedis), and the first tag of a key is the
 * one hashed: the keys then sit in the slot of the BullMQ queues, on the master that holds the
 * jobs, so a loss of that master's data is a loss of the counter too.
 */
export function relayRedisKeys(prefix: string): { counter: string; loss: string; epoch: string } {
  return {
    counter: `${prefix}:{dw-relay}:seq`,
    loss: `${prefix}:{dw-relay}:loss`,
    epoch: `${prefix}:{dw-relay}:epoch`,
  };
}

/** Redis's durability settings; null where the server refuses CONFIG (managed services). */
export interface RedisPersistence {
  appendonly: string | null;
  appendfsync: string | null;
  save: string | null;
  maxmemoryPolicy: string | null;
}

export async function redisPersistence(redis: Redis): Promise<RedisPersistence> {
  const get = async (name: string): Promise<string | null> => {
    try {
      const reply = (await redis.config('GET', name)) as string[];
      return reply[1] ?? null;
    } catch {
      return null;
    }
  };
  return {
    appendonly: await get('appendonly'),
    appendfsync: await get('appendfsync'),
    save: await get('save'),
    maxmemoryPolicy: await get('maxmemory-policy'),
  };
}

/** One data node's settings: a cluster's master, or the single server / sentinel master. */
export interface NodePersistence extends RedisPersistence {
  node: string;
}

/**
 * The settings of every data node: each master of a cluster (a replica is promoted with its own
 * settings; set them alike), the master behind the sentinels, or the one server.
 */
export async function redisPersistenceByNode(redis: RedisClient): Promise<NodePersistence[]> {
  const nodes = await readyDataNodes(redis);
  return Promise.all(
    nodes.map(async (node) => ({ node: nodeName(node), ...(await redisPersistence(node)) })),
  );
}

/** What the settings can lose; empty when they are as safe as Redis gets. */
export function persistenceRisks(p: RedisPersistence): string[] {
  const risks: string[] = [];
  if (p.appendonly === 'no') {
    risks.push(
      p.save
        ? `appendonly no: a crash loses the jobs added since the last RDB snapshot (save "${p.save}"); set appendonly yes`
        : 'appendonly no and no RDB snapshots: a restart loses every job; set appendonly yes',
    );
  } else if (p.appendfsync === 'everysec') {
    risks.push('appendfsync everysec: a crash of the Redis host can lose the last second of jobs');
  } else if (p.appendfsync === 'no') {
    risks.push(
      'appendfsync no: a crash of the Redis host can lose the last ~30 s of jobs; use everysec or always',
    );
  }
  if (p.maxmemoryPolicy && p.maxmemoryPolicy !== 'noeviction') {
    risks.push(`maxmemory-policy ${p.maxmemoryPolicy}: Redis may evict jobs; set noeviction`);
  }
  return risks;
}

export async function redisHealthy(redis: RedisClient): Promise<boolean> {
  if (redis.status !== 'ready') return false;
  return redis
    .ping()
    .then(() => true)
    .catch(() => false);
}
