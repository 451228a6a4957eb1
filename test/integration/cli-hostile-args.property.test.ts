import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import amqp from 'amqplib';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_DATA_FILE_BYTES } from '../../cli/parse.js';
import { createProgram, reportError } from '../../cli/program.js';
import { deadLetterReasons, storeDeadLetter } from '../../shared/dead-letters.js';
import { orderedExchangeName, orderingKeyProblem } from '../../shared/ordering.js';
import { insertSaga, sagaStatuses } from '../../shared/saga/store.js';
import { cliEnv, dwBin } from '../support/cli.js';
import { createTestEnv, type TestEnv, urls } from '../support/services.js';

/**
 * Every `dw` command answers any argument vector with exit 0 (only for valid input) or exit 1 and
 * exactly one `dw: …` line: never a stack trace, a hang, or an unbounded read. Two layers: the
 * commander parser in process with many runs (the action never runs: a preAction hook stops it),
 * and a few real spawns of the built CLI per command against this file's database.
 */
const seed = Number(process.env.DW_PROPERTY_SEED ?? Math.floor(Math.random() * 2 ** 31));
console.log(`[cli-hostile-args] seed ${seed} (set DW_PROPERTY_SEED to replay)`);

let env: TestEnv;
let dir: string;
let validFile: string;
let hugeFile: string;
let deadLetterId: number;
const routedType = 'Routed';
const sagaId = 'saga-1';

// What a terminal would obey: C0/C1 controls other than newline, and bidi controls.
// biome-ignore lint/suspicious/noControlCharactersInRegex: finding controls is the point
const terminalControl = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/;

// ---- hostile values (argv cannot carry NUL; lone surrogates arrive as U+FFFD) ----

const specials = fc.constantFrom(
  ...['-1', '0', '1', '2', '50', '1e309', 'NaN', 'Infinity', '0x10', '1.5', ' 1', '+1', '１', '1_0'],
  ...['99999999999999999999', '', '--', '-', '--json', '-x', '--all', '--yes', '-V', 'null', '{}', '[]'],
  ...['@/nonexistent', '@/dev/zero', '@', '@/', '/dev/zero', '.', '..', '{"a":1}', '"\\ud800"'],
  ...[
    '2024-13-45',
    '2024-01-01',
    '0000-01-01',
    '2024-01-01T12:00Z',
    '1h',
    '30m',
    '0d',
    '99999999999999999999d',
  ],
  ...['yesterday', '\u202e', '\x1b[2J', 'a\rb', 'a\nb', '\t', 'a\ud800b', '\udc00', 'x\n    at f (x.js:1:1)'],
);
const text = fc.string({ unit: 'binary', maxLength: 40 }).map((s) => s.replace(/\0/g, ''));
const controls = fc.string({
  unit: fc.integer({ min: 1, max: 0x9f }).map((c) => String.fromCharCode(c)),
  maxLength: 20,
});
// 100 kB: below the kernel's 128 KiB limit for one argument.
const long = fc
  .constantFrom('1', 'x', '\x1b', '\u202e', 'é', '-', '[')
  .map((c) => c.repeat(Math.floor(100_000 / Buffer.byteLength(c))));
const optionLike = text.map((s) => `--${s}`);
const hostile = fc.oneof(specials, text, controls, long, optionLike);

/** A number-ish value that never asks for millions of messages. */
const count = hostile.map((v) => (/^\d+$/.test(v) && Number(v) > 50 && Number(v) <= 1e7 ? '50' : v));

const json = () =>
  fc.oneof(
    hostile,
    fc.constantFrom('{"userId":"u"}', '[1,2]', '"s"', '{"a":"\\ud800\\u0000"}', '{"a":'),
    fc.integer({ min: 1, max: 50_000 }).map((n) => `${'['.repeat(n)}${']'.repeat(n)}`),
    fc.constant(JSON.stringify({ s: 'x'.repeat(99_000) })),
    fc.constantFrom('valid', 'huge').map((which) => `@${which === 'valid' ? validFile : hugeFile}`),
  );

// ---- the specification each command is checked against ----

type Model = { positionals: string[]; options: Record<string, string>; flags: string[] };

