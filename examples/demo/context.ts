import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
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

export const dwBin = fileURLToPath(new URL('../../../bin/dw.js', import.meta.url));

export function runDw(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [dwBin, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => {
      out += d;
    });
    child.stderr.on('data', (d) => {
      err += d;
    });
    child.on('close', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`dw ${args.join(' ')} exited ${code}: ${err.trim()}`)),
    );
  });
}
