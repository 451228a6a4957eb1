import { Queue } from 'bullmq';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exampleMigrations } from '../../examples/app/migrations.js';
import { Relay } from '../../relay/relay.js';
import { defineApp } from '../../shared/app.js';
import { NonRetryableError } from '../../shared/errors.js';
import { silentLogger } from '../../shared/logger.js';
import { insertOutboxMessages } from '../../shared/outbox.js';
import { defineSaga, type StepContext } from '../../shared/saga/definition.js';
import { type SagaPhase, type SagaStepJob, sagaQueue } from '../../shared/saga/jobs.js';
import { startSaga } from '../../shared/saga/start.js';
import { waitUntil } from '../../shared/wait.js';
import { EagerSteps } from '../../worker/saga/eager.js';
import { SagaStepRunner } from '../../worker/saga/step-runner.js';
import { Worker } from '../../worker/worker.js';
import { createTestEnv, type TestEnv } from '../support/services.js';

// Stale copies of saga jobs (delivered twice, relayed after an eager run, an early retry copy)
// must not run a step's code again. Effects are counted in this process, outside any
// transaction, the way a refund through an external API would happen.

type Ctx = StepContext<Record<string, unknown>>;
/** External effects per saga/phase/step/attempt: never rolled back. */
const effects: Array<{ key: string; attempt: number; at: number }> = [];
const effectCount = (sagaId: string, phase: SagaPhase, step: string) =>
  effects.filter((e) => e.key === `${sagaId}/${phase}/${step}`).length;
/** Gates a test holds a step's code at, by saga/phase/step. */
const gates = new Map<string, Promise<void>>();
const entered = new Map<string, () => void>();

async function external(ctx: Ctx): Promise<void> {
  const key = `${ctx.sagaId}/${ctx.phase}/${ctx.step}`;
  effects.push({ key, attempt: ctx.attempt, at: Date.now() });
  entered.get(key)?.();
  await gates.get(key);
  await ctx.trx('trip_ledger').insert({ trip_id: ctx.sagaId, step: ctx.step, action: ctx.phase });
}

/** a, then b | c | x where x fails for good: b, c and a are compensated (refunds). */
const refunds = defineSaga<Record<string, unknown>>('refunds', { retry: { attempts: 2, backoffMs: 1 } })
  .step('a', [external, external])
  .parallel([
    { name: 'b', run: external, compensate: external },
    { name: 'c', run: external, compensate: external },
    {
      name: 'x',
      run: () => {
        throw new NonRetryableError('x cannot');
      },
    },
  ]);

/** r fails its first attempt; its retry is due after a backoff long enough to see an early copy. */
const backoff = defineSaga<Record<string, unknown>>('backoff').step('r', {
  run: async (ctx) => {
    await external(ctx);
    if (ctx.attempt === 1) throw new Error('payment API down');
  },
  retry: { attempts: 3, backoffMs: 3000, maxBackoffMs: 3000, jitter: 0 },
});

/** pay's refund fails its first attempt (the refund API times out); ship fails for good. */
const flaky = defineSaga<Record<string, unknown>>('flaky-refund', { retry: { attempts: 3, backoffMs: 1 } })
  .step('pay', {
    run: external,
    compensate: async (ctx) => {
      await external(ctx);
      if (ctx.attempt === 1) throw new Error('refund API timed out');
    },
  })
  .step('ship', () => {
    throw new NonRetryableError('no courier');
  });

const app = defineApp({ name: 'stale', sagas: [refunds, backoff, flaky] });

let env: TestEnv;
beforeAll(async () => {
  env = await createTestEnv(exampleMigrations);
});
afterAll(async () => {
  await env?.teardown();
});

