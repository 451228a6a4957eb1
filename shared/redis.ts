import { Redis } from 'ioredis';
import { backoffMs } from './backoff.js';
import { redactUrl } from './config.js';
import { ServiceUnavailableError } from './errors.js';
import type { Logger } from './logger.js';

/**
 * An ioredis connection as BullMQ wants it: commands wait for a reconnection instead of failing
 * (maxRetriesPerRequest: null), reconnection backs off up to 5 s. The database number in the URL
 * (redis://host:6379/3) is honoured by ioredis.
 */
export function createRedis(url: string, options: { lazy?: boolean } = {}): Redis {
  return new Redis(url, {
    maxRetriesPerRequest: null,
    enableReadyCheck: true,
    lazyConnect: options.lazy ?? false,
    retryStrategy: (times) => backoffMs(times, { baseMs: 50, maxMs: 5000 }),
  });
}

/** Fails with a message naming Redis and its URL when it does not answer within `timeoutMs`. */
export async function assertRedisReachable(url: string, timeoutMs = 5000): Promise<void> {
  const probe = new Redis(url, {
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: timeoutMs,
  });
  probe.on('error', () => {});
  try {
    await probe.connect();
    await probe.ping();
  } catch (error) {
    throw new ServiceUnavailableError('Redis', redactUrl(url), error);
  } finally {
    probe.disconnect();
  }
}

/**
 * BullMQ loses jobs when Redis evicts keys under memory pressure; only `noeviction` is safe.
 * Warns (does not refuse): managed Redis services sometimes hide CONFIG.
 */
export async function warnUnlessNoEviction(redis: Redis, log: Logger): Promise<void> {
  try {
    const reply = (await redis.config('GET', 'maxmemory-policy')) as string[];
    const policy = reply[1];
    if (policy && policy !== 'noeviction') {
      log.warn(
        { policy },
        `Redis maxmemory-policy is "${policy}": under memory pressure Redis may evict BullMQ jobs. Set it to noeviction (CONFIG SET maxmemory-policy noeviction).`,
      );
    }
  } catch (error) {
    log.debug({ err: error }, 'could not read Redis maxmemory-policy');
  }
}

/**
 * The relays' Redis keys: the delivery counter and the record of a loss not repaired yet (see
 * relay/redis-loss.ts). One hash tag, so a Redis Cluster runs a script over both.
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

export async function redisHealthy(redis: Redis): Promise<boolean> {
  if (redis.status !== 'ready') return false;
  return redis
    .ping()
    .then(() => true)
    .catch(() => false);
}
