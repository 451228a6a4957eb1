import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { DwProcess } from './children.js';
import type { BenchEnv } from './env.js';

const dwBin = fileURLToPath(new URL('../../bin/dw.js', import.meta.url));

/** What this build's `dw worker` offers, read from its `--help` (the bench runs against any build). */
export interface WorkerCli {
  /** `--batch-size` exists; its default as the help prints it (undefined when it prints none). */
  batchSize: { supported: boolean; default?: number };
  sagaBatchSize: { supported: boolean; default?: number };
}

export async function probeWorkerCli(): Promise<WorkerCli> {
  const { stdout } = await promisify(execFile)(process.execPath, [dwBin, 'worker', '--help']);
  return parseWorkerHelp(stdout);
}

export function parseWorkerHelp(stdout: string): WorkerCli {
  const option = (flag: string) => {
    // Commander prints `  --flag <n>   description (default: 10)`, wrapped at the terminal width
    // (the wrap may fall between `default:` and the number).
    const match = new RegExp(`(?:^|\\s)${flag} <[^>]+>([\\s\\S]*?)(?=\\n\\s+-|$)`).exec(stdout);
    if (!match) return { supported: false };
    const value = /\(default:\s+(\d+)\)/.exec(match[1]!);
    return { supported: true, ...(value ? { default: Number(value[1]) } : {}) };
  };
  return { batchSize: option('--batch-size'), sagaBatchSize: option('--saga-batch-size') };
}

/**
 * `count` `dw worker` processes started side by side, sharing the work queue as separate
 * deployments would; resolves once every one of them is ready, with the time the last one was.
 */
export async function startWorkers(
  env: BenchEnv,
  count: number,
  args: readonly string[],
  nodeArgs: readonly string[],
): Promise<{ workers: DwProcess[]; readyAtMs: number }> {
  const started = await Promise.allSettled(
    Array.from({ length: count }, (_, i) =>
      DwProcess.start(
        count === 1 ? 'worker' : `worker ${i + 1}/${count}`,
        ['worker', ...args],
        env.childEnv(),
        'worker started',
        nodeArgs,
      ),
    ),
  );
  const workers = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  const failure = started.find((s) => s.status === 'rejected');
  if (failure) {
    await stopWorkers(workers);
    throw failure.reason;
  }
  return { workers, readyAtMs: Date.now() };
}

export async function stopWorkers(workers: readonly DwProcess[]): Promise<void> {
  await Promise.all(workers.map((w) => w.stop()));
}

/** The highest peak RSS of any one of them: a per-process figure, like a single worker's. */
export function peakRssMb(workers: readonly DwProcess[]): number {
  return Math.max(0, ...workers.map((w) => w.peakRssMb()));
}