interface Spec {
  name: string;
  path: string[];
  positionals: fc.Arbitrary<string[]>;
  options: Record<string, fc.Arbitrary<string>>;
  flags: string[];
  /** Always added (e.g. --dry-run so replay and purge change nothing). */
  fixed?: string[];
  /** Positional arguments it takes (more is an error). */
  arity: number;
  /** Exit 0 allowed only when this holds (after the parser's own checks). */
  valid(m: Model): boolean;
  /** Valid input must also succeed. */
  mustSucceed?: boolean;
  /** worker/relay: prepend one invalid option so the process stops at validation. */
  neverStart?: fc.Arbitrary<string>;
}

const isInt = (v: string | undefined, min: number, max: number) =>
  v === undefined || (/^\d+$/.test(v) && Number(v) >= min && Number(v) <= max);
const durationValid = (v: string) => {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(v);
  const unit = { ms: 1, s: 1e3, m: 6e4, h: 3.6e6, d: 8.64e7 }[m?.[2] as 'd'];
  return m !== null && Number(m[1]) * unit <= 36_500 * 8.64e7;
};
const sinceValid = (v: string | undefined) =>
  v === undefined ||
  durationValid(v) ||
  (/^\d{4}-\d{2}-\d{2}/.test(v) && !Number.isNaN(Date.parse(v)) && Date.parse(v) >= Date.UTC(1, 0, 1));
const reasonValid = (v: string | undefined) => v === undefined || deadLetterReasons.includes(v as never);
const filtersValid = (o: Record<string, string>) => reasonValid(o['--reason']) && sinceValid(o['--since']);
const hasFilters = (o: Record<string, string>) =>
  Boolean(o['--type'] || o['--queue'] || o['--reason'] !== undefined || o['--since'] !== undefined);
const messageIdValid = (v: string | undefined) =>
  v === undefined ||
  (v !== '' &&
    Buffer.byteLength(v) <= 255 &&
    !/[\p{Cc}\p{Cs}\u200e\u200f\u202a-\u202e\u2066-\u2069]/u.test(v.replace(/[\ud800-\udfff]/g, '\ufffd')));
const jsonValid = (v: string | undefined) => {
  if (v === undefined) return false;
  if (v.startsWith('@')) return v === `@${validFile}`;
  try {
    JSON.stringify(JSON.parse(v));
    return true;
  } catch {
    return false;
  }
};
const idsValid = (ids: string[], exist: (n: number) => boolean) =>
  ids.every((v) => /^\d{1,15}$/.test(v) && Number(v) >= 1 && exist(Number(v)));
const targetValid = (m: Model, exist: (n: number) => boolean) => {
  const all = m.flags.includes('--all');
  if (m.positionals.length > 0 === all) return false;
  if (m.positionals.length > 0 && hasFilters(m.options)) return false;
  return idsValid(m.positionals, exist) && filtersValid(m.options);
};
const filterOptions = () => ({
  '--type': hostile,
  '--reason': fc.oneof(hostile, fc.constantFrom(...deadLetterReasons)),
  '--queue': hostile,
  '--since': fc.oneof(hostile, fc.constantFrom('1h', '2024-05-01T12:00Z', '36500d', '36501d')),
});
const ids = () =>
  fc.array(fc.oneof(hostile, fc.constant(String(deadLetterId)), fc.constant('999999')), { maxLength: 3 });
const invalidNumber = (min: number, max: number) =>
  fc.oneof(hostile, count).filter((v) => !isInt(v, min, max));

