import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Config } from '../../shared/config.js';

export const dwBin = fileURLToPath(new URL('../../bin/dw.js', import.meta.url));

/** The environment a `dw` child process needs to talk to this test file's database, exchange and prefix. */
export function dwEnv(config: Config, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    DATABASE_URL: config.databaseUrl,
    AMQP_URL: config.amqpUrl,
    REDIS_URL: config.redisUrl,
    DW_EXCHANGE: config.exchange,
    BULLMQ_PREFIX: config.bullmqPrefix,
    LOG_LEVEL: process.env.DW_TEST_CHILD_LOG ?? 'silent',
    ...extra,
  };
}

export interface DwResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the real CLI (bin/dw.js -> dist/) and collects its output. */
export function runDw(args: string[], env: NodeJS.ProcessEnv): Promise<DwResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [dwBin, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Starts a long-running `dw` process (worker, relay); `exited` resolves with its exit code or signal. */
export function startDw(
  args: string[],
  env: NodeJS.ProcessEnv,
): { child: ChildProcess; exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> } {
  const child = spawn(process.execPath, [dwBin, ...args], {
    env,
    stdio: ['ignore', process.env.DW_TEST_CHILD_LOG ? 'inherit' : 'ignore', 'pipe'],
  });
  if (process.env.DW_TEST_CHILD_LOG) child.stderr?.pipe(process.stderr);
  else child.stderr?.resume();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return { child, exited };
}
