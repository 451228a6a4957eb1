import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { BenchEnv } from './env.js';

export interface DbosSettings {
  workflows: number;
  warmup: number;
  repetitions: number;
  concurrency: number;
  /** DBOS system database pool: as large as our worker's Postgres pool. */
  poolSize: number;
}

const child = fileURLToPath(new URL('./dbos-child.js', import.meta.url));

/** Runs the DBOS side in its own process against its own database on the same Postgres. */
export async function measureDbos(
  env: BenchEnv,
  settings: DbosSettings,
): Promise<{ rates: number[]; peakRssMb: number }> {
  const input = JSON.stringify({ databaseUrl: env.dbosDatabaseUrl, ...settings });
  const proc = spawn(process.execPath, [child, input], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
  });
  proc.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const code = await new Promise<number | null>((resolve) => proc.once('exit', resolve));
  const last = stdout.trim().split('\n').pop() ?? '';
  if (code !== 0 || !last.startsWith('{')) {
    throw new Error(
      `bench: the DBOS run failed (exit ${code}):\n${stderr.slice(-2000)}\n${stdout.slice(-1000)}`,
    );
  }
  return JSON.parse(last) as { rates: number[]; peakRssMb: number };
}
