import amqp from 'amqplib';
import type { Command } from 'commander';
import {
  appQueueNames,
  bullmqDestinations,
  bullQueueStatus,
  deadLetterQueues,
  deadLetterStatus,
  outboxStatus,
  rabbitQueueStatus,
  redisStatus,
  type Status,
  sagaCountsByStatus,
  sagaVersionStatus,
} from '../ops/status.js';
import { loadApp } from '../shared/app.js';
import { redactUrl } from '../shared/config.js';
import { workQueueName } from '../shared/defaults.js';
import { ServiceUnavailableError } from '../shared/errors.js';
import { assertRedisReachable, type RedisPersistence } from '../shared/redis.js';
import { sagaQueue } from '../shared/saga/jobs.js';
import { config, withDatabase } from './infra.js';
import { printJson } from './parse.js';
import { printable } from './render.js';

export function registerStatus(program: Command): void {
  program
    .command('status')
    .description(
      'outbox backlog and oldest age, dead-letter count, sagas by status, queue depths, Redis persistence and losses',
    )
    .option('--app <module>', 'app whose work and retry queues to show (default: DW_APP)')
    .option('--json', 'print one JSON object')
    .action(async (opts: { app?: string; json?: boolean }) => {
      const cfg = config();
      const app = await loadApp(opts.app ?? cfg.app);
      const workQueue = workQueueName(cfg.exchange, app.name);
      const { outbox, deadLetters, sagas, sagaVersions, bullNames, dlqQueues } = await withDatabase(
        cfg,
        async (knex) => ({
          outbox: await outboxStatus(knex),
          deadLetters: await deadLetterStatus(knex),
          sagas: await sagaCountsByStatus(knex),
          sagaVersions: await sagaVersionStatus(knex, app),
          bullNames: await bullmqDestinations(knex),
          dlqQueues: await deadLetterQueues(knex),
        }),
      );
      const rabbitNames = [...new Set([...appQueueNames(app, workQueue), ...dlqQueues])];
      let connection: amqp.ChannelModel;
      try {
        connection = await amqp.connect(cfg.amqpUrl, { clientProperties: { connection_name: 'dw status' } });
      } catch (error) {
        throw new ServiceUnavailableError('RabbitMQ', redactUrl(cfg.amqpUrl), error);
      }
      let rabbitmq: Status['queues']['rabbitmq'];
      try {
        rabbitmq = await rabbitQueueStatus(connection, rabbitNames);
      } finally {
        await connection.close().catch(() => {});
      }
      await assertRedisReachable(cfg);
      const bullmq = await bullQueueStatus(cfg, cfg.bullmqPrefix, [...new Set([...bullNames, sagaQueue])]);
      const redis = await withDatabase(cfg, (knex) => redisStatus(knex, cfg, cfg.bullmqPrefix));
      const status: Status = {
        outbox,
        deadLetters,
        sagas,
        sagaVersions,
        queues: { rabbitmq, bullmq },
        redis,
      };
      if (opts.json) printJson(status);
      else printStatus(status);
    });
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows
    .map(
      (row) =>
        `  ${row
          .map((c, i) => c.padEnd(widths[i]!))
          .join('  ')
          .trimEnd()}`,
    )
    .join('\n');
}

function printStatus(s: Status): void {
  const age = s.outbox.oldestPendingAgeSeconds === null ? '-' : `${s.outbox.oldestPendingAgeSeconds}s`;
  const reasons = Object.entries(s.deadLetters.byReason)
    .map(([reason, n]) => `${reason} ${n}`)
    .join(', ');
  const sagas = Object.entries(s.sagas)
    .map(([status, n]) => `${status} ${n}`)
    .join(', ');
  const lines = [
    `outbox:        ${s.outbox.pending} pending, oldest ${age}, ${s.outbox.failing} failing`,
    `dead letters:  ${s.deadLetters.total}${reasons ? ` (${reasons})` : ''}`,
    `sagas:         ${sagas || 'none'}`,
    ...sagaVersionLines(s),
    ...redisLines(s),
    '',
    'RabbitMQ queues',
    table([
      ['QUEUE', 'MESSAGES', 'CONSUMERS'],
      ...s.queues.rabbitmq.map((q) =>
        q.exists ? [q.name, String(q.messages), String(q.consumers)] : [q.name, '(absent)', '-'],
      ),
    ]),
    '',
    'BullMQ queues',
    table([
      ['QUEUE', 'WAITING', 'ACTIVE', 'DELAYED', 'FAILED'],
      ...s.queues.bullmq.map((q) => [
        q.name,
        String(q.waiting),
        String(q.active),
        String(q.delayed),
        String(q.failed),
      ]),
    ]),
  ];
  // Saga names and queue names come from the database and the broker: escape what a terminal would act on.
  process.stdout.write(`${printable(lines.join('\n'), { multiline: true })}\n`);
}

/** One line per saga version: in-flight count, and whether this app's workers serve it. */
function sagaVersionLines(s: Status): string[] {
  const versions = s.sagaVersions ?? [];
  if (versions.length === 0) return [];
  const width = Math.max(...versions.map((v) => `${v.name} v${v.version}`.length));
  return [
    'saga versions:',
    ...versions.map((v) => {
      const what = !v.inApp
        ? v.inFlight > 0
          ? `not in this app: its workers leave these instances untouched${v.lastUnservedAt ? ` (last ${v.lastUnservedAt})` : ''}`
          : 'not in this app; nothing in flight'
        : v.newest
          ? 'newest: new instances start on it'
          : v.inFlight > 0
            ? 'older version: kept until its instances finish'
            : 'older version: nothing in flight, can be removed from the app';
      return `  ${`${v.name} v${v.version}`.padEnd(width)}  ${String(v.inFlight).padStart(5)} in flight  ${what}`;
    }),
  ];
}

function redisLines(s: Status): string[] {
  const r = s.redis;
  if (!r) return [];
  const setting = (v: string | null) => v ?? '(hidden)';
  const last = r.lastLoss
    ? `last ${r.lastLoss.detectedAt}, ${r.lastLoss.rowsRedelivered} rows re-delivered`
    : 'none found';
  const settings = (p: RedisPersistence) =>
    `appendonly ${setting(p.appendonly)}, appendfsync ${setting(p.appendfsync)}, save "${setting(p.save)}", maxmemory-policy ${setting(p.maxmemoryPolicy)}`;
  // A cluster: one line per master (each persists its own slots).
  const nodes = r.nodes;
  const settingLines =
    nodes.length > 1
      ? [
          `redis:         ${r.mode}, ${nodes.length} masters`,
          ...nodes.map((n) => `  ${n.node}: ${settings(n)}`),
        ]
      : [`redis:         ${r.mode !== 'single' ? `${r.mode}, ` : ''}${settings(r)}`];
  return [
    ...settingLines,
    ...r.risks.map((risk) => `  risk: ${risk}`),
    `redis losses:  ${r.losses} (${last})${r.lossPending ? '; a loss is being repaired now' : ''}`,
  ];
}