const specs = (): Spec[] => [
  {
    name: 'publish',
    arity: 1,
    path: ['publish'],
    positionals: fc
      .oneof(hostile, fc.constantFrom(routedType, 'NotRouted', 'a'.repeat(255), 'a'.repeat(256)))
      .map((t) => [t]),
    options: {
      '--data': json(),
      '--id': hostile,
      '--correlation-id': hostile,
      '--count': count,
      '--key': hostile,
    },
    flags: ['--json'],
    valid: ({ positionals: [type], options: o }) =>
      type === routedType &&
      (o['--key'] === undefined || orderingKeyProblem(o['--key']) === null) &&
      jsonValid(o['--data']) &&
      messageIdValid(o['--id']) &&
      messageIdValid(o['--correlation-id']) &&
      isInt(o['--count'], 1, 10_000_000) &&
      !(o['--id'] && Number(o['--count'] ?? 1) > 1),
  },
  {
    name: 'dlq list',
    arity: 0,
    path: ['dlq', 'list'],
    positionals: fc.constant([]),
    options: { ...filterOptions(), '--limit': count },
    flags: ['--json'],
    valid: (m) => filtersValid(m.options) && isInt(m.options['--limit'], 1, 100_000),
    mustSucceed: true,
  },
  {
    name: 'dlq show',
    arity: 1,
    path: ['dlq', 'show'],
    positionals: fc
      .oneof(hostile, fc.constantFrom(String(deadLetterId), `0${deadLetterId}`, '999999'))
      .map((v) => [v]),
    options: {},
    flags: ['--json'],
    valid: (m) => idsValid(m.positionals, (n) => n === deadLetterId),
    mustSucceed: true,
  },
  {
    name: 'dlq replay',
    arity: 99,
    path: ['dlq', 'replay'],
    positionals: ids(),
    options: { ...filterOptions(), '--dedup-window': fc.oneof(hostile, fc.constantFrom('1h', '7d')) },
    flags: ['--all', '--json'],
    fixed: ['--dry-run'],
    valid: (m) =>
      targetValid(m, (n) => n === deadLetterId) &&
      (m.options['--dedup-window'] === undefined || durationValid(m.options['--dedup-window'])),
  },
  {
    name: 'dlq purge',
    arity: 99,
    path: ['dlq', 'purge'],
    positionals: ids(),
    options: filterOptions(),
    flags: ['--all', '--yes', '--json'],
    fixed: ['--dry-run'],
    valid: (m) => targetValid(m, () => true),
    mustSucceed: true,
  },
  {
    name: 'sagas list',
    arity: 0,
    path: ['sagas', 'list'],
    positionals: fc.constant([]),
    options: {
      '--status': fc.oneof(hostile, fc.constantFrom(...sagaStatuses)),
      '--name': hostile,
      '--limit': count,
    },
    flags: ['--json'],
    valid: ({ options: o }) =>
      (o['--status'] === undefined || sagaStatuses.includes(o['--status'] as never)) &&
      isInt(o['--limit'], 1, 100_000),
    mustSucceed: true,
  },
  {
    name: 'sagas show',
    arity: 1,
    path: ['sagas', 'show'],
    positionals: fc.oneof(hostile, fc.constant(sagaId)).map((v) => [v]),
    options: {},
    flags: ['--json'],
    valid: (m) => m.positionals[0] === sagaId,
    mustSucceed: true,
  },
  {
    name: 'status',
    arity: 0,
    path: ['status'],
    positionals: fc.constant([]),
    options: { '--app': hostile },
    flags: ['--json'],
    valid: (m) => m.options['--app'] === undefined,
    mustSucceed: true,
  },
  {
    name: 'migrate',
    arity: 0,
    path: ['migrate'],
    positionals: fc.constant([]),
    options: { '--app': hostile },
    flags: [],
    valid: (m) => m.options['--app'] === undefined,
    mustSucceed: true,
  },
  {
    name: 'worker',
    arity: 0,
    path: ['worker'],
    positionals: fc.constant([]),
    options: {
      '--app': hostile,
      '--concurrency': count,
      '--prefetch': count,
      '--ordered-partitions': count,
      '--saga-concurrency': count,
      '--shutdown-grace': count,
    },
    flags: [],
    valid: () => false,
    neverStart: fc.oneof(
      invalidNumber(1, 1000).map((v) => `--concurrency=${v}`),
      invalidNumber(1, 65535).map((v) => `--prefetch=${v}`),
      invalidNumber(0, 256).map((v) => `--ordered-partitions=${v}`),
      invalidNumber(0, Number.MAX_SAFE_INTEGER).map((v) => `--shutdown-grace=${v}`),
    ),
  },
  {
    name: 'relay',
    arity: 0,
    path: ['relay'],
    positionals: fc.constant([]),
    options: { '--batch-size': count, '--concurrency': count, '--poll-interval': count },
    flags: [],
    valid: () => false,
    neverStart: fc.oneof(
      invalidNumber(1, 10_000).map((v) => `--batch-size=${v}`),
      invalidNumber(10, Number.MAX_SAFE_INTEGER).map((v) => `--poll-interval=${v}`),
    ),
  },
];

interface Case {
  model: Model;
  argv: string[];
}

