import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { workerDefaults, workQueueName } from '../../shared/defaults.js';
import { OrderingPluginMissingError } from '../../shared/errors.js';
import { declareOnOwnConnection, orderedExchangeName, partitionQueueName } from '../../shared/ordering.js';
import { waitUntil } from '../../shared/wait.js';
import { publishRaw, requireOrderingPlugin } from '../support/amqp.js';
import { cliEnv, type DwChild, runCli, startDw } from '../support/cli.js';
import { createTestEnv, type TestEnv, urls } from '../support/services.js';

const orderedApp = fileURLToPath(new URL('../support/apps/ordered-app.mjs', import.meta.url));

interface SeenRow {
  id: string;
  key: string;
  seq: number;
  prev: number | null;
  attempt: number;
  pid: number;
  started_at: Date;
  finished_at: Date;
}

let env: TestEnv;
let workerEnv: NodeJS.ProcessEnv;
const workers: DwChild[] = [];
let relay: DwChild | undefined;

/**
 * Consumers of each queue as the broker lists them. Not `checkQueue`: on a quorum queue with single
 * active consumer its consumer count is the active one only.
 */
async function consumers(): Promise<Map<string, number>> {
  const { stdout } = await run('rabbitmqctl', [
    '-q',
    'list_queues',
    'name',
    'consumers',
    '--no-table-headers',
  ]);
  const counts = new Map<string, number>();
  for (const line of stdout.split('\n')) {
    const [name, n] = line.trim().split(/\s+/);
    if (name && n) counts.set(name, Number(n));
  }
  return counts;
}

const run = promisify(execFile);

const seen = (): Promise<SeenRow[]> => env.knex<SeenRow>('ordered_seen').orderBy('id');

beforeAll(async () => {
  env = await createTestEnv();
  await requireOrderingPlugin(env.config, 'test');
  await env.knex.schema.createTable('ordered_seen', (t) => {
    t.bigIncrements('id').primary();
    t.text('key').notNullable();
    t.integer('seq').notNullable();
    t.integer('prev');
    t.integer('attempt').notNullable();
    t.integer('pid').notNullable();
    t.timestamp('started_at', { useTz: true }).notNullable();
    t.timestamp('finished_at', { useTz: true }).notNullable();
  });
  workerEnv = cliEnv(env.config, { DW_APP: orderedApp });
  for (let i = 0; i < 3; i++) workers.push(startDw(['worker', '--concurrency', '8'], workerEnv));
  relay = startDw(['relay'], workerEnv);
  const queue = workQueueName(env.config.exchange, 'test');
  // Every worker consumes every partition (one of them active per partition) and the work queue.
  await waitUntil(
    async () => {
      const counts = await consumers();
      for (let i = 0; i < workerDefaults.orderedPartitions; i++) {
        if ((counts.get(partitionQueueName(queue, i)) ?? 0) < 3) return false;
      }
      return counts.get(queue) === 3;
    },
    'three workers consuming every partition',
    { timeoutMs: 60_000, intervalMs: 250 },
  );
}, 120_000);

afterAll(async () => {
  for (const child of [...workers, relay]) {
    if (child && child.child.exitCode === null && child.child.signalCode === null)
      child.child.kill('SIGTERM');
  }
  await Promise.all([...workers, relay].map((c) => c?.exited));
  await env?.teardown();
}, 60_000);

