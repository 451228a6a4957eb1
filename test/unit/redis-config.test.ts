import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RedisClusterPrefixError } from '../../shared/errors.js';
import { assertPrefixFitsRedis, hashTag, redactRedisUrl, relayRedisKeys } from '../../shared/redis.js';

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
