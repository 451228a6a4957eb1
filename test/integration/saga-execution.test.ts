import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sagaQueue, sagaStepType } from '../../shared/saga/jobs.js';
import { waitUntil } from '../../shared/wait.js';
import { publishRaw } from '../support/amqp.js';
import {
  calls,
  hooks,
  keys,
  sagaFinished,
  sagaTestApp,
  signedLedger,
  startSagas,
  type TestState,
} from '../support/saga-app.js';
import { type SagaFixture, startSagaFixture } from '../support/saga-fixture.js';
import { count, urls } from '../support/services.js';

let fx: SagaFixture;

beforeAll(async () => {
  fx = await startSagaFixture(sagaTestApp);
});

afterAll(() => fx?.stop());

const ledger = (id: string) => signedLedger(fx.env.knex, id);

const finished = (id: string) => sagaFinished(fx.env.knex, id);

describe('saga execution', () => {
  it('runs the steps in order and merges their results into the state', async () => {
    const [id] = await startSagas(fx.env.config.exchange, [{ saga: 'sequential', state: { given: 1 } }]);
    const saga = await finished(id!);
    expect(saga.status).toBe('completed');
    expect(saga.state).toEqual({ given: 1, s1: true, s2: true, s3: true, s4: true });
    expect(await ledger(id!)).toEqual(['+s1', '+s2', '+s3', '+s4']);
  });

  it('for each step index, a failure there compensates exactly the steps before it, in reverse', async () => {
    const steps = ['s1', 's2', 's3', 's4'];
    const ids = await startSagas(
      fx.env.config.exchange,
      steps.map((s) => ({ saga: 'sequential', state: { fail: { [s]: -1 } } })),
    );
    for (const [i, id] of ids.entries()) {
      const saga = await finished(id);
      expect(saga.status).toBe('compensated');
      const before = steps.slice(0, i);
      expect(await ledger(id)).toEqual([
        ...before.map((s) => `+${s}`),
        ...[...before].reverse().map((s) => `-${s}`),
      ]);
      // The failing step made its 3 attempts; nothing of it committed.
      expect(calls.get(`${id}/execute/${steps[i]}`)).toBe(3);
      expect(saga.last_error.message).toContain(steps[i]);
    }
  });

  it('retries a failing step, then goes on; a non-retryable error skips the retries', async () => {
    const [retried, fatal] = await startSagas(fx.env.config.exchange, [
      { saga: 'sequential', state: { fail: { s2: 2 } } },
      { saga: 'sequential', state: { fatal: 's3' } },
    ]);
    expect((await finished(retried!)).status).toBe('completed');
    expect(await ledger(retried!)).toEqual(['+s1', '+s2', '+s3', '+s4']);
    const s2 = await fx.env.knex('dw_saga_steps').where({ saga_id: retried, step: 's2' }).first();
    expect(s2).toMatchObject({ status: 'completed', attempts: 3 });
    // Every attempt saw the same idempotency key; only the committed attempt's event was sent.
    expect([...(keys.get(`${retried}/execute/s2`) ?? [])]).toEqual([`${retried}:execute:s2`]);
    const events = await fx.env
      .knex('dw_outbox')
      .where({ destination: 'saga_test_events', type: 's2.execute' })
      .whereRaw("payload->>'sagaId' = ?", [retried!]);
    expect(events.map((e) => e.payload.attempt)).toEqual([3]);

    expect((await finished(fatal!)).status).toBe('compensated');
    expect(calls.get(`${fatal}/execute/s3`)).toBe(1);
    expect(await ledger(fatal!)).toEqual(['+s1', '+s2', '-s2', '-s1']);
  });

  it('skips steps without a compensation (bare functions) and honours per-step retry', async () => {
    const [id] = await startSagas(fx.env.config.exchange, [{ saga: 'mixed', state: { fail: { last: -1 } } }]);
    expect((await finished(id!)).status).toBe('compensated');
    expect(await ledger(id!)).toEqual(['+pair', '+bare', '+options', '-options', '-pair']);

    const [twice] = await startSagas(fx.env.config.exchange, [
      { saga: 'mixed', state: { fail: { options: -1 } } },
    ]);
    expect((await finished(twice!)).status).toBe('compensated');
    expect(calls.get(`${twice}/execute/options`)).toBe(2); // its own retry: 2 attempts
    expect(await ledger(twice!)).toEqual(['+pair', '+bare', '-pair']);
  });

  it('runs a parallel group concurrently, merges results, and compensates it as a group', async () => {
    const [ok, failed] = await startSagas(fx.env.config.exchange, [
      { saga: 'fan-out' },
      { saga: 'fan-out', state: { fail: { e: -1 } } },
    ]);
    const done = await finished(ok!);
    expect(done.status).toBe('completed');
    expect(done.state).toMatchObject({ a: 1, b: 1, c: 1, d: 1, e: 1 });
    const okLedger = await ledger(ok!);
    expect(okLedger[0]).toBe('+a');
    expect(okLedger.slice(1, 4).sort()).toEqual(['+b', '+c', '+d']);
    expect(okLedger[4]).toBe('+e');

    expect((await finished(failed!)).status).toBe('compensated');
    const failedLedger = await ledger(failed!);
    expect(failedLedger).toHaveLength(7);
    expect(failedLedger.slice(1, 4).sort()).toEqual(['+b', '+c', '+d']);
    // b and c undone (in either order), d has no compensation, then a.
    expect(failedLedger.slice(4, 6).sort()).toEqual(['-b', '-c']);
    expect(failedLedger[6]).toBe('-a');
  });

  it('a failure inside a parallel group compensates its completed siblings, then the earlier steps', async () => {
    const [id] = await startSagas(fx.env.config.exchange, [{ saga: 'fan-out', state: { fatal: 'c' } }]);
    expect((await finished(id!)).status).toBe('compensated');
    const rows = await ledger(id!);
    expect(rows.filter((r) => r.startsWith('+c'))).toEqual([]);
    expect(rows).not.toContain('+e');
    // Whichever of b and d completed before the saga turned: b undone if it ran; a undone last.
    expect(rows.at(-1)).toBe('-a');
    expect(rows.includes('+b')).toBe(rows.includes('-b'));
    expect(rows.filter((r) => r === '-a')).toHaveLength(1);
  });

  it('parallel siblings committing at once both land, without re-running their code', async () => {
    // b and c wait for each other inside their transactions, so both update the saga from the same
    // version: the second waits for the first's row lock and merges its result on top.
    let arrived = 0;
    let release!: () => void;
    const barrier = new Promise<void>((r) => {
      release = r;
    });
    const meet = async () => {
      if (++arrived >= 2) release();
      await barrier;
    };
    hooks.set('fan-out/b/execute', meet);
    hooks.set('fan-out/c/execute', meet);
    try {
      const [id] = await startSagas(fx.env.config.exchange, [{ saga: 'fan-out' }]);
      const saga = await finished(id!);
      expect(saga.status).toBe('completed');
      expect(saga.state).toMatchObject({ a: 1, b: 1, c: 1, d: 1, e: 1 });
      expect((await ledger(id!)).sort()).toEqual(['+a', '+b', '+c', '+d', '+e']);
      const runs = (calls.get(`${id}/execute/b`) ?? 0) + (calls.get(`${id}/execute/c`) ?? 0);
      expect(runs).toBe(2); // neither ran again: group members do not conflict on the version
    } finally {
      hooks.clear();
    }
  });

  it('starting the same saga id twice is a no-op', async () => {
    const id = randomUUID();
    await startSagas(fx.env.config.exchange, [{ saga: 'sequential', id, state: { first: true } }]);
    expect((await finished(id)).status).toBe('completed');
    // A second start (another message, same saga id) after the first one finished...
    const handled = await count(fx.env.knex, 'dw_inbox');
    await startSagas(fx.env.config.exchange, [{ saga: 'sequential', id, state: { fail: { s1: -1 } } }]);
    await waitUntil(
      async () => (await count(fx.env.knex, 'dw_inbox')) > handled,
      'the second start to be handled',
    );
    // ...changed nothing: same state, same single run.
    const saga = await fx.env.knex('dw_sagas').where({ id }).first();
    expect(saga).toMatchObject({ status: 'completed', state: expect.objectContaining({ first: true }) });
    expect(await ledger(id)).toEqual(['+s1', '+s2', '+s3', '+s4']);
    expect(await count(fx.env.knex, 'dw_saga_steps', { saga_id: id })).toBe(4);
  });

  it('refuses to start a saga the app does not register', async () => {
    await publishRaw(fx.env.config.exchange, [
      {
        routingKey: 'StartStraySaga',
        body: {},
        properties: { messageId: randomUUID(), type: 'StartStraySaga' },
      },
    ]);
    const dead = await waitUntil(
      () => fx.env.knex('dw_dead_letters').where({ type: 'StartStraySaga' }).first(),
      'the stray start to be dead-lettered',
    );
    expect(dead).toMatchObject({ reason: 'handler-failed', attempts: 1 });
    expect(dead.error.message).toContain('saga stray is not registered in app test');
    expect(await count(fx.env.knex, 'dw_sagas', { name: 'stray' })).toBe(0);
  });

  it('a duplicated BullMQ job runs nothing twice', async () => {
    const [id] = await startSagas(fx.env.config.exchange, [
      { saga: 'sequential', state: { fail: { s4: -1 } } },
    ]);
    expect((await finished(id!)).status).toBe('compensated');
    const before = await ledger(id!);
    const queue = new Queue(sagaQueue, {
      connection: { url: urls.redis },
      prefix: fx.env.config.bullmqPrefix,
    });
    try {
      const jobs = ['s1', 's2', 's3', 's4'].flatMap((step) =>
        (['execute', 'compensate'] as const).map((phase) => ({
          name: sagaStepType,
          data: {
            messageId: randomUUID(),
            type: sagaStepType,
            payload: { kind: 'step', sagaId: id, saga: 'sequential', phase, step },
            headers: {},
          },
          opts: { jobId: randomUUID() },
        })),
      );
      const added = await queue.addBulk(jobs);
      await waitUntil(
        async () => (await Promise.all(added.map((j) => j.getState()))).every((s) => s === 'completed'),
        'the duplicated jobs to be processed',
      );
    } finally {
      await queue.close();
    }
    expect(await ledger(id!)).toEqual(before);
    expect(before).toEqual(['+s1', '+s2', '+s3', '-s3', '-s2', '-s1']);
  });

  it('runs many concurrent sagas without interference', async () => {
    const starts = Array.from({ length: 40 }, (_, i) => ({
      saga: i % 2 ? 'fan-out' : 'sequential',
      state: (i % 4 === 0 ? { fail: { s3: -1 } } : i % 4 === 1 ? { fail: { e: 1 } } : {}) as TestState,
    }));
    const ids = await startSagas(fx.env.config.exchange, starts);
    for (const [i, id] of ids.entries()) {
      const saga = await finished(id);
      const rows = await ledger(id);
      if (i % 4 === 0) {
        expect(saga.status).toBe('compensated');
        expect(rows).toEqual(['+s1', '+s2', '-s2', '-s1']);
      } else if (i % 2 === 0) {
        expect(saga.status).toBe('completed');
        expect(rows).toEqual(['+s1', '+s2', '+s3', '+s4']);
      } else {
        expect(saga.status).toBe('completed');
        expect(rows.sort()).toEqual(['+a', '+b', '+c', '+d', '+e']);
      }
    }
    expect(await count(fx.env.knex, 'dw_sagas', { status: 'running' })).toBe(0);
  });
});
