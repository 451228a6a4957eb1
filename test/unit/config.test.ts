import { describe, expect, it } from 'vitest';
import { loadConfig, redactUrl } from '../../shared/config.js';
import { ConfigError } from '../../shared/errors.js';

describe('loadConfig', () => {
  it('defaults to the local services of docs/contracts.md', () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      databaseUrl: 'postgres://postgres@127.0.0.1:5432/durable_worker',
      amqpUrl: 'amqp://guest:guest@127.0.0.1:5672',
      redisUrl: 'redis://127.0.0.1:6379',
      exchange: 'dw.messages',
      bullmqPrefix: 'bull',
      logLevel: 'info',
      healthPort: undefined,
    });
    expect(config.app).toMatch(/examples[/\\]app[/\\]index\.js$/);
  });

  it('treats empty variables as unset', () => {
    expect(loadConfig({ DW_EXCHANGE: '' }).exchange).toBe('dw.messages');
  });

  it('reports every problem, one line each, with passwords hidden', () => {
    let error: unknown;
    try {
      loadConfig({
        DATABASE_URL: 'mysql://root:hunter2@db/x',
        AMQP_URL: 'not a url',
        REDIS_URL: 'redis://127.0.0.1:6379/abc',
        LOG_LEVEL: 'loud',
        DW_HEALTH_PORT: '70000',
        DW_EXCHANGE: 'has space',
      });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const problems = (error as ConfigError).problems;
    expect(problems).toHaveLength(6);
    expect(problems.join('\n')).not.toContain('hunter2');
    expect(problems).toContain(
      'DATABASE_URL must start with postgres:// or postgresql://, got "mysql://root:***@db/x"',
    );
    expect(problems.some((p) => p.startsWith('REDIS_URL database must be a number'))).toBe(true);
    expect(problems.some((p) => p.startsWith('LOG_LEVEL must be one of'))).toBe(true);
  });

  it('honours a vhost and a Redis database number', () => {
    const config = loadConfig({
      AMQP_URL: 'amqp://u:p@h:5672/tenant-a',
      REDIS_URL: 'redis://h:6379/3',
      DW_HEALTH_PORT: '9464',
    });
    expect(config.amqpUrl).toBe('amqp://u:p@h:5672/tenant-a');
    expect(config.redisUrl).toBe('redis://h:6379/3');
    expect(config.healthPort).toBe(9464);
  });
});

describe('redactUrl', () => {
  it('hides the password and keeps the rest', () => {
    expect(redactUrl('amqp://guest:guest@127.0.0.1:5672/vh')).toBe('amqp://guest:***@127.0.0.1:5672/vh');
    expect(redactUrl('postgres://postgres@127.0.0.1:5432/db')).toBe('postgres://postgres@127.0.0.1:5432/db');
    expect(redactUrl('garbage://a:b@c d')).not.toContain(':b@');
  });
});

describe('REDIS_MODE', () => {
  it('defaults to one server; cluster and sentinel take a comma-separated list', () => {
    expect(loadConfig({}).redisMode).toBe('single');
    const cluster = loadConfig({ REDIS_MODE: 'cluster', REDIS_URL: 'redis://a:7000, redis://b:7001' });
    expect(cluster).toMatchObject({ redisMode: 'cluster', redisUrl: 'redis://a:7000, redis://b:7001' });
    const sentinel = loadConfig({
      REDIS_MODE: 'sentinel',
      REDIS_URL: 'redis://s1:26379,redis://s2:26379',
      REDIS_SENTINEL_NAME: 'mymaster',
      REDIS_SENTINEL_PASSWORD: 'pw',
    });
    expect(sentinel).toMatchObject({ redisSentinelName: 'mymaster', redisSentinelPassword: 'pw' });
  });

  it('gives cluster mode a hash-tagged default prefix, and keeps a prefix it is told', () => {
    expect(loadConfig({}).bullmqPrefix).toBe('bull');
    expect(loadConfig({ REDIS_MODE: 'cluster' }).bullmqPrefix).toBe('{bull}');
    // Refused where a connection is made (RedisClusterPrefixError), for library users as well.
    expect(loadConfig({ REDIS_MODE: 'cluster', BULLMQ_PREFIX: 'plain' }).bullmqPrefix).toBe('plain');
  });

  it('refuses what the mode cannot use, one line each', () => {
    const problems = (env: Record<string, string>) => {
      try {
        loadConfig(env);
        return [];
      } catch (error) {
        return [...(error as ConfigError).problems];
      }
    };
    expect(problems({ REDIS_MODE: 'replicated' })[0]).toMatch(/^REDIS_MODE must be one of single, cluster/);
    expect(problems({ REDIS_URL: 'redis://a,redis://b' })[0]).toMatch(/REDIS_MODE=cluster/);
    expect(problems({ REDIS_MODE: 'cluster', REDIS_URL: 'redis://a/2' })[0]).toMatch(/database 0 only/);
    expect(problems({ REDIS_MODE: 'sentinel' })[0]).toMatch(/needs REDIS_SENTINEL_NAME/);
    const bad = problems({ REDIS_MODE: 'cluster', REDIS_URL: 'redis://u:hunter2@a,http://b' });
    expect(bad).toEqual(['REDIS_URL must start with redis:// or rediss://, got "http://b/"']);
  });
});
