import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exampleMigrations } from '../../examples/app/migrations.js';
import { retryCompensation } from '../../ops/saga-recovery.js';
import { defineApp } from '../../shared/app.js';
import { NonRetryableError, StepTimeoutError } from '../../shared/errors.js';
import { silentLogger } from '../../shared/logger.js';
import { insertOutboxMessages } from '../../shared/outbox.js';
import { defineSaga, type StepContext } from '../../shared/saga/definition.js';
import type { SagaPhase, SagaStepJob } from '../../shared/saga/jobs.js';
import { startSaga } from '../../shared/saga/start.js';
import { bumpGeneration } from '../../shared/saga/store.js';
import { scheduleRetryOrGiveUp } from '../../worker/saga/failures.js';
import { SagaStepRunner } from '../../worker/saga/step-runner.js';
import { createTestEnv, type TestEnv } from '../support/services.js';

// Regression tests of the saga review: the runner is driven directly, one job at a time, so
// each race of the review is replayed deterministically (no BullMQ, no relay).

type Ctx = StepContext<Record<string, unknown>>;
const ledger = async (ctx: Ctx, action: string): Promise<void> => {
  await ctx.trx('trip_ledger').insert({ trip_id: ctx.sagaId, step: ctx.step, action });
};
const fetchFailed = () => {
  const cause = Object.assign(new Error('connect ECONNREFUSED 10.0.0.1:443'), { code: 'ECONNREFUSED' });
  return new TypeError('fetch failed', { cause });
};
const calls = new Map<string, number>();
const called = (ctx: Ctx) => {
  const key = `${ctx.sagaId}/${ctx.phase}/${ctx.step}`;
  calls.set(key, (calls.get(key) ?? 0) + 1);
};
let failB = true;
const failCompensation = true;
let abortReason: unknown;

const retry = { attempts: 3, backoffMs: 1 };
const network = defineSaga<Record<string, unknown>>('network', { retry })
  .step('a', [(ctx) => ledger(ctx, 'execute'), (ctx) => ledger(ctx, 'compensate')])
  .step('api', {
    run: async (ctx) => {
      called(ctx);
      throw ctx.state.permanent
        ? new NonRetryableError('card rejected', { cause: fetchFailed() })
        : fetchFailed();
    },
  });
const died = defineSaga<Record<string, unknown>>('died', { retry })
  .step('a', [(ctx) => ledger(ctx, 'execute'), (ctx) => ledger(ctx, 'compensate')])
  .step('x', {
    run: async (ctx) => {
      called(ctx);
      await ledger(ctx, 'execute');
    },
    retry: { attempts: 2 },
  })
  .step('fragile', { run: (ctx) => called(ctx), retry: { attempts: 1 } });
const late = defineSaga<Record<string, unknown>>('late', { retry })
  .step('a', [(ctx) => ledger(ctx, 'execute'), (ctx) => ledger(ctx, 'compensate')])
  .step('b', [
    async (ctx) => {
      if (failB) throw new Error('b down');
      await ledger(ctx, 'execute');
    },
    (ctx) => ledger(ctx, 'compensate'),
  ])
  .step('c', [(ctx) => ledger(ctx, 'execute'), (ctx) => ledger(ctx, 'compensate')]);
const slow = defineSaga<Record<string, unknown>>('slow', { retry })
  .step('db', {
    run: async (ctx) => {
      await ctx.trx.raw('select pg_sleep(30)');
    },
    timeoutMs: 200,
  })
  .step('io', {
    run: (ctx) =>
      new Promise<void>((resolve) =>
        ctx.signal.addEventListener('abort', () => {
          abortReason = ctx.signal.reason;
          resolve();
        }),
      ),
    timeoutMs: 200,
  });
const comp = defineSaga<Record<string, unknown>>('comp', { retry })
  .step('a', [(ctx) => ledger(ctx, 'execute'), (ctx) => ledger(ctx, 'compensate')])
  .step('b', {
    run: (ctx) => ledger(ctx, 'execute'),
    compensate: async (ctx) => {
      if (failCompensation) throw new NonRetryableError('refund API says no');
      await ledger(ctx, 'compensate');
    },
  })
  .step('c', () => {
    throw new NonRetryableError('c cannot');
  });
const swallow = defineSaga<Record<string, unknown>>('swallow', { retry }).step('dup', async (ctx) => {
  await ctx.trx('dw_inbox').insert({ consumer: 'swallow', message_id: ctx.sagaId });
  // The unique violation is caught, but it leaves the transaction aborted (25P02).
  await ctx
    .trx('dw_inbox')
    .insert({ consumer: 'swallow', message_id: ctx.sagaId })
    .catch(() => {});
});

const app = defineApp({ name: 'review', sagas: [network, died, late, slow, comp, swallow] });