async function start(saga: typeof refunds, id: string) {
  await env.knex.transaction(async (trx: Knex.Transaction) => {
    const started = await startSaga(trx, { saga, input: {}, id, correlationId: id });
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
/** The step job the outbox holds for (saga, phase, step), latest first. */
async function outboxJob(sagaId: string, phase: SagaPhase, step: string): Promise<SagaStepJob> {
  const row = await env
    .knex('dw_outbox')
    .whereRaw("payload->>'sagaId' = ? and payload->>'phase' = ? and payload->>'step' = ?", [
      sagaId,
      phase,
      step,
    ])
    .orderBy('id', 'desc')
    .first();
  return row.payload;
}
const stepRow = (id: string, step: string, phase: SagaPhase = 'execute') =>
  env.knex('dw_saga_steps').where({ saga_id: id, step, phase }).first();
/** Sessions of this test's database waiting on a lock of kind `event` (advisory, transactionid, tuple). */
async function waitingOn(...events: string[]): Promise<number> {
  const { rows } = await env.knex.raw<{ rows: Array<{ n: number }> }>(
    `select count(*)::int as n from pg_stat_activity
      where datname = current_database() and wait_event_type = 'Lock' and wait_event = any(?)`,
    [events],
  );
  return rows[0]!.n;
}
const sagaStatus = async (id: string) => (await env.knex('dw_sagas').where({ id }).first()).status;

/** Holds the code of (saga, phase, step) once entered; resolves `entered` then, `release` lets it go. */
function gate(sagaId: string, phase: SagaPhase, step: string) {
  const key = `${sagaId}/${phase}/${step}`;
  let release!: () => void;
  gates.set(
    key,
    new Promise<void>((r) => {
      release = r;
    }),
  );
  const reached = new Promise<void>((r) => entered.set(key, r));
  return {
    reached,
    release: () => {
      entered.delete(key);
      gates.delete(key);
      release();
    },
  };
}

describe('stale saga job copies', () => {
  it('a failed parallel group has each member compensated once, with copies held by BullMQ, the eager runner and duplicates', async () => {
    let runner!: SagaStepRunner;
    const eager = new EagerSteps(env.knex, { leaseMs: 10_000, concurrency: 4, log: silentLogger }, (j) =>
      runner.runStep(j),
    );
    runner = new SagaStepRunner({
      app,
      knex: env.knex,
      log: silentLogger,
      signal: new AbortController().signal,
      eager,
    });
    const id = 'refund-1';
    await start(refunds, id);
    // Forward without the eager runner, so that each step runs when the test says.
    const plain = new SagaStepRunner({
      app,
      knex: env.knex,
      log: silentLogger,
      signal: new AbortController().signal,
    });
    for (const step of ['a', 'b', 'c'])
      expect(await plain.runStep(job('refunds', id, step))).toBe('completed');
    expect(await plain.runStep(job('refunds', id, 'x'))).toBe('failed');
    expect(await sagaStatus(id)).toBe('compensating');
    const compensateB = await outboxJob(id, 'compensate', 'b');
    const compensateC = await outboxJob(id, 'compensate', 'c');

    // BullMQ's copy of c's compensation is in its refund call when b's compensation commits.
    const c = gate(id, 'compensate', 'c');
    const bullmqC = runner.runStep(compensateC);
    await c.reached;
    // Two copies of b's compensation at once (a job delivered twice).
    expect((await Promise.all([runner.runStep(compensateB), runner.runStep(compensateB)])).sort()).toEqual([
      'completed',
      'duplicate',
    ]);
    // Whatever b's commit handed to the eager runner has had its chance to run (or wait) by now.
    const eagerDone = eager.stop(60_000);
    c.release();
    expect(await bullmqC).toBe('completed');
    await eagerDone;

    // c compensated, so a's compensation is queued; stale copies of b and c come late.
    expect(await runner.runStep(compensateC)).toBe('duplicate');
    expect(await runner.runStep(job('refunds', id, 'b', 'compensate'))).toBe('duplicate');
    expect(await runner.runStep(await outboxJob(id, 'compensate', 'a'))).toBe('completed');
    expect(await sagaStatus(id)).toBe('compensated');
    for (const step of ['a', 'b', 'c']) {
      expect({ step, refunds: effectCount(id, 'compensate', step) }).toEqual({ step, refunds: 1 });
    }
  });

  it('a stale copy of an attempt already made is ignored, an early retry copy waits its backoff', async () => {
    const runner = new SagaStepRunner({
      app,
      knex: env.knex,
      log: silentLogger,
      signal: new AbortController().signal,
    });
    const id = 'backoff-1';
    await start(backoff, id);
    const first = await outboxJob(id, 'execute', 'r');
    expect(await runner.runStep(first)).toBe('retry-scheduled');
    const retry = await outboxJob(id, 'execute', 'r');
    expect(retry).toMatchObject({ attempt: 2 });
    // A copy of attempt 1 (the job delivered again): that attempt was made, it does not run again.
    expect(await runner.runStep(first)).toBe('stale');
    // A copy of the retry, handed out without its delay: not before its backoff.
    expect(await runner.runStep(retry)).toBe('early');
    expect(effectCount(id, 'execute', 'r')).toBe(1);
    expect(await stepRow(id, 'r')).toMatchObject({ status: 'running', attempts: 1 });
  });

  it('a retry copy injected into BullMQ runs once, not before its backoff, as the attempt it was written for', async () => {
    const worker = await Worker.start({ app, config: env.config, sagaSweepIntervalMs: 0 });
    const relay = await Relay.start({ config: env.config, pollIntervalMs: 100 });
    const queue = new Queue(sagaQueue, {
      connection: { url: env.config.redisUrl },
      prefix: env.config.bullmqPrefix,
    });
    const id = 'backoff-2';
    try {
      await start(backoff, id);
      await waitUntil(async () => (await stepRow(id, 'r'))?.attempts === 1, 'the first attempt to fail');
      const delayed = await waitUntil(
        () =>
          env
            .knex('dw_outbox')
            .whereRaw("payload->>'sagaId' = ? and options->>'delay' is not null", [id])
            .first(),
        'the retry job',
      );
      const retry: SagaStepJob = delayed.payload;
      // Copies as the relay would add them, but without the delay: two of the retry, one of attempt 1.
      const first = { ...retry, attempt: 1, notBefore: undefined };
      for (const [n, payload] of [retry, retry, first].entries()) {
        await queue.add(
          'dw.saga.step',
          { messageId: `copy-${n}`, type: 'dw.saga.step', payload, headers: {} },
          { jobId: `copy-${id}-${n}` },
        );
      }
      await waitUntil(async () => (await sagaStatus(id)) === 'completed', 'the saga to complete');
    } finally {
      await queue.close();
      await relay.stop(5000);
      await worker.stop(5000);
    }
    const runs = effects.filter((e) => e.key === `${id}/execute/r`);
    expect(runs.map((e) => e.attempt)).toEqual([1, 2]);
    // The retry was written after attempt 1 began, due 3 s later (no jitter).
    expect(runs[1]!.at - runs[0]!.at).toBeGreaterThanOrEqual(3000);
    expect(await stepRow(id, 'r')).toMatchObject({ status: 'completed', attempts: 2 });
  });

  it('a copy waiting on the step lock while the attempt fails sees the recorded failure: the refund runs once per attempt', async () => {
    const runner = new SagaStepRunner({
      app,
      knex: env.knex,
      log: silentLogger,
      signal: new AbortController().signal,
    });
    const id = 'flaky-1';
    await start(flaky, id);
    expect(await runner.runStep(await outboxJob(id, 'execute', 'pay'))).toBe('completed');
    expect(await runner.runStep(await outboxJob(id, 'execute', 'ship'))).toBe('failed');
    const refund = await outboxJob(id, 'compensate', 'pay');
    expect(refund).toMatchObject({ attempt: 1 });

    // Two copies of the refund's first attempt at once; the first is in the refund call while the
    // second waits on the step lock.
    const g = gate(id, 'compensate', 'pay');
    const first = runner.runStep(refund);
    await g.reached;
    const second = runner.runStep(refund);
    await waitUntil(
      async () => (await waitingOn('advisory')) === 1,
      'the second copy to wait on the step lock',
    );
    // The saga row held: the recording of the failure (which updates it) cannot commit, so the
    // window between the attempt's end and its record stays open as long as the test needs.
    const hold = await env.knex.transaction();
    try {
      await hold('dw_sagas').where({ id }).forUpdate();
      g.release();
      // Either the second copy ran the refund again (the lock went with the rollback), or the
      // first copy records its failure still holding the step lock, the second still waiting.
      await waitUntil(
        async () =>
          effectCount(id, 'compensate', 'pay') > 1 ||
          ((await waitingOn('transactionid', 'tuple')) === 1 && (await waitingOn('advisory')) === 1),
        'the second copy to run or the first to wait on the saga row while holding the step lock',
      );
    } finally {
      await hold.commit();
    }
    expect([await first, await second]).toEqual(['retry-scheduled', 'stale']);
    expect(effectCount(id, 'compensate', 'pay')).toBe(1);
    expect(await stepRow(id, 'pay', 'compensate')).toMatchObject({ status: 'running', attempts: 1 });

    // The retry the failure scheduled makes attempt 2, and the saga ends compensated.
    const retry = await outboxJob(id, 'compensate', 'pay');
    expect(retry).toMatchObject({ attempt: 2 });
    await waitUntil(() => (retry.notBefore ?? 0) <= Date.now(), 'the retry to be due');
    expect(await runner.runStep(retry)).toBe('completed');
    expect(await sagaStatus(id)).toBe('compensated');
    expect(effects.filter((e) => e.key === `${id}/compensate/pay`).map((e) => e.attempt)).toEqual([1, 2]);
  });
});
