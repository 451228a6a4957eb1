import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deleteRedisKeys } from '../../bench/env.js';
import { retryCompensation } from '../../ops/saga-recovery.js';
import { silentLogger } from '../../shared/logger.js';
import { deadlineJobId, sagaQueue } from '../../shared/saga/jobs.js';
import { waitUntil } from '../../shared/wait.js';
import { sweepOnce } from '../../worker/saga/sweep.js';
import { calls, hooks, sagaFinished, sagaTestApp, signedLedger, startSagas } from '../support/saga-app.js';
import { type SagaFixture, startSagaFixture } from '../support/saga-fixture.js';
import { count, urls } from '../support/services.js';

let fx: SagaFixture;
let queue: Queue;

beforeAll(async () => {
  fx = await startSagaFixture(sagaTestApp);
  queue = new Queue(sagaQueue, { connection: { url: urls.redis }, prefix: fx.env.config.bullmqPrefix });
});

afterAll(async () => {
  await queue?.close();
  await fx?.stop();
});

const ledger = (id: string) => signedLedger(fx.env.knex, id);

const finished = (id: string) => sagaFinished(fx.env.knex, id);

const outboxDrained = () =>
  waitUntil(
    async () => (await count(fx.env.knex, 'dw_outbox', { delivered_at: null })) === 0,
    'the outbox to drain',
  );

describe('saga timeouts, deadlines, failed compensations and the recovery sweep', () => {
  it('counts a step past its timeoutMs as a failed attempt', async () => {
    const [id] = await startSagas(fx.env.config.exchange, [{ saga: 'timed' }]);
    expect((await finished(id!)).status).toBe('completed');
    expect(await ledger(id!)).toEqual(['+quick', '+slow']);
    const slow = await fx.env.knex('dw_saga_steps').where({ saga_id: id, step: 'slow' }).first();
    expect(slow).toMatchObject({ status: 'completed', attempts: 2 });
    expect(calls.get(`${id}/execute/slow`)).toBe(2);
  });

  it('compensates a saga past its deadline; a deadline firing after the end is ignored', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    hooks.set('deadlined/wait/execute', async (ctx) => {
      if (ctx.state.hold) await gate;
    });
    try {
      const [late, quick] = await startSagas(fx.env.config.exchange, [
        { saga: 'deadlined', state: { hold: true } },
        { saga: 'deadlined' },
      ]);
      const saga = await finished(late!);
      release();
      expect(saga.status).toBe('compensated');
      expect(saga.last_error).toMatchObject({ name: 'SagaDeadlineError' });
      expect((await finished(quick!)).status).toBe('completed');
      // The quick saga's timer fires later and must change nothing.
      await waitUntil(
        async () => (await queue.getJobState(deadlineJobId(quick!, 0))) === 'completed',
        'the deadline timer of the completed saga to fire',
      );
      expect((await fx.env.knex('dw_sagas').where({ id: quick }).first()).status).toBe('completed');
      expect(await ledger(quick!)).toEqual(['+first', '+wait']);
      // The held step's late finish lost the optimistic check: its effect never committed.
      await waitUntil(() => calls.get(`${late}/execute/wait`), 'the held step to go on');
      expect(await ledger(late!)).toEqual(['+first', '-first']);
    } finally {
      release();
      hooks.clear();
    }
  });

  it('leaves a saga failed with a dead letter when a compensation keeps failing; a replay resumes it', async () => {
    const [id] = await startSagas(fx.env.config.exchange, [
      { saga: 'sequential', state: { fail: { s3: -1 }, failCompensation: { s1: -1 } } },
    ]);
    const saga = await finished(id!);
    expect(saga.status).toBe('failed');
    expect(await ledger(id!)).toEqual(['+s1', '+s2', '-s2']);
    const dead = await fx.env.knex('dw_dead_letters').where({ saga_id: id }).orderBy('id');
    expect(dead.map((d) => [d.reason, d.message_id, d.attempts])).toEqual([
      ['step-failed', `${id}:execute:s3`, 3],
      ['compensation-failed', `${id}:compensate:s1`, 3],
    ]);
    expect(dead[1]).toMatchObject({ source: 'saga', queue: sagaQueue, step: 's1', phase: 'compensate' });

    // A person fixes the cause (here: the saga's own failure switch), then replays the dead letter.
    await fx.env
      .knex('dw_sagas')
      .where({ id })
      .update({ state: JSON.stringify({ fail: { s3: -1 } }) });
    expect(await retryCompensation(fx.env.knex, { sagaId: id!, step: 's1' })).toBe('resumed');
    expect(await retryCompensation(fx.env.knex, { sagaId: id!, step: 's1' })).toBe('not-failed');
    expect((await finished(id!)).status).toBe('compensated');
    expect(await ledger(id!)).toEqual(['+s1', '+s2', '-s2', '-s1']);
  });

  it('the sweep resumes a saga whose jobs Redis lost, without running any step twice', async () => {
    const [id] = await startSagas(fx.env.config.exchange, [{ saga: 'stalling', state: { fail: { p2: 1 } } }]);
    // p1 done, p2 failed once and waits a minute for its retry, as a delayed BullMQ job.
    await waitUntil(
      async () =>
        (await fx.env.knex('dw_saga_steps').where({ saga_id: id, step: 'p2' }).first())?.attempts === 1,
      'p2 to fail once',
    );
    await outboxDrained();
    const sweep = () =>
      sweepOnce({ app: sagaTestApp, knex: fx.env.knex, queue, staleAfterMs: 0, log: silentLogger });
    expect(await sweep()).toBe(0); // the delayed retry is alive: nothing to do

    await fx.stopWorker();
    await deleteRedisKeys(urls.redis, `${fx.env.config.bullmqPrefix}:${sagaQueue}:*`); // Redis lost its data
    expect(await sweep()).toBe(1);
    expect(await sweep()).toBe(0); // the new job is pending in the outbox now

    await fx.startWorker({ sagaSweepIntervalMs: 100, sagaStaleAfterMs: 100 });
    const saga = await finished(id!);
    expect(saga).toMatchObject({ status: 'completed', generation: 1 });
    expect(await ledger(id!)).toEqual(['+p1', '+p2', '+p3']);
    expect(calls.get(`${id}/execute/p1`)).toBe(1);
    expect(await fx.env.knex('dw_saga_steps').where({ saga_id: id, step: 'p2' }).first()).toMatchObject({
      status: 'completed',
      attempts: 2,
    });
  });

  it('a graceful stop lets the step in flight commit; the next worker carries the saga on', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    hooks.set('sequential/s2/execute', async (ctx) => {
      if (ctx.state.hold) await gate;
    });
    try {
      const [id] = await startSagas(fx.env.config.exchange, [{ saga: 'sequential', state: { hold: true } }]);
      await waitUntil(() => calls.get(`${id}/execute/s2`), 's2 to be running');
      const stopping = fx.stopWorker(20_000);
      release();
      expect(await stopping).toBe(true);
      expect(await ledger(id!)).toEqual(['+s1', '+s2']);
      await fx.startWorker();
      expect((await finished(id!)).status).toBe('completed');
      expect(await ledger(id!)).toEqual(['+s1', '+s2', '+s3', '+s4']);
      expect(calls.get(`${id}/execute/s2`)).toBe(1);
    } finally {
      release();
      hooks.clear();
    }
  });
});