let env: TestEnv;
let runner: SagaStepRunner;
beforeAll(async () => {
  env = await createTestEnv(exampleMigrations);
  runner = new SagaStepRunner({
    app,
    knex: env.knex,
    log: silentLogger,
    signal: new AbortController().signal,
  });
});
afterAll(async () => {
  await env?.teardown();
});

// biome-ignore lint/suspicious/noExplicitAny: any saga of the app
async function start(saga: any, id: string, state: Record<string, unknown> = {}) {
  await env.knex.transaction(async (trx: Knex.Transaction) => {
    const started = await startSaga(trx, { saga, input: state, id, correlationId: id });
    await insertOutboxMessages(trx, started.outbox);
  });
}
const job = (saga: string, sagaId: string, step: string, phase: SagaPhase = 'execute'): SagaStepJob => ({
  kind: 'step',
  sagaId,
  saga,
  phase,
  step,
});
const sagaRow = (id: string) => env.knex('dw_sagas').where({ id }).first();
const stepRow = (id: string, step: string, phase: SagaPhase = 'execute') =>
  env.knex('dw_saga_steps').where({ saga_id: id, step, phase }).first();
const deadLetters = (id: string) => env.knex('dw_dead_letters').where({ saga_id: id }).orderBy('id');
const pendingJobs = async (id: string) =>
  (
    await env
      .knex('dw_outbox')
      .whereNull('delivered_at')
      .whereRaw("payload->>'sagaId' = ?", [id])
      .orderBy('id')
  ).map((o: { payload: SagaStepJob }) => `${o.payload.phase}:${o.payload.step}`);

