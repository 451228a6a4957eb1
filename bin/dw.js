#!/usr/bin/env node
// The CLI is compiled TypeScript: the published package ships dist/; in a checkout, `npm ci` builds it
// through the `prepare` script.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const entry = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  process.stderr.write(
    'dw: the build is missing (dist/). Run `npm run build` in the durable-worker checkout.\n',
  );
  process.exit(1);
}
await import(entry.href);
