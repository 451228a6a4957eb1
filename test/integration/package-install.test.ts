import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { builtinModules } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deleteRedisKeys } from '../../bench/env.js';
import { waitUntil } from '../../shared/wait.js';
import { deleteAmqpTopology, randomName, urls } from '../support/services.js';

/*
 * A new user's first steps: `npm pack`, install the tarball into an empty project, write an app
 * against the public API, run the `dw` binary of that project. The install is offline: the project
 * gets a lockfile pinned to this repository's own locked versions, so npm takes every tarball from
 * its cache (filled by `npm ci`) and needs no registry metadata.
 */

const run = promisify(execFile);
const root = fileURLToPath(new URL('../..', import.meta.url));

interface PackResult {
  filename: string;
  size: number;
  entryCount: number;
  files: Array<{ path: string }>;
}

interface LockEntry {
  name?: string;
  version?: string;
  dev?: boolean;
  link?: boolean;
  [key: string]: unknown;
}

const id = randomName('');
const database = `dw_test_pack_${id}`;
const exchange = `test.${id}`;
const prefix = `test-${id}`;
let dir: string;
let project: string;
let pack: PackResult;
const children: ChildProcess[] = [];

const APP = `import { z } from 'zod';
import { defineApp, defineHandler } from 'durable-worker';

export default defineApp({
  name: 'app',
  handlers: [
    defineHandler('NoteTaken', z.object({ text: z.string() }), async (msg, ctx) => {
      const jobId = ctx.send('notes_out', 'NoteStored', { text: msg.text });
      await ctx.trx('notes').insert({ message_id: ctx.envelope.id, text: msg.text, job_id: jobId });
    }),
  ],
  migrations: [
    {
      name: 'user_notes',
      async up(knex) {
        await knex.schema.createTable('notes', (t) => {
          t.text('message_id').primary();
          t.text('text').notNullable();
          t.text('job_id').notNullable();
        });
      },
    },
  ],
});
`;

/** A user's test with the kit: the app's handler runs in-process, no RabbitMQ or Redis. */
const HARNESS = `import { createKnex } from 'durable-worker';
import { createTestHarness } from 'durable-worker/testing';
import app from './app.js';

const knex = createKnex(process.env.DATABASE_URL);
try {
  const h = await createTestHarness(app, { knex });
  const id = h.publish('NoteTaken', { text: 'from the harness' });
  await h.idle();
  const note = await knex('notes').where({ message_id: id }).first();
  process.stdout.write(JSON.stringify({ text: note?.text, sent: h.sent('notes_out').map((j) => j.type) }));
  await h.close();
} finally {
  await knex.destroy();
}
`;

/** The user's project lockfile: the tarball, zod, and this repository's locked runtime packages. */
async function projectLock(tarball: string): Promise<{
  name: string;
  version: string;
  lockfileVersion: number;
  requires: boolean;
  packages: { '': { dependencies: Record<string, string> } } & Record<string, unknown>;
}> {
  const ours = JSON.parse(await readFile(join(root, 'package-lock.json'), 'utf8')) as {
    packages: Record<string, LockEntry>;
  };
  const manifest = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as {
    version: string;
    license: string;
    dependencies: Record<string, string>;
    bin: Record<string, string>;
    engines: Record<string, string>;
  };
  const integrity = `sha512-${createHash('sha512')
    .update(await readFile(join(dir, tarball)))
    .digest('base64')}`;
  // The user's app imports zod itself; the project pins the version locked here (so it is cached).
  const zod = String(ours.packages['node_modules/zod']?.version);
  const top = {
    name: 'user-project',
    version: '1.0.0',
    dependencies: { 'durable-worker': `file:../${tarball}`, zod },
  };
  const packages: { '': typeof top } & Record<string, unknown> = {
    '': top,
    'node_modules/durable-worker': {
      version: manifest.version,
      resolved: `file:../${tarball}`,
      integrity,
      license: manifest.license,
      dependencies: manifest.dependencies,
      bin: manifest.bin,
      engines: manifest.engines,
    },
  };
  // Packages only the devDependencies need stay out: a runtime import of one fails the test. A
  // tarball URL (this repository's lock omits them) lets npm take the tarball from its cache by
  // integrity without asking the registry for the package's metadata.
  const registry = (await run('npm', ['config', 'get', 'registry'])).stdout.trim().replace(/\/$/, '');
  for (const [path, entry] of Object.entries(ours.packages)) {
    if (path === '' || entry.dev || entry.link) continue;
    const name = entry.name ?? path.slice(path.lastIndexOf('node_modules/') + 'node_modules/'.length);
    const resolved = `${registry}/${name}/-/${name.split('/').pop()}-${entry.version}.tgz`;
    packages[path] = { resolved, ...entry };
  }
  return { name: 'user-project', version: '1.0.0', lockfileVersion: 3, requires: true, packages };
}