describe('saga failure handling (review regressions)', () => {
  it("a step's own network error is its failure, not a database outage", async () => {
    await start(network, 'net-1');
    await runner.runStep(job('network', 'net-1', 'a'));
    expect(await runner.runStep(job('network', 'net-1', 'api'))).toBe('retry-scheduled');
    expect(await stepRow('net-1', 'api')).toMatchObject({ status: 'running', attempts: 1 });
    expect((await stepRow('net-1', 'api')).error.message).toBe('fetch failed');

    // Non-retryable, with a network cause: fails for good at once and compensates.
    await start(network, 'net-2', { permanent: true });
    await runner.runStep(job('network', 'net-2', 'a'));
    expect(await runner.runStep(job('network', 'net-2', 'api'))).toBe('failed');
    expect(calls.get('net-2/execute/api')).toBe(1);
    expect(await stepRow('net-2', 'api')).toMatchObject({ status: 'failed', attempts: 1 });
    expect((await sagaRow('net-2')).status).toBe('compensating');
    expect(await pendingJobs('net-2')).toContain('compensate:a');
  });

  it('a job handed out again after its worker died counts the attempt it was running', async () => {
    await start(died, 'died-1');
    await runner.runStep(job('died', 'died-1', 'a'));
    // Attempt 1 of x died with the process: the restarted job records it, then runs attempt 2.
    expect(await runner.runStep(job('died', 'died-1', 'x'), { restarted: true })).toBe('completed');
    expect(await stepRow('died-1', 'x')).toMatchObject({ status: 'completed', attempts: 2 });
    expect(calls.get('died-1/execute/x')).toBe(1);
    // A restarted job of a step that completed changes nothing.
    expect(await runner.runStep(job('died', 'died-1', 'x'), { restarted: true })).toBe('duplicate');
    expect(await stepRow('died-1', 'x')).toMatchObject({ status: 'completed', attempts: 2 });

    // fragile has one attempt: the one that died was its last, so the saga compensates.
    expect(await runner.runStep(job('died', 'died-1', 'fragile'), { restarted: true })).toBe('failed');
    expect(calls.get('died-1/execute/fragile')).toBeUndefined();
    expect(await stepRow('died-1', 'fragile')).toMatchObject({ status: 'failed', attempts: 1 });
    const [dead] = await deadLetters('died-1');
    expect(dead).toMatchObject({ reason: 'step-failed', step: 'fragile', attempts: 1 });
    expect(dead.error.message).toContain('the worker died during attempt 1');
    expect((await sagaRow('died-1')).status).toBe('compensating');
  });

  it('a late failure of a step that a duplicate job completed meanwhile changes nothing', async () => {
    await start(late, 'late-1');
    const run = (step: string) => runner.runStep(job('late', 'late-1', step));
    await run('a');
    expect(await run('b')).toBe('retry-scheduled');
    expect(await run('b')).toBe('retry-scheduled');
    // Job X runs attempt 3 and throws; before its failure commits, duplicate Y runs attempt 3 and succeeds.
    failB = false;
    expect(await run('b')).toBe('completed');
    const x = await scheduleRetryOrGiveUp(
      { knex: env.knex, log: silentLogger },
      late,
      late.getStep('b')!,
      job('late', 'late-1', 'b'),
      new Error('b down'),
      3,
    );
    expect(x).toBe('duplicate');
    expect(await stepRow('late-1', 'b')).toMatchObject({ status: 'completed', attempts: 3 });
    expect((await sagaRow('late-1')).status).toBe('running');
    expect(await deadLetters('late-1')).toEqual([]);
    expect(await pendingJobs('late-1')).not.toContain('compensate:a');
    expect(await run('c')).toBe('completed');
    expect((await sagaRow('late-1')).status).toBe('completed');

    // Two chains failing the same attempt: the second records and schedules nothing.
    await start(late, 'late-2');
    failB = true;
    const fail = () =>
      scheduleRetryOrGiveUp(
        { knex: env.knex, log: silentLogger },
        late,
        late.getStep('b')!,
        job('late', 'late-2', 'b'),
        new Error('b down'),
        1,
      );
    expect(await fail()).toBe('retry-scheduled');
    expect(await fail()).toBe('duplicate');
    expect((await pendingJobs('late-2')).filter((j) => j === 'execute:b')).toHaveLength(1);
  });

  it('timeoutMs cancels a query the step waits on and aborts ctx.signal', { timeout: 20_000 }, async () => {
    await start(slow, 'slow-1');
    // Without the cancel, the rollback would queue behind pg_sleep(30) and outlast the test's timeout.
    expect(await runner.runStep(job('slow', 'slow-1', 'db'))).toBe('retry-scheduled');
    const db = await stepRow('slow-1', 'db');
    expect(db).toMatchObject({ status: 'running', attempts: 1 });
    expect(db.error.name).toBe('StepTimeoutError');
    const sleeping = await env.knex.raw(
      "select 1 from pg_stat_activity where datname = current_database() and query like '%pg_sleep(30)%' and pid <> pg_backend_pid()",
    );
    expect(sleeping.rows).toEqual([]);

    // User I/O given ctx.signal stops too.
    await env.knex('dw_saga_steps').where({ saga_id: 'slow-1', step: 'db' }).update({ status: 'completed' });
    expect(await runner.runStep(job('slow', 'slow-1', 'io'))).toBe('retry-scheduled');
    expect(abortReason).toBeInstanceOf(StepTimeoutError);
  });

  it('a scheduled retry moves the saga, so a sweep that read it before re-enqueues nothing', async () => {
    await start(late, 'sweep-1');
    failB = true;
    await runner.runStep(job('late', 'sweep-1', 'a'));
    const readBySweep = await sagaRow('sweep-1');
    expect(await runner.runStep(job('late', 'sweep-1', 'b'))).toBe('retry-scheduled');
    expect((await sagaRow('sweep-1')).version).toBeGreaterThan(readBySweep.version);
    expect(await bumpGeneration(env.knex, readBySweep)).toBeNull();
    // Bumping the generation moves the version too: a step that read the saga before conflicts.
    const fresh = await sagaRow('sweep-1');
    expect(await bumpGeneration(env.knex, fresh)).toBe(fresh.generation + 1);
    expect((await sagaRow('sweep-1')).version).toBe(fresh.version + 1);
  });

  it('replaying a failed compensation enqueues what is pending, even when the named one is done', async () => {
    await start(comp, 'comp-1');
    for (const step of ['a', 'b']) await runner.runStep(job('comp', 'comp-1', step));
    expect(await runner.runStep(job('comp', 'comp-1', 'c'))).toBe('failed');
    expect(await runner.runStep(job('comp', 'comp-1', 'b', 'compensate'))).toBe('failed');
    expect((await sagaRow('comp-1')).status).toBe('failed');
    // The refund of b went through after all (say, done by hand), its record says so.
    await env
      .knex('dw_saga_steps')
      .where({ saga_id: 'comp-1', step: 'b', phase: 'compensate' })
      .update({ status: 'completed' });
    await env.knex('dw_outbox').update({ delivered_at: env.knex.fn.now() });

    expect(await retryCompensation(env.knex, { sagaId: 'comp-1', step: 'b' }, comp)).toBe('resumed');
    expect(await pendingJobs('comp-1')).toEqual(['compensate:a']);
    expect(await runner.runStep(job('comp', 'comp-1', 'a', 'compensate'))).toBe('completed');
    expect((await sagaRow('comp-1')).status).toBe('compensated');
  });

  it('a step that leaves its transaction aborted fails its attempt instead of failing the job', async () => {
    await start(swallow, 'swallow-1');
    expect(await runner.runStep(job('swallow', 'swallow-1', 'dup'))).toBe('retry-scheduled');
    const dup = await stepRow('swallow-1', 'dup');
    expect(dup).toMatchObject({ status: 'running', attempts: 1 });
    expect(dup.error.message).toContain('current transaction is aborted');
  });
});