/** One argument vector for `spec`: some of its options (either `--opt v` or `--opt=v`), flags, an extra token. */
function cases(spec: Spec): fc.Arbitrary<Case> {
  const optionEntries = Object.entries(spec.options).map(([flag, arb]) =>
    fc.option(fc.tuple(fc.constant(flag), arb, fc.boolean()), { nil: undefined }),
  );
  return fc
    .record({
      positionals: spec.positionals,
      options: fc.tuple(...optionEntries),
      flags: fc.subarray(spec.flags),
      extra:
        spec.path[0] === 'dlq' && ['replay', 'purge'].includes(spec.path[1]!)
          ? fc.constant([])
          : fc.array(hostile, { maxLength: 1 }),
      first: spec.neverStart ?? fc.constant(undefined),
    })
    .map(({ positionals, options, flags, extra, first }) => {
      const chosen = options.filter((o): o is [string, string, boolean] => o !== undefined);
      const argv = [
        ...spec.path,
        ...(first === undefined ? [] : [first]),
        ...positionals,
        ...chosen.flatMap(([flag, value, joined]) => (joined ? [`${flag}=${value}`] : [flag, value])),
        ...flags,
        ...(spec.fixed ?? []),
        ...extra,
      ];
      const model: Model = {
        positionals: [...positionals, ...extra],
        options: Object.fromEntries(chosen.map(([flag, value]) => [flag, value])),
        flags,
      };
      // A positional that looks like an option is parsed as one: the model no longer describes argv.
      const plain = [...positionals, ...extra].every((p) => !p.startsWith('-'));
      return {
        model: plain ? model : { ...model, positionals: [...model.positionals, '\0not-plain'] },
        argv,
      };
    });
}

const isHelp = (c: Case, stdout: string) =>
  stdout.startsWith('Usage: dw') && c.argv.some((a) => a === '--help' || /^-[a-zA-Z]*h/.test(a));

function describeCase(c: Case): string {
  return JSON.stringify(c.argv.map((a) => (a.length > 80 ? `${a.slice(0, 40)}…(${a.length})` : a)));
}

/** The shared property: exit 0 only for valid input, exit 1 with exactly one `dw:` line, nothing else. */
function checkOutcome(spec: Spec, c: Case, r: { code: number | null; stdout: string; stderr: string }) {
  const valid = c.model.positionals.length <= spec.arity && spec.valid(c.model);
  const what = `${spec.name} ${describeCase(c)} → exit ${r.code}, stderr ${JSON.stringify(r.stderr.slice(0, 300))}`;
  expect([0, 1], what).toContain(r.code);
  expect(r.stderr, what).not.toMatch(/^\s+at /m);
  if (r.code === 0) {
    if (isHelp(c, r.stdout)) return;
    expect(valid, `exit 0 for invalid input: ${what}`).toBe(true);
    if (c.argv.includes('--json')) expect(() => JSON.parse(r.stdout), what).not.toThrow();
    else expect(r.stdout, what).not.toMatch(terminalControl);
    return;
  }
  if (spec.mustSucceed) expect(valid, `exit 1 for valid input: ${what}`).toBe(false);
  // `dlq replay` of ids that do not exist: the documented summary on stdout and a line per id on stderr.
  const notFound = spec.name === 'dlq replay' && /^(dead letter \d+: .*\n)+$/.test(r.stderr);
  if (notFound) return;
  expect(r.stderr, what).toMatch(/^dw: [^\n]*\n$/);
  expect(r.stderr.length, what).toBeLessThan(3000);
  expect(r.stdout, what).toBe('');
}

/** Runs the built CLI, killing it if it does not end: a hang fails the property instead of the file. */
function runBounded(argv: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [dwBin, ...argv], {
      env: cliEnv(env.config),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: signal ? -1 : code, stdout, stderr: signal ? `killed (${signal}) ${stderr}` : stderr });
    });
  });
}

/** The commander parser in process: the action is never run. */
async function parseOnly(
  argv: string[],
): Promise<{ accepted: boolean; code: number | null; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const program = createProgram({
    writeOut: (s) => {
      stdout += s;
    },
    writeErr: (s) => {
      stderr += s;
    },
  });
  const accepted = new Error('accepted');
  program.hook('preAction', () => {
    throw accepted;
  });
  try {
    await program.parseAsync(argv, { from: 'user' });
    return { accepted: false, code: 0, stdout, stderr };
  } catch (error) {
    if (error === accepted) return { accepted: true, code: 0, stdout, stderr };
    const report = reportError(error);
    return { accepted: false, code: report.exitCode, stdout, stderr: stderr + report.stderr };
  }
}

