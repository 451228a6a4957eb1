import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { app } from '../../examples/app/index.js';
import { storeDeadLetter } from '../../shared/dead-letters.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { type CliResult as DwResult, cliEnv as dwEnv, runCli as runDw } from '../support/cli.js';
import { count, createTestEnv, type TestEnv } from '../support/services.js';

let env: TestEnv;
let worker: Worker;
let dw: (...args: string[]) => Promise<DwResult>;

beforeAll(async () => {
  env = await createTestEnv(app.migrations);
  worker = await Worker.start({ app, config: env.config, knex: env.knex, housekeepingIntervalMs: 0 });
  dw = (...args) => runDw(args, dwEnv(env.config));
});

afterAll(async () => {
  await worker?.stop(5000);
  await env?.teardown();
});

const entryOf = (messageId: string) => env.knex('dw_dead_letters').where({ message_id: messageId }).first();
const json = <T>(result: DwResult): T => {
  expect(result.stderr).toBe('');
  expect(result.code).toBe(0);
  return JSON.parse(result.stdout) as T;
};

/** One line on stderr, exit 1, no stack trace. */
function expectUsageError(result: DwResult, pattern: RegExp): void {
  expect(result.code).toBe(1);
  expect(result.stdout).toBe('');
  expect(result.stderr).not.toMatch(/^\s+at /m);
  expect(result.stderr.split('\n')[0]).toMatch(pattern);
}

