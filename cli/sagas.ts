import type { Command } from 'commander';
import { formatTimeline, sagaView } from '../ops/saga-view.js';
import { cliDefaults } from '../shared/defaults.js';
import { SagaNotFoundError, UsageError } from '../shared/errors.js';
import { getSaga, listSagas, listStepRows, type SagaStatus, sagaStatuses } from '../shared/saga/store.js';
import { config, withDatabase } from './infra.js';
import { integer, printJson } from './parse.js';
import { printable, printableStrings, shown } from './render.js';

/** `dw sagas list | show` (docs/contracts.md, "CLI"). */
export function registerSagas(program: Command): void {
  const sagas = program.command('sagas').description('inspect saga instances and their step logs');

  sagas
    .command('list')
    .description('saga instances, newest first')
    .option('--status <status>', `only sagas in this status (${sagaStatuses.join(', ')})`)
    .option('--name <name>', 'only sagas of this definition, e.g. book-trip')
    .option(
      '--version <n>',
      'only sagas started on this definition version (defineSaga(name, { version }))',
      integer(1, 2_147_483_647),
    )
    .option('--limit <n>', 'at most this many', integer(1, cliDefaults.maxListLimit), cliDefaults.listLimit)
    .option('--json', 'print a JSON array of sagas (without steps)')
    .action(
      async (opts: { status?: string; name?: string; version?: number; limit: number; json?: boolean }) => {
        if (opts.status !== undefined && !sagaStatuses.includes(opts.status as SagaStatus)) {
          throw new UsageError(
            `--status must be one of ${sagaStatuses.join(', ')}; got ${shown(opts.status)}`,
          );
        }
        const rows = await withDatabase(config(), (knex) =>
          listSagas(knex, {
            status: opts.status as SagaStatus | undefined,
            name: opts.name,
            version: opts.version,
            limit: opts.limit,
          }),
        );
        const views = rows.map((row) => sagaView(row));
        if (opts.json) return printJson(views);
        const shownViews = views.map((v) => printableStrings(v));
        if (views.length === 0) {
          process.stdout.write('no sagas\n');
          return;
        }
        const idWidth = Math.max(2, ...shownViews.map((v) => v.id.length));
        const nameWidth = Math.max(4, ...shownViews.map((v) => v.name.length));
        process.stdout.write(
          `${'ID'.padEnd(idWidth)}  ${'NAME'.padEnd(nameWidth)}  STATUS        STARTED                   VERSION  LAST ERROR\n`,
        );
        for (const v of shownViews) {
          process.stdout.write(
            `${v.id.padEnd(idWidth)}  ${v.name.padEnd(nameWidth)}  ${v.status.padEnd(12)}  ${v.createdAt.padEnd(24)}  ${String(v.version).padEnd(7)}  ${printable(v.lastError?.message.slice(0, 80) ?? '')}\n`,
          );
        }
      },
    );

  sagas
    .command('show')
    .description('one saga with its step log (a timeline; --json for the JSON document)')
    .argument('<id>', 'saga id')
    .option('--json', 'print the saga as JSON, with its steps in the order they happened')
    .action(async (id: string, opts: { json?: boolean }) => {
      const view = await withDatabase(config(), async (knex) => {
        const row = await getSaga(knex, id);
        return row ? sagaView(row, await listStepRows(knex, id)) : undefined;
      });
      if (!view) throw new SagaNotFoundError(`no saga with id ${shown(id)} (dw sagas list shows the ids)`);
      if (opts.json) printJson(view);
      else process.stdout.write(`${formatTimeline(printableStrings(view))}\n`);
    });
}
