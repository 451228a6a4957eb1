import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { Relay } from '../../relay/relay.js';
import { defineApp, defineHandler } from '../../shared/app.js';
import { defineSaga, type StepContext } from '../../shared/saga/definition.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { freePort } from '../chaos/support/processes.js';
import { publishRaw } from '../support/amqp.js';
import { cliEnv, startDw } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/services.js';

// Batched saga steps (sagaBatchSize, on by default): steps of different sagas that are ready at
// once share a transaction. The same saga as test/support/apps/batch-app.mjs (which the worker
// children of the crash tests run): each step's effect is a batch_ledger row with the id of the
// transaction it committed in, so a test sees which steps shared one.

type State = { failOnce?: string; failAlways?: string; unstorable?: string };
type Ctx = StepContext<State>;

/** Calls of each step function per saga, rolled back or not. */
const calls = new Map<string, number>();
/** The transaction ids the failing attempts ran in (their savepoints rolled back, the batch not). */
const failedIn: string[] = [];

const effect =
  (action: string) =>
  async (ctx: Ctx): Promise<Record<string, unknown> | undefined> => {
    const key = `${ctx.sagaId}/${action}/${ctx.step}`;
    calls.set(key, (calls.get(key) ?? 0) + 1);
    const fails =
      action === 'execute' &&
      (ctx.state.failAlways === ctx.step || (ctx.state.failOnce === ctx.step && ctx.attempt === 1));
    if (action === 'execute' && ctx.state.unstorable === ctx.step) {
      // A result PostgreSQL refuses in the saga's jsonb state: the step's bookkeeping fails.
      await ctx.trx.raw(
        'insert into batch_ledger (saga_id, step, action, txid) values (?, ?, ?, txid_current())',
        [ctx.sagaId, ctx.step, action],
      );
      return { note: 'NUL \u0000 here' };
    }
    if (fails) {
      const { rows } = await ctx.trx.raw<{ rows: [{ txid: string }] }>('select txid_current()::text as txid');
      failedIn.push(rows[0].txid);
      throw new Error(`${ctx.step}: attempt ${ctx.attempt} fails`);
    }
    await ctx.trx.raw(
      'insert into batch_ledger (saga_id, step, action, txid) values (?, ?, ?, txid_current())',
      [ctx.sagaId, ctx.step, action],
    );
    return undefined;
  };

const undo = async (ctx: Ctx): Promise<void> => {
  await effect('compensate')(ctx);
};

const batched = defineSaga<State>('batched', { retry: { attempts: 3, backoffMs: 5 } })
  .step('reserve', [effect('execute'), undo])
  .step('charge', [effect('execute'), undo])
  .step('confirm', effect('execute'));

const app = defineApp({
  name: 'batching',
  handlers: [
    defineHandler(
      'StartBatch',
      z.object({ sagas: z.array(z.object({ id: z.string(), state: z.record(z.string(), z.unknown()) })) }),
      async (message, ctx) => {
        for (const saga of message.sagas) await ctx.startSaga(batched, saga.state as State, { id: saga.id });
      },
    ),
  ],
  sagas: [batched],
});

const childApp = fileURLToPath(new URL('../support/apps/batch-app.mjs', import.meta.url));

let env: TestEnv;

beforeAll(async () => {
  env = await createTestEnv();
  await env.knex.raw(
    'create table batch_ledger (id bigserial primary key, saga_id text not null, step text not null, action text not null, txid bigint not null)',
  );
});

afterAll(async () => {
  await env?.teardown();
});

/** Publishes one StartBatch message per group: each handler transaction starts its group's sagas. */
async function publishStarts(groups: Array<Array<{ id: string; state: State }>>): Promise<void> {
  await publishRaw(
    env.config.exchange,
    groups.map((sagas) => ({
      routingKey: 'StartBatch',
      body: { sagas },
      properties: { messageId: randomUUID(), type: 'StartBatch', contentType: 'application/json' },
    })),
  );
}

const finished = (ids: readonly string[]) =>
  waitUntil(
    async () => {
      const { rows } = await env.knex.raw<{ rows: [{ n: number }] }>(
        `select count(*)::int as n from dw_sagas where id = any(?) and status not in ('running', 'compensating')`,
        [[...ids]],
      );
      return rows[0].n === ids.length;
    },
    `${ids.length} sagas to finish`,
    { timeoutMs: 120_000 },
  );

/** Each saga's ledger as `+step` / `-step`, in commit order. */
async function ledgers(ids: readonly string[]): Promise<Map<string, string[]>> {
  const rows = await env.knex('batch_ledger').whereIn('saga_id', ids).orderBy('id');
  const byId = new Map<string, string[]>(ids.map((id) => [id, []]));
  for (const r of rows) byId.get(r.saga_id)?.push(`${r.action === 'execute' ? '+' : '-'}${r.step}`);
  return byId;
}

