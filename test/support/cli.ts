import { type ChildProcess, type StdioOptions, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Config } from '../../shared/config.js';

/** The real `dw` CLI; the globalSetup compiles what it runs. */
export const dwBin = fileURLToPath(new URL('../../bin/dw.js', import.meta.url));

/** Environment that points the CLI at a test file's database, exchange and prefix. */
export function cliEnv(config: Config, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    DATABASE_URL: config.databaseUrl,
    AMQP_URL: config.amqpUrl,
    REDIS_URL: config.redisUrl,
    ...(config.redisMode ? { REDIS_MODE: config.redisMode } : {}),
    ...(config.redisSentinelName ? { REDIS_SENTINEL_NAME: config.redisSentinelName } : {}),
    DW_EXCHANGE: config.exchange,
    BULLMQ_PREFIX: config.bullmqPrefix,
    LOG_LEVEL: 'warn',
    ...(config.queueType ? { DW_QUEUE_TYPE: config.queueType } : {}),
    ...extra,
  };
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface DwChild {
  child: ChildProcess;
  /** Resolves with the exit code or signal once the process exits. */
  exited: Promise<Exit>;
}

/** Every test, chaos scenario and helper starts `dw <args>` here, as `node bin/dw.js <args>`. */
export function spawnDw(args: readonly string[], env: NodeJS.ProcessEnv, stdio: StdioOptions): DwChild {
  const child = spawn(process.execPath, [dwBin, ...args], { env, stdio });
  const exited = new Promise<Exit>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return { child, exited };
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a `dw` command to its end and collects its output. */
export function runCli(args: string[], env: NodeJS.ProcessEnv): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const { child } = spawnDw(args, env, ['ignore', 'pipe', 'pipe']);
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d) => {
      stdout += d;
    });
    child.stderr?.on('data', (d) => {
      stderr += d;
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * Starts a long-running `dw` process (worker, relay) with its output discarded;
 * DW_TEST_CHILD_LOG=debug shows its logs when debugging a test.
 */
export function startDw(args: string[], env: NodeJS.ProcessEnv): DwChild {
  const show = process.env.DW_TEST_CHILD_LOG;
  return show
    ? spawnDw(args, { ...env, LOG_LEVEL: show }, ['ignore', 'inherit', 'inherit'])
    : spawnDw(args, env, 'ignore');
}
