import fc from 'fast-check';
import { Cluster, Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { RedisClusterPrefixError } from '../../shared/errors.js';
import {
  assertPrefixFitsRedis,
  createRedis,
  hashTag,
  redactRedisUrl,
  relayRedisKeys,
} from '../../shared/redis.js';

describe('hashTag', () => {
  it('reads the tag as Redis Cluster does', () => {
    expect(hashTag('{dw}')).toBe('dw');
    expect(hashTag('app:{dw}:x')).toBe('dw');
    expect(hashTag('{a}{b}')).toBe('a');
    expect(hashTag('plain')).toBeUndefined();
    expect(hashTag('{}x{y}')).toBeUndefined();
    expect(hashTag('{open')).toBeUndefined();
    expect(hashTag('a}{b}')).toBe('b');
  });

  it('gives the relays keys the slot of the queues under a tagged prefix', () => {
    fc.assert(
      fc.property(
        fc.stringMatching(/^[a-z0-9_.:-]{1,20}$/),
        fc.stringMatching(/^[a-z0-9-]{1,10}$/),
        (before, tag) => {
          const prefix = `${before}{${tag}}`;
          for (const key of Object.values(relayRedisKeys(prefix))) expect(hashTag(key)).toBe(tag);
          // A BullMQ key of any queue under the prefix.
          expect(hashTag(`${prefix}:some-queue:wait`)).toBe(tag);
        },
      ),
    );
  });
});

describe('assertPrefixFitsRedis', () => {
  it('refuses an untagged prefix in cluster mode only, saying how to fix it', () => {
    expect(() => assertPrefixFitsRedis('cluster', 'bull')).toThrow(RedisClusterPrefixError);
    expect(() => assertPrefixFitsRedis('cluster', 'bull')).toThrow(/BULLMQ_PREFIX=\{bull\}/);
    expect(() => assertPrefixFitsRedis('cluster', '{bull}')).not.toThrow();
    expect(() => assertPrefixFitsRedis('single', 'bull')).not.toThrow();
    expect(() => assertPrefixFitsRedis('sentinel', 'bull')).not.toThrow();
    expect(() => assertPrefixFitsRedis(undefined, 'bull')).not.toThrow();
  });
});

describe('redactRedisUrl', () => {
  it('hides every password of a list', () => {
    expect(redactRedisUrl('redis://:pw@a:1,rediss://u:pw2@b:2')).toBe('redis://:***@a:1,rediss://u:***@b:2');
  });
});

describe('createRedis', () => {
  // lazy: nothing connects; the options ioredis was given are read back.
  it('single: one URL, its database, BullMQ settings', () => {
    const redis = createRedis({ redisUrl: 'redis://:pw@h:6380/3' }, { lazy: true });
    try {
      expect(redis).toBeInstanceOf(Redis);
      expect((redis as Redis).options).toMatchObject({ host: 'h', port: 6380, db: 3, password: 'pw' });
      expect((redis as Redis).options.maxRetriesPerRequest).toBeNull();
    } finally {
      redis.disconnect();
    }
  });

  it('cluster: every seed node, credentials and TLS of the first URL for all nodes', () => {
    const redis = createRedis(
      { redisUrl: 'rediss://u:p%40ss@a:7000, rediss://b', redisMode: 'cluster' },
      { lazy: true, bullmqPrefix: '{dw}' },
    );
    try {
      expect(redis).toBeInstanceOf(Cluster);
      const cluster = redis as Cluster;
      expect((cluster as unknown as { startupNodes: unknown }).startupNodes).toEqual([
        { host: 'a', port: 7000 },
        { host: 'b', port: 6379 },
      ]);
      expect(cluster.options.redisOptions).toMatchObject({
        username: 'u',
        password: 'p@ss',
        tls: {},
        maxRetriesPerRequest: null,
      });
    } finally {
      redis.disconnect();
    }
    expect(() =>
      createRedis({ redisUrl: 'redis://a', redisMode: 'cluster' }, { bullmqPrefix: 'bull' }),
    ).toThrow(RedisClusterPrefixError);
  });

  it('sentinel: the sentinels, the master name, the master password and the sentinels own', () => {
    const redis = createRedis(
      {
        redisUrl: 'redis://:master-pw@s1/2,redis://s2:5000',
        redisMode: 'sentinel',
        redisSentinelName: 'mymaster',
        redisSentinelPassword: 'sentinel-pw',
      },
      { lazy: true },
    );
    try {
      expect((redis as Redis).options).toMatchObject({
        sentinels: [
          { host: 's1', port: 26379 },
          { host: 's2', port: 5000 },
        ],
        name: 'mymaster',
        password: 'master-pw',
        sentinelPassword: 'sentinel-pw',
        db: 2,
      });
    } finally {
      redis.disconnect();
    }
    expect(() => createRedis({ redisUrl: 'redis://s1', redisMode: 'sentinel' }, { lazy: true })).toThrow(
      /REDIS_SENTINEL_NAME/,
    );
  });
});
