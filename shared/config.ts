import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { workerDefaults } from './defaults.js';
import { ConfigError } from './errors.js';

/** The bundled example app; what `dw worker` serves when DW_APP is not set. */
export const EXAMPLE_APP = fileURLToPath(new URL('../examples/app/index.js', import.meta.url));

/** Process-wide settings read from the environment (docs/contracts.md, "Environment"). */
export interface Config {
  databaseUrl: string;
  amqpUrl: string;
  redisUrl: string;
  exchange: string;
  app: string;
  bullmqPrefix: string;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
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
  REDIS_URL: url(['redis:', 'rediss:'], 'REDIS_URL')
    .default('redis://127.0.0.1:6379')
    .superRefine((value, ctx) => {
      const db = safeUrl(value)?.pathname.replace(/^\//, '');
      if (db && !/^\d+$/.test(db)) {
        ctx.addIssue({ code: 'custom', message: `REDIS_URL database must be a number, got "/${db}"` });
      }
    }),
  DW_EXCHANGE: name('DW_EXCHANGE').default('dw.messages'),
  DW_APP: z.string().min(1, 'DW_APP must name a module').default(EXAMPLE_APP),
  BULLMQ_PREFIX: name('BULLMQ_PREFIX').default('bull'),
  LOG_LEVEL: z
    .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], {
      error: (issue) =>
        `LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent, got "${String(issue.input)}"`,
    })
    .default('info'),
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
  return {
    databaseUrl: e.DATABASE_URL,
    amqpUrl: e.AMQP_URL,
    redisUrl: e.REDIS_URL,
    exchange: e.DW_EXCHANGE,
    app: e.DW_APP,
    bullmqPrefix: e.BULLMQ_PREFIX,
    logLevel: e.LOG_LEVEL,
    healthPort: e.DW_HEALTH_PORT,
    ...(e.DW_ORDERED_PARTITIONS === undefined ? {} : { orderedPartitions: e.DW_ORDERED_PARTITIONS }),
  };
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