function dwEnv(): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    DATABASE_URL: `${urls.postgres}/${database}`,
    AMQP_URL: urls.amqp,
    REDIS_URL: urls.redis,
    DW_EXCHANGE: exchange,
    BULLMQ_PREFIX: prefix,
    LOG_LEVEL: 'warn',
  };
}

/** Runs the project's own `node_modules/.bin/dw` from the project directory. */
function dw(args: string[], extra: NodeJS.ProcessEnv = {}) {
  return run(join(project, 'node_modules', '.bin', 'dw'), args, {
    cwd: project,
    env: { ...dwEnv(), ...extra },
  });
}

function startDw(args: string[]): { child: ChildProcess; exited: Promise<number | null> } {
  const child = spawn(join(project, 'node_modules', '.bin', 'dw'), args, {
    cwd: project,
    env: dwEnv(),
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  children.push(child);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, exited };
}

async function filesUnder(path: string): Promise<string[]> {
  const entries = await readdir(path, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dw-pack-'));
  // vitest's globalSetup has just built dist/; prepack would delete it under the other test files.
  const { stdout } = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], {
    cwd: root,
  });
  [pack] = JSON.parse(stdout) as [PackResult];
  project = join(dir, 'project');
  await mkdir(project);
  const lock = await projectLock(pack.filename);
  await writeFile(
    join(project, 'package.json'),
    JSON.stringify({
      name: 'user-project',
      version: '1.0.0',
      private: true,
      type: 'module',
      dependencies: lock.packages[''].dependencies,
    }),
  );
  await writeFile(join(project, 'package-lock.json'), JSON.stringify(lock));
  await run('npm', ['ci', '--offline', '--no-audit', '--no-fund'], { cwd: project });
  await writeFile(join(project, 'app.js'), APP);
  await writeFile(join(project, 'harness.js'), HARNESS);
}, 90_000);

