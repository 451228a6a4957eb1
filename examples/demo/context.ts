import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { Knex } from 'knex';
import type { Config, OutgoingMessage } from '../../index.js';

/** What every demo section gets: the database, the config, and ways to publish and to run `dw`. */
export interface DemoContext {
  config: Config;
  knex: Knex;
  publish(messages: OutgoingMessage[]): Promise<void>;
  /** Runs `dw <args>` and returns its stdout; throws with its stderr when it exits non-zero. */
  dw(args: string[]): Promise<string>;
  say(line: string): void;
}

const execFileAsync = promisify(execFile);

export const dwBin = fileURLToPath(new URL('../../../bin/dw.js', import.meta.url));

/** Runs `dw <args>` and returns its stdout; rejects with its stderr when it exits non-zero. */
export async function runDw(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<string> {
  try {
    return (await execFileAsync(process.execPath, [dwBin, ...args], { env, maxBuffer: 64 * 1024 * 1024 }))
      .stdout;
  } catch (error) {
    const { code, stderr } = error as { code?: unknown; stderr?: string };
    throw new Error(`dw ${args.join(' ')} exited ${code}: ${(stderr ?? '').trim()}`);
  }
}
