import amqp, { type ChannelModel, type ConfirmChannel } from 'amqplib';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { type ReplayResult, replayDeadLetter } from '../ops/dead-letter-replay.js';
import { loadApp } from '../shared/app.js';
import { redactUrl } from '../shared/config.js';
import {
  countDeadLetters,
  type DeadLetterFilter,
  type DeadLetterJson,
  type DeadLetterReason,
  deadLetterIds,
  deadLetterReasons,
  deadLetterToJson,
  deleteDeadLetters,
  getDeadLetter,
  listDeadLetters,
} from '../shared/dead-letters.js';
import { cliDefaults, formatDuration, workerDefaults } from '../shared/defaults.js';
import { ServiceUnavailableError, UsageError } from '../shared/errors.js';
import { config, withDatabase } from './infra.js';
import { integer, printJson } from './parse.js';
import { printable, shown } from './render.js';

interface FilterOptions {
  type?: string;
  reason?: DeadLetterReason;
  queue?: string;
  since?: Date;
}

const DURATION = /^(\d+)(ms|s|m|h|d)$/;
const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
// A hundred years: longer ones are typos, and `1e400d` would not even be a number of milliseconds.
const MAX_DURATION_MS = 36_500 * UNIT_MS.d;

/** `30m`, `1h`, `7d` in ms. */
export function durationArgument(value: string): number {
  const match = DURATION.exec(value);
  if (!match)
    throw new InvalidArgumentError(`expected a duration like 30s, 15m, 1h or 7d, got ${shown(value)}`);
  const ms = Number(match[1]) * UNIT_MS[match[2] as keyof typeof UNIT_MS];
  if (!(ms <= MAX_DURATION_MS))
    throw new InvalidArgumentError(`expected a duration of at most 36500d, got ${shown(value)}`);
  return ms;
}

/** An ISO date, or a duration meaning "that long ago". */
function sinceArgument(value: string): Date {
  if (DURATION.test(value)) return new Date(Date.now() - durationArgument(value));
  const time = /^\d{4}-\d{2}-\d{2}/.test(value) ? Date.parse(value) : Number.NaN;
  // Year 0 and earlier is a date JavaScript knows and PostgreSQL reads differently (1 BC).
  if (Number.isNaN(time) || time < Date.UTC(1, 0, 1)) {
    throw new InvalidArgumentError(
      `expected an ISO date (2024-05-01T12:00Z) or a duration (1h), got ${shown(value)}`,
    );
  }
  return new Date(time);
}

function reasonArgument(value: string): DeadLetterReason {
  if (!(deadLetterReasons as readonly string[]).includes(value)) {
    throw new InvalidArgumentError(`expected one of ${deadLetterReasons.join(', ')}, got ${shown(value)}`);
  }
  return value as DeadLetterReason;
}

function parseIds(values: string[]): number[] {
  return values.map((value) => {
    if (!/^\d{1,15}$/.test(value) || Number(value) < 1) {
      throw new UsageError(
        `dead-letter ids are positive whole numbers (see \`dw dlq list\`), got ${shown(value)}`,
      );
    }
    return Number(value);
  });
}

function addFilters(command: Command): Command {
  return command
    .option('--type <type>', 'only this message type')
    .option('--reason <reason>', `only this reason (${deadLetterReasons.join(', ')})`, reasonArgument)
    .option('--queue <queue>', 'only entries of this queue')
    .option(
      '--since <when>',
      'only entries that failed since an ISO date or for a duration (1h, 30m)',
      sinceArgument,
    );
}

function filterOf(opts: FilterOptions, ids?: number[]): DeadLetterFilter {
  return { type: opts.type, reason: opts.reason, queue: opts.queue, since: opts.since, ids };
}

function hasFilters(opts: FilterOptions): boolean {
  return Boolean(opts.type || opts.reason || opts.queue || opts.since);
}

/** Ids given, or --all: exactly one of the two; filters only go with --all. */
function targetOf(
  ids: string[],
  opts: FilterOptions & { all?: boolean },
  verb: string,
): number[] | undefined {
  if (ids.length > 0 && opts.all) throw new UsageError(`${verb}: give dead-letter ids or --all, not both`);
  if (ids.length === 0 && !opts.all)
    throw new UsageError(`${verb}: give dead-letter ids, or --all (with filters)`);
  if (ids.length > 0 && hasFilters(opts)) {
    throw new UsageError(`${verb}: --type, --reason, --queue and --since go with --all, not with ids`);
  }
  return opts.all ? undefined : parseIds(ids);
}

function oneLine(text: string, max: number): string {
  const line = text.replace(/\s+/g, ' ').trim();
  return printable(line.length > max ? `${line.slice(0, max - 1)}…` : line);
}

function printTable(rows: string[][]): void {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  for (const row of rows) {
    process.stdout.write(
      `${row
        .map((cell, i) => cell.padEnd(widths[i]!))
        .join('  ')
        .trimEnd()}\n`,
    );
  }
}