afterAll(async () => {
  for (const child of children)
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  const client = new pg.Client({ connectionString: `${urls.postgres}/postgres` });
  await client.connect();
  try {
    await client.query(`drop database if exists ${client.escapeIdentifier(database)} with (force)`);
  } finally {
    await client.end();
  }
  await deleteAmqpTopology(exchange);
  await deleteRedisKeys(urls.redis, `${prefix}:*`);
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('the packed package', () => {
  it('holds the build, the bin and the README, and no tests, bench or TypeScript sources', () => {
    const paths = pack.files.map((f) => f.path);
    expect(paths).toEqual(
      expect.arrayContaining([
        'dist/index.js',
        'dist/index.d.ts',
        'dist/testing/index.js',
        'dist/testing/index.d.ts',
        'bin/dw.js',
        'README.md',
        'package.json',
        // the dashboard's page, script and styles, read at run time from beside dist/
        'ops/dashboard/assets/index.html',
        'ops/dashboard/assets/app.js',
        'ops/dashboard/assets/style.css',
      ]),
    );
    expect(paths.filter((p) => /^(test|bench|dist\/bench|dist\/test)\//.test(p))).toEqual([]);
    expect(paths.filter((p) => p.endsWith('.ts') && !p.endsWith('.d.ts'))).toEqual([]);
    expect(paths.filter((p) => p.endsWith('.map'))).toEqual([]);
  });

  it('imports only its declared dependencies and node builtins at run time', async () => {
    const installed = join(project, 'node_modules', 'durable-worker');
    const manifest = JSON.parse(await readFile(join(installed, 'package.json'), 'utf8')) as {
      dependencies: Record<string, string>;
    };
    const allowed = new Set([...Object.keys(manifest.dependencies), ...builtinModules]);
    const undeclared = new Set<string>();
    const seen = new Set<string>();
    for (const file of await filesUnder(join(installed, 'dist'))) {
      if (!file.endsWith('.js')) continue;
      const source = await readFile(file, 'utf8');
      const specifiers = [
        ...source.matchAll(/^\s*(?:import|export)\b[^'";]*?\bfrom\s*'([^']+)'/gm),
        ...source.matchAll(/^\s*import\s*'([^']+)'/gm),
        ...source.matchAll(/\bimport\(\s*'([^']+)'\s*\)/g),
      ].map((m) => m[1] as string);
      for (const specifier of specifiers) {
        if (specifier.startsWith('.') || specifier.startsWith('node:')) continue;
        const parts = specifier.split('/');
        const name = specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
        seen.add(name as string);
        if (!allowed.has(name as string)) undeclared.add(specifier);
      }
    }
    expect(seen).toContain('knex'); // the scan reads the compiled imports at all
    expect([...undeclared]).toEqual([]);
  });

  it("runs migrate, worker and relay from the project's node_modules/.bin until a message is handled", async () => {
    // DW_APP without ./ names a file of the project: it is found from the cwd, not as a package.
    const migrated = await dw(['migrate'], { DW_APP: 'app.js' });
    expect(migrated.stdout).toContain(`declared exchange ${exchange} and queue ${exchange}.app`);

    const worker = startDw(['worker', '--app', './app.js']);
    const relay = startDw(['relay']);
    const published = await dw(['publish', 'NoteTaken', '--data', '{"text":"hello"}', '--json']);
    const [message] = (JSON.parse(published.stdout) as { published: Array<{ id: string }> }).published;

    const db = new pg.Client({ connectionString: `${urls.postgres}/${database}` });
    const redis = new Redis(urls.redis, { lazyConnect: true });
    try {
      await db.connect();
      await redis.connect();
      const note = await waitUntil(
        async () =>
          (
            await db.query<{ text: string; job_id: string }>(
              'select text, job_id from notes where message_id = $1',
              [message!.id],
            )
          ).rows[0],
        'the handler to write the note',
        { timeoutMs: 30_000 },
      );
      expect(note.text).toBe('hello');
      // The relay added the handler's outbox row as a BullMQ job whose id is the outbox message id.
      const job = await waitUntil(
        async () => {
          const fields = await redis.hgetall(`${prefix}:notes_out:${note.job_id}`);
          return fields.name ? fields : undefined;
        },
        'the relay to add the BullMQ job',
        { timeoutMs: 30_000 },
      );
      expect(job.name).toBe('NoteStored');
    } finally {
      await db.end();
      redis.disconnect();
    }

    // The installed package's dashboard finds its page and script (they live beside dist/).
    const dashboard = spawn(
      join(project, 'node_modules', '.bin', 'dw'),
      ['dashboard', '--port', '0', '--app', './app.js'],
      {
        cwd: project,
        env: dwEnv(),
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    children.push(dashboard);
    let out = '';
    dashboard.stdout?.on('data', (d) => {
      out += d;
    });
    const dashboardExited = new Promise<number | null>((resolve) =>
      dashboard.once('exit', (code) => resolve(code)),
    );
    const url = await waitUntil(() => /dashboard on (\S+)/.exec(out)?.[1], 'the dashboard to listen', {
      timeoutMs: 30_000,
    });
    const page = await fetch(url);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('assets/app.js');
    expect((await fetch(`${url}assets/app.js`)).status).toBe(200);
    dashboard.kill('SIGTERM');
    expect(await dashboardExited).toBe(0);

    worker.child.kill('SIGTERM');
    relay.child.kill('SIGTERM');
    expect(await worker.exited).toBe(0);
    expect(await relay.exited).toBe(0);
  }, 90_000);

  it('resolves durable-worker/testing (with its types) and runs the harness in the project', async () => {
    const installed = join(project, 'node_modules', 'durable-worker');
    const manifest = JSON.parse(await readFile(join(installed, 'package.json'), 'utf8')) as {
      exports: Record<string, { types: string; default: string }>;
    };
    const types = await readFile(join(installed, manifest.exports['./testing']!.types), 'utf8');
    expect(types).toContain('createTestHarness');
    // Runs after the test above, which migrated the database; the harness migrates it again (a no-op).
    const { stdout } = await run(process.execPath, ['harness.js'], { cwd: project, env: dwEnv() });
    expect(JSON.parse(stdout)).toEqual({ text: 'from the harness', sent: ['NoteStored'] });
  }, 60_000);
});
