import { execFileSync } from 'node:child_process';

/**
 * vitest globalSetup: compiles once, so tests that run the real `dw` CLI or spawn worker and relay
 * processes use the current sources.
 */
export default function setup(): void {
  execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { stdio: 'inherit' });
}