describe('dw dlq', () => {
  beforeAll(async () => {
    await env.knex('invoice_outage').insert({});
    await publishRaw(env.config.exchange, [
      { routingKey: 'JoinMeeting', body: Buffer.from('not json'), properties: { messageId: 'm-json' } },
      { routingKey: 'JoinMeeting', body: { userId: 'u1' }, properties: { messageId: 'm-payload' } },
      { routingKey: 'SendInvoice', body: { invoiceId: 'inv-9' }, properties: { messageId: 'm-invoice' } },
    ]);
    await waitUntil(async () => (await count(env.knex, 'dw_dead_letters')) === 3, 'three dead letters', {
      timeoutMs: 45_000,
    });
  });

  it('lists newest first, with filters, as a JSON array', async () => {
    const all = json<Array<Record<string, unknown>>>(await dw('dlq', 'list', '--json'));
    expect(all.map((e) => e.messageId)).toEqual(['m-invoice', 'm-payload', 'm-json']);
    expect(all[0]).toMatchObject({
      source: 'amqp',
      queue: `${env.config.exchange}.example`,
      type: 'SendInvoice',
      reason: 'handler-failed',
      attempts: 5,
      payload: { invoiceId: 'inv-9' },
    });
    for (const key of ['id', 'error', 'firstFailedAt', 'lastFailedAt', 'headers'])
      expect(all[0]).toHaveProperty(key);
    expect(all[2]).toMatchObject({ reason: 'invalid-json', payload: 'not json' });

    const [byReason, byTypeSince, future, limited, table] = await Promise.all([
      dw('dlq', 'list', '--reason', 'invalid-payload', '--json'),
      dw('dlq', 'list', '--type', 'SendInvoice', '--since', '1h', '--json'),
      dw('dlq', 'list', '--since', '2999-01-01', '--json'),
      dw('dlq', 'list', '--limit', '2', '--json'),
      dw('dlq', 'list'),
    ]);
    expect(json<unknown[]>(byReason)).toHaveLength(1);
    expect(json<unknown[]>(byTypeSince)).toHaveLength(1);
    expect(json<unknown[]>(future)).toEqual([]);
    expect(json<unknown[]>(limited)).toHaveLength(2);
    expect(table.code).toBe(0);
    expect(table.stdout.split('\n')[0]).toMatch(/^ID\s+LAST FAILED\s+REASON/);
    expect(table.stdout).toContain('invalid-json');
  });

  it('shows one entry with payload, headers and the error with its stack', async () => {
    const { id } = await entryOf('m-invoice');
    const shown = json<{ error: { message: string; stack?: string }; payload: unknown }>(
      await dw('dlq', 'show', String(id), '--json'),
    );
    expect(shown.error.message).toContain('the invoicing service is down');
    expect(shown.error.stack).toContain('InvoiceServiceDownError');
    const human = await dw('dlq', 'show', String(id));
    expect(human.stdout).toContain('reason:          handler-failed');
    expect(human.stdout).toContain('"invoiceId": "inv-9"');
  });

  it('replays after the cause is fixed: handled once, entry gone, message id kept', async () => {
    const { id } = await entryOf('m-invoice');
    const dry = await dw('dlq', 'replay', String(id), '--dry-run');
    expect(dry.stdout).toContain('would replay 1');
    expect(await entryOf('m-invoice')).toBeDefined();

    await env.knex('invoice_outage').delete();
    // As if it had been in a crash loop: the replay starts its delivery count afresh.
    const queue = `${env.config.exchange}.example`;
    await env.knex('dw_delivery_counts').insert({ consumer: queue, message_id: 'm-invoice', count: 5 });
    const replay = await dw('dlq', 'replay', String(id));
    expect(replay).toMatchObject({ code: 0, stdout: 'replayed 1\n' });
    expect(await entryOf('m-invoice')).toBeUndefined();
    expect(await count(env.knex, 'dw_delivery_counts', { message_id: 'm-invoice' })).toBe(0);
    await waitUntil(() => count(env.knex, 'invoices_sent', { invoice_id: 'inv-9' }), 'the invoice');
    expect(await env.knex('dw_inbox').where({ message_id: 'm-invoice' }).first()).toBeDefined();

    // The same message stored again as a dead letter (say, a second copy failed): the inbox holds
    // its id, so replay reports it and leaves it.
    const again = await storeDeadLetter(env.knex, {
      source: 'amqp',
      queue: `${env.config.exchange}.example`,
      messageId: 'm-invoice',
      type: 'SendInvoice',
      reason: 'handler-failed',
      error: { message: 'copy' },
      attempts: 5,
      payload: { invoiceId: 'inv-9' },
    });
    const skipped = await dw('dlq', 'replay', String(again), '--json');
    expect(skipped.code).toBe(0);
    const summary = JSON.parse(skipped.stdout);
    expect(summary).toMatchObject({ replayed: 0, alreadyProcessed: 1 });
    expect(skipped.stderr).toContain('already processed (inbox holds its id); not replayed');
    expect(await entryOf('m-invoice')).toBeDefined();
    expect(await count(env.knex, 'invoices_sent', { invoice_id: 'inv-9' })).toBe(1);
  });

  it('warns when replaying an entry older than the deduplication window', async () => {
    await env
      .knex('dw_dead_letters')
      .where({ message_id: 'm-payload' })
      .update({
        first_failed_at: new Date(Date.now() - 8 * 86_400_000),
      });
    const { id } = await entryOf('m-payload');
    const dry = await dw('dlq', 'replay', String(id), '--dry-run');
    expect(dry.code).toBe(0);
    expect(dry.stderr).toMatch(
      /^warning: dead letter \d+ \(message m-payload\) is older than the deduplication window/,
    );
  });

  it('replays all matching entries; a still-invalid message comes back as a fresh entry', async () => {
    const replay = await dw('dlq', 'replay', '--all', '--reason', 'invalid-payload');
    expect(replay.stdout).toBe('replayed 1\n');
    const fresh = await waitUntil(async () => {
      const row = await entryOf('m-payload');
      return row && row.first_failed_at.getTime() > Date.now() - 86_400_000 ? row : undefined;
    }, 'the replayed message to fail again');
    expect(fresh).toMatchObject({ reason: 'invalid-payload', attempts: 1 });
    expect(fresh.headers['x-dw-replayed-from']).toMatch(/^\d+$/);
  });

  it('refuses to replay into a queue that no longer exists, and keeps the entry', async () => {
    const id = await storeDeadLetter(env.knex, {
      source: 'amqp',
      queue: `${env.config.exchange}.gone`,
      messageId: 'm-gone',
      type: 'JoinMeeting',
      reason: 'handler-failed',
      error: { message: 'x' },
      attempts: 1,
      payload: { userId: 'u', meetingId: 'm' },
    });
    const result = await dw('dlq', 'replay', String(id));
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(
      `dw: queue ${env.config.exchange}.gone does not exist on the broker (start the worker or run \`dw migrate\` first)\n`,
    );
    expect(await entryOf('m-gone')).toBeDefined();
    await env.knex('dw_dead_letters').where({ id }).delete();
  });

  it('purges with guards', async () => {
    expectUsageError(await dw('dlq', 'purge', '--all'), /^dw: purge --all .* add --yes to confirm$/);
    const before = await count(env.knex, 'dw_dead_letters');
    const dry = await dw('dlq', 'purge', '--all', '--dry-run', '--json');
    expect(json(dry)).toEqual({ wouldPurge: before });
    const { id } = await entryOf('m-json');
    expect(await dw('dlq', 'purge', String(id))).toMatchObject({
      code: 0,
      stdout: 'purged 1 dead letter(s)\n',
    });
    expect(await entryOf('m-json')).toBeUndefined();
    expect((await dw('dlq', 'purge', '--all', '--yes', '--type', 'JoinMeeting')).stdout).toBe(
      'purged 1 dead letter(s)\n',
    );
    expect(await count(env.knex, 'dw_dead_letters')).toBe(before - 2);
  });

  it('answers bad arguments with exit 1 and a clear line, never a stack trace', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['dlq', 'list', '--reason', 'nope'], /--reason.*expected one of invalid-json/],
      [['dlq', 'list', '--since', 'yesterday'], /--since.*ISO date/],
      [['dlq', 'list', '--limit', '0'], /--limit/],
      [['dlq', 'show', 'abc'], /^dw: dead-letter ids are positive whole numbers/],
      [['dlq', 'show', '999999'], /^dw: no dead letter with id 999999/],
      [['dlq', 'replay'], /^dw: replay: give dead-letter ids, or --all/],
      [['dlq', 'replay', '1', '--all'], /^dw: replay: give dead-letter ids or --all, not both/],
      [['dlq', 'purge', '1', '--type', 'X'], /^dw: purge: --type.* go with --all/],
      [['status', '--bogus'], /unknown option '--bogus'/],
    ];
    // Side by side: each is a separate process.
    const results = await Promise.all(cases.map(([args]) => dw(...args)));
    results.forEach((result, i) => {
      expectUsageError(result, cases[i]![1]);
    });
  });
});