/** Transactions that committed steps of more than one saga: the batches. */
async function batches(ids: readonly string[]): Promise<Array<{ txid: string; sagas: number }>> {
  const { rows } = await env.knex.raw<{ rows: Array<{ txid: string; sagas: number }> }>(
    `select txid::text, count(distinct saga_id)::int as sagas from batch_ledger
      where saga_id = any(?) group by txid having count(distinct saga_id) > 1`,
    [[...ids]],
  );
  return rows;
}

const completeLedger = ['+reserve', '+charge', '+confirm'];

describe('batched saga steps', () => {
  it('run many sagas at once in shared transactions, each step once, and settle their outbox rows', async () => {
    const groups = Array.from({ length: 6 }, () =>
      Array.from({ length: 20 }, () => ({ id: randomUUID(), state: {} })),
    );
    const ids = groups.flat().map((s) => s.id);
    const worker = await Worker.start({ app, config: env.config, sagaSweepIntervalMs: 0 });
    const relay = await Relay.start({ config: env.config });
    try {
      await publishStarts(groups);
      await finished(ids);
      // Eager steps' rows are marked delivered by the statement that recorded them.
      await waitUntil(
        async () =>
          (
            await env
              .knex('dw_outbox')
              .whereRaw("payload->>'sagaId' = any(?)", [ids])
              .whereNull('delivered_at')
          ).length === 0,
        'the step rows to be delivered',
      );
    } finally {
      await relay.stop(5000);
      await worker.stop(5000);
    }
    const byId = await ledgers(ids);
    for (const id of ids) expect(byId.get(id), id).toEqual(completeLedger);
    const statuses = await env.knex('dw_sagas').whereIn('id', ids).distinct('status');
    expect(statuses.map((s) => s.status)).toEqual(['completed']);
    const records = await env.knex('dw_saga_steps').whereIn('saga_id', ids).select('status', 'attempts');
    expect(records).toHaveLength(3 * ids.length);
    expect(records.every((r) => r.status === 'completed' && r.attempts === 1)).toBe(true);
    for (const id of ids) {
      for (const step of ['reserve', 'charge', 'confirm']) expect(calls.get(`${id}/execute/${step}`)).toBe(1);
    }
    // Batches formed: transactions committed the steps of several sagas (at most sagaBatchSize).
    const formed = await batches(ids);
    expect(formed.length).toBeGreaterThan(0);
    expect(Math.max(...formed.map((b) => b.sagas))).toBeLessThanOrEqual(10);
  }, 150_000);

  it('a step failing inside a batch retries or compensates only its saga; the others commit once', async () => {
    type Start = { id: string; state: State };
    const starts = (n: number, state: State): Start[] =>
      Array.from({ length: n }, () => ({ id: randomUUID(), state }));
    const plain = starts(24, {});
    const retried = starts(3, { failOnce: 'charge' });
    const compensated = starts(3, { failAlways: 'charge' });
    // Interleaved, in one handler transaction: the failing sagas' steps share batches with the others.
    const sagas: Start[] = plain.flatMap((s, i) =>
      i % 8 === 0 ? [s, retried[i / 8]!, compensated[i / 8]!] : [s],
    );
    const ids = sagas.map((s) => s.id);
    failedIn.length = 0;
    const worker = await Worker.start({ app, config: env.config, sagaSweepIntervalMs: 0 });
    const relay = await Relay.start({ config: env.config });
    try {
      await publishStarts([sagas]);
      await finished(ids);
    } finally {
      await relay.stop(5000);
      await worker.stop(5000);
    }
    const byId = await ledgers(ids);
    for (const { id } of [...plain, ...retried]) expect(byId.get(id), id).toEqual(completeLedger);
    for (const { id } of compensated) expect(byId.get(id), id).toEqual(['+reserve', '-reserve']);
    const status = async (id: string) => (await env.knex('dw_sagas').where({ id }).first()).status;
    for (const { id } of [...plain, ...retried]) expect(await status(id)).toBe('completed');
    for (const { id } of compensated) expect(await status(id)).toBe('compensated');
    // The failing code ran once per attempt, as one by one: no batch ran it a second time.
    for (const { id } of retried) {
      expect(calls.get(`${id}/execute/charge`)).toBe(2);
      const record = await env.knex('dw_saga_steps').where({ saga_id: id, step: 'charge' }).first();
      expect(record).toMatchObject({ status: 'completed', attempts: 2 });
    }
    for (const { id } of compensated) {
      expect(calls.get(`${id}/execute/charge`)).toBe(3);
      expect(calls.get(`${id}/compensate/reserve`)).toBe(1);
    }
    // Every other saga ran each step once, on its first attempt.
    for (const { id } of plain) {
      for (const step of ['reserve', 'charge', 'confirm']) expect(calls.get(`${id}/execute/${step}`)).toBe(1);
    }
    const attempts = await env.knex('dw_saga_steps').whereIn(
      'saga_id',
      plain.map((s) => s.id),
    );
    expect(attempts.every((r) => r.attempts === 1)).toBe(true);
    // Some failing attempt ran in a batch that committed other sagas' steps all the same.
    const committedWithOthers = await env.knex('batch_ledger').whereIn('txid', failedIn).count({ n: '*' });
    expect(Number(committedWithOthers[0]?.n)).toBeGreaterThan(0);
  }, 150_000);

  /**
   * Worker children of the batch app, the first killed inside a batch or right after its commit
   * (crash points) or from outside, then a second one finishing the work with the relay: every
   * saga completes with each step's effect exactly once. The sagas are started by messages the
   * first child handles, 20 per handler transaction, so its eager steps run in batches at once.
   */
  async function crashScenario(crashPoint: 'saga:inside-batch' | 'saga:after-batch-commit' | 'sigkill') {
    const groups = Array.from({ length: 3 }, () =>
      Array.from({ length: 20 }, () => ({ id: randomUUID(), state: {} })),
    );
    const ids = groups.flat().map((s) => s.id);
    const relay = await Relay.start({ config: env.config });
    try {
      const healthPort = await freePort();
      const first = startDw(
        ['worker', '--app', childApp],
        cliEnv(env.config, {
          DW_HEALTH_PORT: String(healthPort),
          ...(crashPoint === 'sigkill' ? {} : { DW_CRASH_POINTS: crashPoint }),
        }),
      );
      // Its queue exists once it answers: the messages are not published into the void.
      await waitUntil(
        () =>
          fetch(`http://127.0.0.1:${healthPort}/healthz`, { signal: AbortSignal.timeout(2000) }).then(
            (res) => res.status === 200,
            () => false,
          ),
        'the first worker to be healthy',
      );
      await publishStarts(groups);
      if (crashPoint === 'sigkill') {
        // Killed from outside while it commits steps: most likely in the middle of a batch.
        await waitUntil(
          async () =>
            Number((await env.knex('batch_ledger').whereIn('saga_id', ids).count({ n: '*' }))[0]?.n) >= 20,
          'the first worker to commit some steps',
        );
        first.child.kill('SIGKILL');
      }
      const exit = await first.exited;
      expect(exit.signal).toBe('SIGKILL');
      const before = await ledgers(ids);
      const second = startDw(['worker', '--app', childApp], cliEnv(env.config));
      try {
        await finished(ids);
      } finally {
        second.child.kill('SIGTERM');
        await second.exited;
      }
      const byId = await ledgers(ids);
      for (const id of ids) expect(byId.get(id), id).toEqual(completeLedger);
      expect(await env.knex('dw_sagas').whereIn('id', ids).whereNot({ status: 'completed' })).toEqual([]);
      return { committedBeforeCrash: [...before.values()].flat().length };
    } finally {
      await relay.stop(5000);
    }
  }

  it('a step whose record PostgreSQL refuses fails alone; the other steps of its batch run once', async () => {
    const plain = Array.from({ length: 24 }, () => ({ id: randomUUID(), state: {} as State }));
    const hostile = Array.from({ length: 3 }, () => ({ id: randomUUID(), state: { unstorable: 'charge' } }));
    const sagas = plain.flatMap((s, i) => (i % 8 === 0 ? [s, hostile[i / 8]!] : [s]));
    const ids = sagas.map((s) => s.id);
    const worker = await Worker.start({ app, config: env.config, sagaSweepIntervalMs: 0 });
    const relay = await Relay.start({ config: env.config });
    try {
      await publishStarts([sagas]);
      await finished(ids);
    } finally {
      await relay.stop(5000);
      await worker.stop(5000);
    }
    const byId = await ledgers(ids);
    for (const { id } of plain) {
      expect(byId.get(id), id).toEqual(completeLedger);
      for (const step of ['reserve', 'charge', 'confirm']) expect(calls.get(`${id}/execute/${step}`)).toBe(1);
    }
    for (const { id } of hostile) {
      expect((await env.knex('dw_sagas').where({ id }).first()).status).not.toBe('completed');
      // Its refused write never committed: the ledger holds no charge of it.
      expect(byId.get(id)).not.toContain('+charge');
    }
  });

  it('a worker killed inside a batch, before its commit: nothing of it stays, every step runs once', async () => {
    await crashScenario('saga:inside-batch');
  }, 180_000);

  it('a worker killed right after a batch committed, before its acks: the steps are not run again', async () => {
    const { committedBeforeCrash } = await crashScenario('saga:after-batch-commit');
    // The batch that committed before the crash: several sagas' steps, none repeated after it.
    expect(committedBeforeCrash).toBeGreaterThan(0);
  }, 180_000);

  it('a worker SIGKILLed while it runs batches: nothing lost, no effect twice', async () => {
    await crashScenario('sigkill');
  }, 180_000);
});