beforeAll(async () => {
  env = await createTestEnv();
  dir = mkdtempSync(join(tmpdir(), 'dw-cli-args-'));
  validFile = join(dir, 'data.json');
  writeFileSync(validFile, '{"from":"file"}');
  hugeFile = join(dir, 'huge.json');
  writeFileSync(hugeFile, '');
  truncateSync(hugeFile, MAX_DATA_FILE_BYTES + 1024); // sparse: no disk used
  deadLetterId = await storeDeadLetter(env.knex, {
    source: 'amqp',
    queue: `${env.config.exchange}.test`,
    messageId: 'm-1\x1b[2J',
    type: 'T\u202e',
    reason: 'handler-failed',
    error: { message: 'boom\r' },
    attempts: 1,
    payload: { a: '\x1b[31m' },
  });
  await insertSaga(env.knex, { id: sagaId, name: 'n\x1b[2J', state: {}, correlationId: 'c' });
  // `dw publish Routed` reaches a queue (deleted with the exchange's queues at teardown).
  const connection = await amqp.connect(urls.amqp);
  const channel = await connection.createChannel();
  await channel.assertExchange(env.config.exchange, 'topic', { durable: true });
  await channel.assertQueue(`${env.config.exchange}.test`, { durable: false });
  await channel.bindQueue(`${env.config.exchange}.test`, env.config.exchange, routedType);
  // `dw publish Routed --key K` goes to the ordered exchange: routed there too.
  await channel.assertExchange(orderedExchangeName(env.config.exchange), 'topic', { durable: true });
  await channel.bindQueue(
    `${env.config.exchange}.test`,
    orderedExchangeName(env.config.exchange),
    routedType,
  );
  await connection.close();
});

afterAll(async () => {
  if (dir) rmSync(dir, { recursive: true, force: true });
  await env?.teardown();
});

describe('dw: hostile arguments', () => {
  it('the parser answers every vector with acceptance or one dw: line (in process, many runs)', async () => {
    const all = specs();
    const byName = fc.constantFrom(...all).chain((spec) => cases(spec).map((c) => ({ spec, c })));
    await fc.assert(
      fc.asyncProperty(byName, async ({ spec, c }) => {
        const r = await parseOnly(c.argv);
        const what = `${spec.name} ${describeCase(c)} → ${JSON.stringify(r)}`.slice(0, 2000);
        expect(r.stderr, what).not.toMatch(/^\s+at /m);
        if (r.accepted || r.code === 0) {
          if (!r.accepted && isHelp(c, r.stdout)) return;
          expect(r.accepted, what).toBe(true);
          // Whatever the parser accepted passed its own checks: numbers, reasons, dates, durations.
          const o = c.model.options;
          if (!c.model.positionals.includes('\0not-plain')) {
            for (const flag of ['--limit', '--batch-size', '--concurrency', '--prefetch', '--count'])
              expect(o[flag] === undefined || /^\d+$/.test(o[flag]!), what).toBe(true);
            expect(filtersValid(o), what).toBe(true);
            if (spec.name === 'publish')
              expect(jsonValid(o['--data']) && messageIdValid(o['--id']), what).toBe(true);
          }
          return;
        }
        expect(r.code, what).toBe(1);
        expect(r.stderr, what).toMatch(/^dw: [^\n]*\n$/);
        expect(r.stderr.length, what).toBeLessThan(3000);
      }),
      { seed, numRuns: 1000 },
    );
  });

  const names = [
    'publish',
    'dlq list',
    'dlq show',
    'dlq replay',
    'dlq purge',
    'sagas list',
    'sagas show',
    'status',
    'migrate',
    'worker',
    'relay',
  ];
  it('covers every command', () => {
    expect(specs().map((s) => s.name)).toEqual(names);
  });
  for (const name of names) {
    it(`${name}: the built CLI exits 0 (valid input) or 1 with one dw: line`, async () => {
      // Built here, not at import: the arbitraries hold the ids seeded in beforeAll.
      const spec = specs().find((s) => s.name === name)!;
      await fc.assert(
        fc.asyncProperty(cases(spec), async (c) => {
          checkOutcome(spec, c, await runBounded(c.argv));
        }),
        { seed, numRuns: 6, endOnFailure: true },
      );
    });
  }
});