describe('dw status', () => {
  it('reports outbox, dead letters, sagas and queue depths as JSON and as a table', async () => {
    await env.knex('dw_outbox').insert({
      message_id: 'pending-1',
      destination_kind: 'bullmq',
      destination: 'status_probe_queue',
      type: 'Probe',
      payload: '{}',
      attempts: 1,
      created_at: new Date(Date.now() - 60_000),
      available_at: new Date(Date.now() + 3600_000),
    });
    const status = json<{
      outbox: { pending: number; oldestPendingAgeSeconds: number; failing: number };
      deadLetters: { total: number; byReason: Record<string, number> };
      sagas: Record<string, number>;
      queues: {
        rabbitmq: Array<{ name: string; exists: boolean }>;
        bullmq: Array<{ name: string; waiting: number }>;
      };
    }>(await dw('status', '--json'));
    expect(status.outbox).toMatchObject({ pending: 1, failing: 1 });
    expect(status.outbox.oldestPendingAgeSeconds).toBeGreaterThanOrEqual(59);
    expect(status.deadLetters.total).toBe(await count(env.knex, 'dw_dead_letters'));
    expect(status.sagas).toEqual({});
    expect(status.queues.rabbitmq).toContainEqual(
      expect.objectContaining({ name: `${env.config.exchange}.example`, exists: true }),
    );
    // A retry tier never used has no queue: reported, not an error.
    expect(status.queues.rabbitmq).toContainEqual(
      expect.objectContaining({ name: `${env.config.exchange}.example.retry.4000ms`, exists: false }),
    );
    expect(status.queues.bullmq.map((q) => q.name).sort()).toEqual(['dw-sagas', 'status_probe_queue']);

    const table = await dw('status');
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/^outbox: +1 pending, oldest \d+s, 1 failing$/m);
    expect(table.stdout).toContain('RabbitMQ queues');
  });
});