function printList(entries: DeadLetterJson[]): void {
  if (entries.length === 0) {
    process.stdout.write('no dead letters\n');
    return;
  }
  printTable([
    ['ID', 'LAST FAILED', 'REASON', 'TYPE', 'ATTEMPTS', 'QUEUE', 'ERROR'],
    ...entries.map((e) => [
      String(e.id),
      e.lastFailedAt,
      e.reason,
      printable(e.type ?? '-'),
      String(e.attempts),
      printable(e.queue),
      oneLine(e.error.message ?? '', 80),
    ]),
  ]);
}

function printEntry(e: DeadLetterJson): void {
  const lines = [
    `id:              ${e.id}`,
    `source:          ${e.source}`,
    `queue:           ${printable(e.queue)}`,
    `message id:      ${printable(e.messageId)}`,
    `type:            ${printable(e.type ?? '-')}`,
    `reason:          ${e.reason}`,
    `attempts:        ${e.attempts}`,
    `first failed at: ${e.firstFailedAt}`,
    `last failed at:  ${e.lastFailedAt}`,
  ];
  if (e.sagaId)
    lines.push(
      `saga:            ${printable(e.sagaId)} step ${printable(e.step ?? '-')} (${e.phase ?? '-'})`,
    );
  lines.push(`error:           ${printable(e.error.message ?? '')}`);
  if (e.error.stack) lines.push(indent(e.error.stack));
  lines.push(
    'payload:',
    indent(typeof e.payload === 'string' ? e.payload : JSON.stringify(e.payload, null, 2)),
  );
  lines.push('headers:', indent(JSON.stringify(e.headers, null, 2)));
  process.stdout.write(`${lines.join('\n')}\n`);
}

/** A multi-line block (stack, payload), indented; a CR or ESC in it is shown, not obeyed. */
function indent(text: string): string {
  return printable(text, { multiline: true }).replace(/^/gm, '  ');
}

/** Opens the AMQP connection only when a replay needs it (a dry run does not). */
function lazyChannel(url: string): { get(): Promise<ConfirmChannel>; close(): Promise<void> } {
  let connection: Promise<ChannelModel> | undefined;
  let channel: Promise<ConfirmChannel> | undefined;
  return {
    get() {
      connection ??= amqp
        .connect(url, { clientProperties: { connection_name: 'dw dlq replay' } })
        .catch((error: unknown) => {
          throw new ServiceUnavailableError('RabbitMQ', redactUrl(url), error);
        });
      channel ??= connection.then(async (c) => {
        const ch = await c.createConfirmChannel();
        ch.on('error', () => {});
        return ch;
      });
      return channel;
    },
    async close() {
      const c = await connection?.catch(() => undefined);
      await c?.close().catch(() => {});
    },
  };
}