describe('ordered processing by key (3 worker processes, a relay)', () => {
  it('handles each key in publish order across workers, keys in parallel, through failures, dead letters and a SIGKILL', async () => {
    const ordered = orderedExchangeName(env.config.exchange);
    const rawKeys = Array.from({ length: 10 }, (_, i) => `raw-${i}`);
    const perKey = 40;
    // Interleaved, as a busy producer would: raw-0/1, raw-1/1, … raw-9/40; plus a key whose 4th
    // message fails twice (one immediate, one delayed retry) and one whose 5th is poison.
    const messages: Parameters<typeof publishRaw>[1] = [];
    const keyed = (key: string, seq: number, extra: object = {}) => ({
      routingKey: 'Seq',
      body: { key, seq, ...extra },
      properties: { messageId: `${key}/${seq}`, type: 'Seq', headers: { 'x-ordering-key': key } },
    });
    for (let seq = 1; seq <= perKey; seq++) {
      for (const key of rawKeys) messages.push(keyed(key, seq));
      if (seq <= 10) messages.push(keyed('fails', seq, seq === 4 ? { failTimes: 2 } : {}));
      if (seq <= 10) messages.push(keyed('dead', seq, seq === 5 ? { poison: true } : {}));
    }
    await publishRaw(ordered, messages);

    // Through handlers: each Fanout publishes 30 keyed messages with ctx.publish (outbox, relay).
    await publishRaw(env.config.exchange, [
      { routingKey: 'Fanout', body: { key: 'fan-0', count: 30 }, properties: { type: 'Fanout' } },
      { routingKey: 'Fanout', body: { key: 'fan-1', count: 30 }, properties: { type: 'Fanout' } },
    ]);

    // SIGKILL the worker that handled the latest message, mid-stream.
    await waitUntil(async () => (await seen()).length >= 120, 'a good part of the stream handled');
    const latest = (await seen()).at(-1)!;
    const victim = workers.find((w) => w.child.pid === latest.pid)!;
    victim.child.kill('SIGKILL');
    expect(await victim.exited).toEqual({ code: null, signal: 'SIGKILL' });

    // With the CLI, one after the other (publish order is the order of the commands).
    for (let seq = 1; seq <= 3; seq++) {
      const result = await runCli(
        ['publish', 'Seq', '--data', JSON.stringify({ key: 'cli', seq }), '--key', 'cli'],
        workerEnv,
      );
      expect(result.stderr).toBe('');
      expect(result.stdout).toBe(`published 1 Seq message(s) to ${ordered}\n`);
    }

    const expected: Record<string, number[]> = {
      fails: range(10),
      dead: range(10).filter((s) => s !== 5),
      cli: range(3),
      'fan-0': range(30),
      'fan-1': range(30),
    };
    for (const key of rawKeys) expected[key] = range(perKey);
    const total = Object.values(expected).reduce((n, list) => n + list.length, 0);
    const rows = await waitUntil(
      async () => {
        const all = await seen();
        return all.length >= total ? all : undefined;
      },
      'every keyed message handled',
      { timeoutMs: 240_000 },
    );

    // Per key: the handled sequence is the published one (strictly increasing, no gap, no
    // duplicate), and each message saw its predecessor committed before it started.
    for (const [key, seqs] of Object.entries(expected)) {
      const mine = rows.filter((r) => r.key === key);
      expect(
        mine.map((r) => r.seq),
        key,
      ).toEqual(seqs);
      expect(
        mine.map((r) => r.prev),
        key,
      ).toEqual([null, ...seqs.slice(0, -1)]);
    }
    expect(rows).toHaveLength(total);

    // Different keys ran at the same time.
    const overlapping = rows.some((a) =>
      rows.some((b) => a.key !== b.key && a.started_at < b.finished_at && b.started_at < a.finished_at),
    );
    expect(overlapping).toBe(true);

    // The failing message succeeded at its third attempt (after a delayed retry held in place);
    // while its key waited, other keys went on.
    const failed = rows.find((r) => r.key === 'fails' && r.seq === 4)!;
    expect(failed.attempt).toBe(3);
    const before = rows.find((r) => r.key === 'fails' && r.seq === 3)!;
    const meanwhile = rows.filter(
      (r) => r.key !== 'fails' && r.started_at > before.finished_at && r.finished_at < failed.started_at,
    );
    expect(meanwhile.length).toBeGreaterThan(0);

    // The poison message is a dead letter (with its key), its key moved on; nothing else is.
    const deadLetters = await env.knex('dw_dead_letters').select('message_id', 'reason', 'headers');
    expect(deadLetters).toEqual([
      expect.objectContaining({
        message_id: 'dead/5',
        reason: 'handler-failed',
        headers: expect.objectContaining({ 'x-ordering-key': 'dead' }),
      }),
    ]);
    // The killed worker's share went to the others: nothing lost (the count above), nothing twice.
    expect(new Set(rows.map((r) => `${r.key}/${r.seq}`)).size).toBe(total);
  }, 300_000);

  it('takes hostile keys without looping, refuses unusable ones at publish, handles keyed messages on the ordinary queue', async () => {
    const before = (await seen()).length;
    await publishRaw(orderedExchangeName(env.config.exchange), [
      // A key over the publish limit (a raw client's frame bounds it: amqplib's is 4 KiB), a number, raw bytes: routed and handled like any key.
      {
        routingKey: 'Seq',
        body: { key: 'large', seq: 1 },
        properties: { type: 'Seq', headers: { 'x-ordering-key': 'k'.repeat(3000) } },
      },
      {
        routingKey: 'Seq',
        body: { key: 'number', seq: 1 },
        properties: { type: 'Seq', headers: { 'x-ordering-key': 42 } },
      },
      {
        routingKey: 'Seq',
        body: { key: 'bytes', seq: 1 },
        properties: { type: 'Seq', headers: { 'x-ordering-key': Buffer.from([0, 255, 10]) } },
      },
      // No key at all on the ordered exchange: handled, unordered.
      { routingKey: 'Seq', body: { key: 'none', seq: 1 }, properties: { type: 'Seq' } },
    ]);
    // A key on the ordinary exchange: handled without ordering, never lost.
    await publishRaw(env.config.exchange, [
      {
        routingKey: 'Seq',
        body: { key: 'main', seq: 1 },
        properties: { type: 'Seq', headers: { 'x-ordering-key': 'main' } },
      },
    ]);
    await waitUntil(async () => (await seen()).length === before + 5, 'the hostile-key messages handled');

    for (const [key, why] of [
      ['', 'must not be empty'],
      ['x'.repeat(1025), 'at most 1024 bytes'],
    ] as const) {
      const result = await runCli(['publish', 'Seq', '--data', '{}', '--key', key], workerEnv);
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(why);
      expect(result.stderr.trim().split('\n')).toHaveLength(1);
    }
  }, 120_000);

  it('migrate declares the same partitions; fewer partitions than the queue has, or a missing plugin, stop with one clear error', async () => {
    const ok = await runCli(['migrate'], workerEnv);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain(
      `declared exchange ${orderedExchangeName(env.config.exchange)} and 8 ordered partition queue(s)`,
    );
    const fewer = await runCli(['migrate', '--ordered-partitions', '4'], workerEnv);
    expect(fewer.code).toBe(1);
    expect(fewer.stderr).toContain('was set up with more than 4 ordered partitions');
    expect(fewer.stderr.trim().split('\n')).toHaveLength(1);
    const worker = await runCli(['worker'], { ...workerEnv, DW_ORDERED_PARTITIONS: '4' });
    expect(worker.code).toBe(1);
    expect(worker.stderr).toContain('was set up with more than 4 ordered partitions');

    // An exchange type the broker does not know is what a missing plugin looks like (a connection
    // error, 503): declared on a connection of its own, it becomes the error that says what to do.
    const missing = await declareOnOwnConnection(
      urls.amqp,
      `${env.config.exchange}.no-plugin`,
      'x-dw-no-such-plugin',
      {},
    ).catch((error: unknown) => error);
    expect(missing).toBeInstanceOf(OrderingPluginMissingError);
    expect((missing as OrderingPluginMissingError).code).toBe('DW_ORDERING_PLUGIN_MISSING');
    expect((missing as Error).message).toContain('rabbitmq-plugins enable rabbitmq_consistent_hash_exchange');
  }, 120_000);

  it('replays a keyed dead letter through its partition, with its key', async () => {
    const entry = await env.knex('dw_dead_letters').where({ message_id: 'dead/5' }).first();
    const replay = await runCli(['dlq', 'replay', String(entry.id)], workerEnv);
    expect(replay.code).toBe(0);
    // Poison still: routed by its key again, handled and dead-lettered again, key and all.
    const again = await waitUntil(
      () =>
        env
          .knex('dw_dead_letters')
          .where({ message_id: 'dead/5' })
          .whereRaw("headers \\? 'x-dw-replayed-from'")
          .first(),
      'the replayed message dead-lettered again',
    );
    expect(again.headers['x-ordering-key']).toBe('dead');
    expect(again.headers['x-dw-replayed-from']).toBe(String(entry.id));
  }, 120_000);
});

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i + 1);
}
