import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { redisDefaults, workerDefaults } from './defaults.js';
import { ConfigError } from './errors.js';
import { type QueueType, queueTypes } from './queue-type.js';

/** The bundled example app; what `dw worker` serves when DW_APP is not set. */
export const EXAMPLE_APP = fileURLToPath(new URL('../examples/app/index.js', import.meta.url));

/** How durable-worker reaches Redis: one server, a Redis Cluster, or a master found through sentinels. */
export type RedisMode = 'single' | 'cluster' | 'sentinel';

/** Process-wide settings read from the environment (docs/contracts.md, "Environment"). */
export interface Config {
  databaseUrl: string;
  amqpUrl: string;
  /**
   * One URL (single), or a comma-separated list: the seed nodes of a cluster, or the sentinels.
   * @defaultValue `'redis://127.0.0.1:6379'`
   */
  redisUrl: string;
  /**
   * How `redisUrl` is read (shared/redis.ts, createRedis).
   * @defaultValue `'single'`
   */
  redisMode?: RedisMode;
  /** Sentinel mode: the master's name as the sentinels know it (`sentinel monitor <name> …`). */
  redisSentinelName?: string | undefined;
  /** Sentinel mode: the sentinels' own password (`requirepass` of sentinel.conf), when they have one. */
  redisSentinelPassword?: string | undefined;
  exchange: string;
  app: string;
  bullmqPrefix: string;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  /**
   * DW_QUEUE_TYPE: the type of the work and retry queues. Unset: an existing queue keeps its type,
   * a new one is quorum (shared/queue-type.ts).
   */
  queueType?: QueueType;
  /** Port of the `/healthz` and `/metrics` endpoint; undefined disables it. */
  healthPort: number | undefined;
  /** DW_ORDERED_PARTITIONS: partition queues of keyed messages (0 turns them off); undefined: the default. */
  orderedPartitions?: number;
}

const url = (protocols: string[], name: string) =>
  z.string().superRefine((value, ctx) => {
    let parsed: URL;
    try {
      parsed = new URL(value);
    } catch {
      ctx.addIssue({ code: 'custom', message: `${name} is not a URL: "${redactUrl(value)}"` });
      return;
    }
    if (!protocols.includes(parsed.protocol)) {
      ctx.addIssue({
        code: 'custom',
        message: `${name} must start with ${protocols.map((p) => `${p}//`).join(' or ')}, got "${redactUrl(value)}"`,
      });
    }
  });

const name = (variable: string) =>
  z.string().regex(/^[A-Za-z0-9_.:{}-]{1,200}$/, `${variable} may hold letters, digits and _ . : { } - only`);

const envSchema = z.object({
  DATABASE_URL: url(['postgres:', 'postgresql:'], 'DATABASE_URL').default(
    'postgres://postgres@127.0.0.1:5432/durable_worker',
  ),
  AMQP_URL: url(['amqp:', 'amqps:'], 'AMQP_URL').default('amqp://guest:guest@127.0.0.1:5672'),
  REDIS_URL: z
    .string()
    .default(redisDefaults.url)
    .superRefine((value, ctx) => {
      const list = value
        .split(',')
        .map((u) => u.trim())
        .filter((u) => u !== '');
      if (list.length === 0) ctx.addIssue({ code: 'custom', message: 'REDIS_URL holds no URL' });
      for (const entry of list) {
        const parsed = safeUrl(entry);
        if (!parsed) {
          ctx.addIssue({ code: 'custom', message: `REDIS_URL is not a URL: "${redactUrl(entry)}"` });
        } else if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
          ctx.addIssue({
            code: 'custom',
            message: `REDIS_URL must start with redis:// or rediss://, got "${redactUrl(entry)}"`,
          });
        } else {
          const db = parsed.pathname.replace(/^\//, '');
          if (db && !/^\d+$/.test(db)) {
            ctx.addIssue({ code: 'custom', message: `REDIS_URL database must be a number, got "/${db}"` });
          }
        }
      }
    }),
  REDIS_MODE: z
    .enum(['single', 'cluster', 'sentinel'], {
      error: (issue) => `REDIS_MODE must be one of single, cluster, sentinel, got "${String(issue.input)}"`,
    })
    .default(redisDefaults.mode),
  REDIS_SENTINEL_NAME: name('REDIS_SENTINEL_NAME').optional(),
  REDIS_SENTINEL_PASSWORD: z.string().optional(),
  DW_EXCHANGE: name('DW_EXCHANGE').default('dw.messages'),
  DW_APP: z.string().min(1, 'DW_APP must name a module').default(EXAMPLE_APP),
  BULLMQ_PREFIX: name('BULLMQ_PREFIX').optional(),
  LOG_LEVEL: z
    .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], {
      error: (issue) =>
        `LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent, got "${String(issue.input)}"`,
    })
    .default('info'),
  DW_QUEUE_TYPE: z
    .enum(queueTypes as [QueueType, ...QueueType[]], {
      error: (issue) => `DW_QUEUE_TYPE must be quorum or classic, got "${String(issue.input)}"`,
    })
    .optional(),
  DW_HEALTH_PORT: z
    .string()
    .regex(/^\d+$/, 'DW_HEALTH_PORT must be a port number')
    .transform(Number)
    .refine((port) => port > 0 && port < 65536, 'DW_HEALTH_PORT must be between 1 and 65535')
    .optional(),
  DW_ORDERED_PARTITIONS: z
    .string()
    .regex(
      /^\d{1,4}$/,
      `DW_ORDERED_PARTITIONS must be a whole number from 0 to ${workerDefaults.maxOrderedPartitions}`,
    )
    .transform(Number)
    .refine(
      (n) => n <= workerDefaults.maxOrderedPartitions,
      `DW_ORDERED_PARTITIONS must be a whole number from 0 to ${workerDefaults.maxOrderedPartitions}`,
    )
    .optional(),
});

