import { Redis } from 'ioredis';
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
    retryStrategy: (times) => Math.min(5000, 50 * 2 ** Math.min(times, 10)),
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

export async function redisHealthy(redis: Redis): Promise<boolean> {
  if (redis.status !== 'ready') return false;
  return redis
    .ping()
    .then(() => true)
    .catch(() => false);
}