export function registerDlq(program: Command): void {
  const dlq = program
    .command('dlq')
    .description('inspect, replay and purge the dead letters (the store of record)');

  addFilters(
    dlq
      .command('list')
      .description('dead letters, newest first')
      .option('--limit <n>', 'at most this many', integer(1, cliDefaults.maxListLimit), cliDefaults.listLimit)
      .option('--json', 'print a JSON array'),
  ).action(async (opts: FilterOptions & { limit: number; json?: boolean }) => {
    const rows = await withDatabase(config(), (knex) => listDeadLetters(knex, filterOf(opts), opts.limit));
    const entries = rows.map((row) => deadLetterToJson(row));
    if (opts.json) printJson(entries);
    else printList(entries);
  });

  dlq
    .command('show')
    .description('one dead letter, with payload, headers and error')
    .argument('<id>', 'dead-letter id (see `dw dlq list`)')
    .option('--json', 'print a JSON object')
    .action(async (id: string, opts: { json?: boolean }) => {
      const [entryId] = parseIds([id]);
      const row = await withDatabase(config(), (knex) => getDeadLetter(knex, entryId!));
      if (!row) throw new UsageError(`no dead letter with id ${id} (see \`dw dlq list\`)`);
      const entry = deadLetterToJson(row, { stack: true });
      if (opts.json) printJson(entry);
      else printEntry(entry);
    });

  addFilters(
    dlq
      .command('replay')
      .description(
        'send dead letters back to their queue (attempts start afresh, message id kept); prints how many',
      )
      .argument('[ids...]', 'dead-letter ids')
      .option('--all', 'every dead letter matching the filters')
      .option('--dry-run', 'show what would be replayed, change nothing')
      .addOption(
        new Option(
          '--dedup-window <duration>',
          "the workers' deduplication window, to warn about older entries",
        )
          .argParser(durationArgument)
          .default(workerDefaults.dedupWindowMs, formatDuration(workerDefaults.dedupWindowMs)),
      )
      .option('--app <module>', 'app whose sagas replayed compensations belong to (default: DW_APP)')
      .option('--json', 'print a JSON summary'),
  ).action(
    async (
      ids: string[],
      opts: FilterOptions & {
        all?: boolean;
        dryRun?: boolean;
        dedupWindow: number;
        json?: boolean;
        app?: string;
      },
    ) => {
      const explicit = targetOf(ids, opts, 'replay');
      const cfg = config();
      const channel = lazyChannel(cfg.amqpUrl);
      // Loaded only when a saga entry is replayed: it plans which compensations to resume.
      let app: ReturnType<typeof loadApp> | undefined;
      const sagaDefinition = async (name: string, version: number) => {
        app ??= loadApp(opts.app ?? cfg.app);
        return (await app).sagaDefinition(name, version);
      };
      try {
        const results = await withDatabase(cfg, async (knex) => {
          const targets = explicit ?? (await deadLetterIds(knex, filterOf(opts)));
          const out: ReplayResult[] = [];
          for (const [index, id] of targets.entries()) {
            const result = await replayDeadLetter(knex, channel.get, id, {
              dryRun: Boolean(opts.dryRun),
              dedupWindowMs: opts.dedupWindow,
              sagaDefinition,
            });
            out.push(result);
            reportOne(result, opts.dedupWindow);
            if (targets.length >= 100 && (index + 1) % 100 === 0) {
              process.stderr.write(`dlq replay: ${index + 1}/${targets.length}\n`);
            }
          }
          return out;
        });
        summarize(results, Boolean(opts.dryRun), Boolean(opts.json));
      } finally {
        await channel.close();
      }
    },
  );

  addFilters(
    dlq
      .command('purge')
      .description('delete dead letters for good; prints how many')
      .argument('[ids...]', 'dead-letter ids')
      .option('--all', 'every dead letter matching the filters (needs --yes)')
      .option('--yes', 'confirm purging with --all')
      .option('--dry-run', 'count what would be purged, delete nothing')
      .option('--json', 'print {"purged": n} (or {"wouldPurge": n})'),
  ).action(
    async (
      ids: string[],
      opts: FilterOptions & { all?: boolean; yes?: boolean; dryRun?: boolean; json?: boolean },
    ) => {
      const explicit = targetOf(ids, opts, 'purge');
      if (opts.all && !opts.yes && !opts.dryRun) {
        throw new UsageError('purge --all deletes every matching dead letter for good; add --yes to confirm');
      }
      const filter = filterOf(opts, explicit);
      const n = await withDatabase(config(), (knex) =>
        opts.dryRun ? countDeadLetters(knex, filter) : deleteDeadLetters(knex, filter),
      );
      if (opts.json) printJson(opts.dryRun ? { wouldPurge: n } : { purged: n });
      else
        process.stdout.write(
          opts.dryRun ? `would purge ${n} dead letter(s)\n` : `purged ${n} dead letter(s)\n`,
        );
      if (explicit && n < explicit.length && !opts.dryRun) {
        process.stderr.write(`dlq purge: ${explicit.length - n} of the given ids did not exist\n`);
      }
    },
  );
}

function reportOne(result: ReplayResult, dedupWindowMs: number): void {
  const what = `dead letter ${result.id}${result.messageId ? ` (message ${printable(result.messageId)})` : ''}`;
  if (result.beyondDedupWindow && (result.outcome === 'replayed' || result.outcome === 'would-replay')) {
    process.stderr.write(
      `warning: ${what} is older than the deduplication window (${Math.round(dedupWindowMs / 3_600_000)} h): if it was processed already, the duplicate can no longer be detected\n`,
    );
  }
  if (result.outcome === 'would-replay')
    process.stdout.write(`would replay ${what} to ${printable(result.queue ?? '')}\n`);
  else if (result.outcome !== 'replayed')
    process.stderr.write(`${what}: ${printable(result.detail ?? result.outcome)}\n`);
}

function summarize(results: ReplayResult[], dryRun: boolean, json: boolean): void {
  const count = (outcome: ReplayResult['outcome']) => results.filter((r) => r.outcome === outcome).length;
  const summary = {
    replayed: count('replayed'),
    wouldReplay: count('would-replay'),
    alreadyProcessed: count('already-processed'),
    notReplayable: count('not-replayable'),
    notFound: count('not-found'),
    results,
  };
  if (json) {
    printJson(summary);
  } else {
    const parts = [dryRun ? `would replay ${summary.wouldReplay}` : `replayed ${summary.replayed}`];
    if (summary.alreadyProcessed) parts.push(`skipped ${summary.alreadyProcessed} (already processed)`);
    if (summary.notReplayable) parts.push(`skipped ${summary.notReplayable} (not replayable)`);
    if (summary.notFound) parts.push(`${summary.notFound} not found`);
    process.stdout.write(`${parts.join(', ')}\n`);
  }
  if (summary.notFound > 0) process.exitCode = 1;
}
