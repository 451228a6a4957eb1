import type { BenchEnv } from './env.js';
export async function runSoak(_env: BenchEnv, _s: unknown): Promise<{ table: string; report: unknown }> {
  throw new Error('todo');
}
