import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * The layers import downward only: `cli/` and `testing/` (the test kit) on top, beside each other;
 * `ops/` (operator features) below them; `worker/`
 * and `relay/` beside each other, never importing each other; `shared/` at the bottom.
 */
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const layers = ['cli', 'testing', 'ops', 'worker', 'relay', 'shared'] as const;
type Layer = (typeof layers)[number];

const forbidden: Record<Layer, readonly Layer[]> = {
  cli: ['testing'],
  testing: ['cli'],
  ops: ['cli', 'testing', 'worker', 'relay'],
  worker: ['cli', 'testing', 'ops', 'relay'],
  relay: ['cli', 'testing', 'ops', 'worker'],
  shared: ['cli', 'testing', 'ops', 'worker', 'relay'],
};

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return /\.(ts|mts|js|mjs)$/.test(entry.name) ? [path] : [];
  });
}

/** Relative specifiers of static imports, re-exports and dynamic imports. */
function importSpecifiers(source: string): string[] {
  const found: string[] = [];
  for (const match of source.matchAll(/(?:\bfrom\s*|\bimport\s*\(?\s*)['"](\.{1,2}\/[^'"]+)['"]/g)) {
    found.push(match[1] as string);
  }
  return found;
}

function layerOf(file: string): Layer | undefined {
  const top = relative(root, file).split(/[\\/]/)[0];
  return layers.find((layer) => layer === top);
}

function violations(): string[] {
  const found: string[] = [];
  for (const layer of layers) {
    for (const file of sourceFiles(join(root, layer))) {
      for (const specifier of importSpecifiers(readFileSync(file, 'utf8'))) {
        const target = layerOf(resolve(dirname(file), specifier));
        if (target && forbidden[layer].includes(target)) {
          found.push(`${relative(root, file)} imports ${specifier} (${layer}/ must not import ${target}/)`);
        }
      }
    }
  }
  return found;
}

describe('layers', () => {
  it('import downward only', () => {
    expect(violations()).toEqual([]);
  });

  it('the check sees static, type-only, re-exported and dynamic imports', () => {
    const source = [
      "import { a } from '../worker/a.js';",
      "import type { B } from '../relay/b.js';",
      "export { c } from '../cli/c.js';",
      "const d = await import('../ops/d.js');",
      "import { e } from 'zod';",
    ].join('\n');
    expect(importSpecifiers(source)).toEqual([
      '../worker/a.js',
      '../relay/b.js',
      '../cli/c.js',
      '../ops/d.js',
    ]);
  });
});
