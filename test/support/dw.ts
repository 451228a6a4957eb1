import { type ChildProcess, spawn } from 'node:child_process';
import { dwBin } from './cli.js';

/**
 * Starts a long-running `dw` process (worker, relay); `exited` resolves with its exit code or
 * signal. DW_TEST_CHILD_LOG=debug shows its logs when debugging a test.
 */
export function startDw(
  args: string[],
  env: NodeJS.ProcessEnv,
): { child: ChildProcess; exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> } {
  const show = Boolean(process.env.DW_TEST_CHILD_LOG);
  const child = spawn(process.execPath, [dwBin, ...args], {
    env: show ? { ...env, LOG_LEVEL: process.env.DW_TEST_CHILD_LOG } : env,
    stdio: ['ignore', show ? 'inherit' : 'ignore', show ? 'inherit' : 'ignore'],
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return { child, exited };
}
