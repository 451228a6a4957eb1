import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** The scenarios run the compiled CLI (`bin/dw.js` -> dist): build it once, from the current sources. */
export default function setup(): void {
  const root = fileURLToPath(new URL('../../..', import.meta.url));
  execFileSync('npm', ['run', '--silent', 'build'], { cwd: root, stdio: 'inherit' });
}