/** Reads and validates the environment once; every problem becomes one line of the ConfigError. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const present = Object.fromEntries(
    Object.entries(env).filter(([, value]) => value !== undefined && value !== ''),
  );
  const result = envSchema.safeParse(present);
  if (!result.success) throw new ConfigError(result.error.issues.map((issue) => issue.message));
  const e = result.data;
  const problems = redisModeProblems(e.REDIS_MODE, e.REDIS_URL, e.REDIS_SENTINEL_NAME);
  if (problems.length) throw new ConfigError(problems);
  const bullmqPrefix =
    e.BULLMQ_PREFIX ??
    (e.REDIS_MODE === 'cluster' ? redisDefaults.clusterBullmqPrefix : redisDefaults.bullmqPrefix);
  return {
    databaseUrl: e.DATABASE_URL,
    amqpUrl: e.AMQP_URL,
    redisUrl: e.REDIS_URL,
    redisMode: e.REDIS_MODE,
    redisSentinelName: e.REDIS_SENTINEL_NAME,
    redisSentinelPassword: e.REDIS_SENTINEL_PASSWORD,
    exchange: e.DW_EXCHANGE,
    app: e.DW_APP,
    bullmqPrefix,
    logLevel: e.LOG_LEVEL,
    healthPort: e.DW_HEALTH_PORT,
    ...(e.DW_QUEUE_TYPE ? { queueType: e.DW_QUEUE_TYPE } : {}),
    ...(e.DW_ORDERED_PARTITIONS === undefined ? {} : { orderedPartitions: e.DW_ORDERED_PARTITIONS }),
  };
}

/**
 * What REDIS_MODE asks of REDIS_URL and REDIS_SENTINEL_NAME. A BULLMQ_PREFIX without a hash tag in
 * cluster mode is refused where a connection is made (RedisClusterPrefixError), for library users too.
 */
function redisModeProblems(mode: RedisMode, redisUrl: string, sentinelName: string | undefined): string[] {
  const list = redisUrl.split(',').filter((u) => u.trim() !== '');
  const problems: string[] = [];
  if (mode === 'single' && list.length > 1) {
    problems.push(
      `REDIS_URL lists ${list.length} URLs, but REDIS_MODE is single: set REDIS_MODE=cluster (seed nodes) or REDIS_MODE=sentinel (sentinels), or give one URL`,
    );
  }
  if (
    mode === 'cluster' &&
    list.some((u) => (safeUrl(u.trim())?.pathname.replace(/^\//, '') || '0') !== '0')
  ) {
    problems.push('REDIS_URL names a database number, but a Redis Cluster has database 0 only: drop the /N');
  }
  if (mode === 'sentinel' && !sentinelName) {
    problems.push(
      'REDIS_MODE=sentinel needs REDIS_SENTINEL_NAME, the master name of the sentinels (sentinel monitor <name> …)',
    );
  }
  return problems;
}

function safeUrl(value: string): URL | undefined {
  try {
    return new URL(value);
  } catch {
    return undefined;
  }
}

/** The URL with its password replaced by `***`, for messages and logs. */
export function redactUrl(value: string): string {
  const parsed = safeUrl(value);
  if (!parsed) return value.replace(/:\/\/([^:/@]*):[^@/]*@/, '://$1:***@');
  if (parsed.password) parsed.password = '***';
  return parsed.toString();
}
