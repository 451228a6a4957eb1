import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Config } from '../../shared/config.js';

export const dwBin = fileURLToPath(new URL('../../bin/dw.js', import.meta.url));

/** Environment that points the CLI at a test file's database, exchange and prefix. */
export function cliEnv(config: Config, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    DATABASE_URL: config.databaseUrl,
    AMQP_URL: config.amqpUrl,
    REDIS_URL: config.redisUrl,
    DW_EXCHANGE: config.exchange,
    BULLMQ_PREFIX: config.bullmqPrefix,
    LOG_LEVEL: 'warn',
    ...extra,
  };
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the real `dw` CLI (compiled by the globalSetup) and collects its output. */
export function runCli(args: string[], env: NodeJS.ProcessEnv): Promise<CliResult> {
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
