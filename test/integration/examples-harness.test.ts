import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { bookTripSaga, type TripState, tripSteps } from '../../examples/app/book-trip.js';
import { app } from '../../examples/app/index.js';
import { defineApp, defineHandler, defineSaga, StepTimeoutError } from '../../index.js';
import { createTestHarness, type TestHarness } from '../../testing/index.js';
import { createTestEnv, type TestEnv } from '../support/services.js';

/*
 * The example app's scenarios through durable-worker/testing: the worker's own message processor
 * and step runner against a real Postgres, no RabbitMQ or Redis, time moved by the test. Each
 * scenario's wall time is logged (never asserted): it should be well under a second.
 */

let env: TestEnv;
let h: TestHarness;
let started = 0;

beforeAll(async () => {
  env = await createTestEnv();
});

afterAll(async () => {
  await h?.close();
  await env?.teardown();
});

beforeEach(async (context) => {
  await h?.close();
  // The harness migrates the database itself (durable-worker's tables and the app's).
  h = await createTestHarness(app, { knex: env.knex });
  started = performance.now();
  context.onTestFinished(() => {
    console.log(`${context.task.name}: ${(performance.now() - started).toFixed(0)} ms`);
  });
});

async function ledger(tripId: string): Promise<string[]> {
  const rows = await env.knex('trip_ledger').where({ trip_id: tripId }).orderBy('id');
  return rows.map((r: { step: string; action: string }) => `${r.action}:${r.step}`);
}

const allExecuted = tripSteps.map((s) => `execute:${s}`);

function trip(extra: Partial<TripState> = {}) {
  return { tripId: randomUUID(), customerId: 'c-1', amount: 120, ...extra };
}

describe('JoinMeeting', () => {
  it('stores the participant and sends UserJoinedMeeting to both queues, once for a duplicate', async () => {
    const id = randomUUID();
    const meetingId = randomUUID();
    h.publish('JoinMeeting', { userId: 7, meetingId }, { id });
    await h.idle();
    h.publish('JoinMeeting', { userId: 7, meetingId }, { id });
    await h.idle();

    expect(await env.knex('meeting_participants').where({ meeting_id: meetingId }).select('user_id')).toEqual(
      [{ user_id: '7' }],
    );
    const forMeeting = (queue: string) =>
      h.sent<{ meetingId: string }>(queue).filter((j) => j.payload.meetingId === meetingId);
    const notifications = forMeeting('user_notification_events');
    expect(notifications).toHaveLength(1);
    expect(notifications[0]).toMatchObject({
      type: 'UserJoinedMeeting',
      headers: { correlationId: id, causationId: id },
    });
    expect(forMeeting('user_ecst_events')).toHaveLength(1);
    expect(h.history.filter((e) => e.kind === 'message' && e.messageId === id).map((e) => e.outcome)).toEqual(
      ['handled', 'duplicate'],
    );
    // The relay's claim marked the rows delivered: nothing is left pending.
    const pending = await env.knex('dw_outbox').whereNull('delivered_at').count('* as n').first();
    expect(Number(pending?.n)).toBe(0);
  });

  it('dead-letters a payload that does not match the schema', async () => {
    const id = h.publish('JoinMeeting', { userId: 7 });
    await h.idle();
    const [dead] = await h.deadLetters({ type: 'JoinMeeting' });
    expect(dead).toMatchObject({ messageId: id, reason: 'invalid-payload', attempts: 1 });
  });
});

describe('BookTrip', () => {
  it('happy path: completed, every step once', async () => {
    const t = trip();
    h.publish('BookTrip', t);
    await h.idle();
    const saga = await h.saga(t.tripId);
    expect(saga).toMatchObject({ name: 'book-trip', status: 'completed', lastError: null });
    expect(saga?.steps?.map((s) => [s.name, s.phase, s.status, s.attempts])).toEqual(
      tripSteps.map((s) => [s, 'execute', 'completed', 1]),
    );
    expect(await ledger(t.tripId)).toEqual(allExecuted);
  });

  it('a step that always fails: retried after its backoff, then compensated in reverse', async () => {
    const t = trip({ failAt: 'book-hotel' });
    h.publish('BookTrip', t);
    await h.idle();
    // Attempt 1 failed; attempt 2 waits for its backoff (100 ms ± 20%): nothing more happens yet.
    expect((await h.saga(t.tripId))?.status).toBe('running');
    expect(await ledger(t.tripId)).toEqual(['execute:debit-customer', 'execute:book-flight']);

    await h.advanceTime(1000);
    const saga = await h.saga(t.tripId);
    expect(saga?.status).toBe('compensated');
    expect(saga?.lastError?.message).toMatch(/^step book-hotel: book-hotel failed \(attempt 3/);
    expect(saga?.steps?.find((s) => s.name === 'book-hotel')).toMatchObject({
      status: 'failed',
      attempts: 3,
    });
    expect(await ledger(t.tripId)).toEqual([
      'execute:debit-customer',
      'execute:book-flight',
      'compensate:book-flight',
      'compensate:debit-customer',
    ]);
    const dead = await h.deadLetters({ reason: 'step-failed' });
    expect(dead.filter((d) => d.sagaId === t.tripId)).toMatchObject([
      { step: 'book-hotel', phase: 'execute', attempts: 3 },
    ]);
  });

  it('a step that fails once: completed after one retry', async () => {
    const t = trip({ failAt: 'book-flight', failTimes: 1 });
    h.publish('BookTrip', t);
    await h.idle();
    await h.advanceTime(200);
    const saga = await h.saga(t.tripId);
    expect(saga?.status).toBe('completed');
    expect(saga?.steps?.find((s) => s.name === 'book-flight')).toMatchObject({
      attempts: 2,
      status: 'completed',
    });
    expect(await ledger(t.tripId)).toEqual(allExecuted);
  });

  it('the first step fails for good: compensated with nothing to undo', async () => {
    const t = trip({ failAt: 'debit-customer' });
    h.publish('BookTrip', t);
    await h.idle();
    await h.advanceTime(1000);
    const saga = await h.saga(t.tripId);
    expect(saga?.status).toBe('compensated');
    expect(saga?.steps?.map((s) => [s.name, s.phase, s.status])).toEqual([
      ['debit-customer', 'execute', 'failed'],
    ]);
    expect(await ledger(t.tripId)).toEqual([]);
  });

  it('failStep: faults on demand, without changing the message', async () => {
    const t = trip();
    h.failStep(bookTripSaga, 'book-hotel', 2);
    h.publish('BookTrip', t);
    await h.idle();
    await h.advanceTime(1000);
    const saga = await h.saga(t.tripId);
    expect(saga?.status).toBe('completed');
    expect(saga?.steps?.find((s) => s.name === 'book-hotel')).toMatchObject({ attempts: 3 });
  });

  it('failCompensation: a compensation that fails for good leaves the saga failed', async () => {
    const t = trip({ failAt: 'book-hotel' });
    h.failCompensation('book-trip', 'book-flight', 3, new Error('refund API down'));
    h.publish('BookTrip', t);
    await h.idle();
    await h.advanceTime(2000);
    const saga = await h.saga(t.tripId);
    expect(saga?.status).toBe('failed');
    expect(saga?.lastError?.message).toBe('compensation of book-flight: refund API down');
  });

  it('crashAfterCommit: the job handed out again is recognised, the step runs once', async () => {
    const t = trip();
    h.crashAfterCommit('book-flight');
    h.publish('BookTrip', t);
    await h.idle();
    expect((await h.saga(t.tripId))?.status).toBe('completed');
    expect(await ledger(t.tripId)).toEqual(allExecuted);
    const flight = h.history.filter(
      (e) => e.kind === 'step' && e.sagaId === t.tripId && e.step === 'book-flight',
    );
    expect(flight.map((e) => e.kind === 'step' && [e.restarted, e.outcome])).toEqual([
      [false, 'completed'],
      [true, 'duplicate'],
    ]);
  });
});

describe('SendInvoice', () => {
  it('fails twice at once, then after a delay: handled on attempt 4 once the time moves', async () => {
    const invoiceId = randomUUID();
    const id = h.publish('SendInvoice', { invoiceId, failTimes: 3 });
    await h.idle();
    // Attempts 1-3 ran (2 immediate retries), attempt 4 waits in the retry queue for ~1 s.
    expect(await env.knex('invoices_sent').where({ invoice_id: invoiceId })).toEqual([]);
    await h.advanceTime(500);
    expect(await env.knex('invoices_sent').where({ invoice_id: invoiceId })).toEqual([]);
    await h.advanceTime(1000);
    expect(await env.knex('invoices_sent').where({ invoice_id: invoiceId })).toHaveLength(1);
    expect(h.history.filter((e) => e.kind === 'message' && e.messageId === id).map((e) => e.outcome)).toEqual(
      ['retry-scheduled', 'handled'],
    );
  });

  it('an outage that outlasts every retry ends in the dead letters with 5 attempts', async () => {
    await env.knex('invoice_outage').insert({});
    try {
      const invoiceId = randomUUID();
      const id = h.publish('SendInvoice', { invoiceId });
      await h.idle();
      await h.advanceTime(10_000);
      const [dead] = (await h.deadLetters({ type: 'SendInvoice' })).filter((d) => d.messageId === id);
      expect(dead).toMatchObject({ reason: 'handler-failed', attempts: 5, queue: 'dw.messages.example' });
      expect(dead?.error.message).toMatch(/the invoicing service is down/);
    } finally {
      await env.knex('invoice_outage').delete();
    }
  });
});

describe('time under control', () => {
  const Slow = z.object({ id: z.string() });
  const slowSaga = defineSaga<{ id: string }>('slow')
    .step('wait', {
      // Waits until the runner gives up on it (its signal aborts at the timeout).
      run: (ctx) =>
        new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason))),
      timeoutMs: 5000,
      retry: { attempts: 2, backoffMs: 1000 },
      compensate: () => {},
    })
    .step('never', () => {});
  const slowApp = defineApp({
    name: 'slow',
    handlers: [
      defineHandler('StartSlow', Slow, async (m, ctx) => {
        await ctx.startSaga(slowSaga, m, { id: m.id });
      }),
    ],
    sagas: [slowSaga],
  });

  it('step timeouts fire when the time moves past them, then the step is retried', async () => {
    // The database holds the example app's migrations: another app must not migrate it.
    const slow = await createTestHarness(slowApp, { knex: env.knex, migrate: false });
    try {
      const id = randomUUID();
      slow.publish('StartSlow', { id });
      // Attempt 1 is left waiting for its timeout. (Virtual time also flows with the real time,
      // so the test keeps a margin rather than stopping 1 ms short of the timeout.)
      await slow.advanceTime(4000);
      expect((await slow.saga(id))?.steps).toEqual([]);
      await slow.advanceTime(1000);
      const afterFirst = await slow.saga(id);
      expect(afterFirst?.steps?.[0]).toMatchObject({ name: 'wait', attempts: 1, status: 'running' });
      expect(afterFirst?.steps?.[0]?.error?.name).toBe(StepTimeoutError.name);
      // The retry after ~1 s times out too: the last attempt, so the saga compensates.
      await slow.advanceTime(7000);
      expect(await slow.saga(id)).toMatchObject({ status: 'compensated' });
    } finally {
      await slow.close();
    }
  });

  it('a saga deadline compensates when the time passes it', async () => {
    const deadlineSaga = defineSaga<{ id: string }>('deadline', { deadlineMs: 10_000 })
      .step('reserve', [() => {}, () => {}])
      .step('confirm', { run: () => {}, retry: { attempts: 5, backoffMs: 30_000, jitter: 0 } });
    const deadlineApp = defineApp({
      name: 'deadline',
      handlers: [
        defineHandler('StartDeadline', Slow, async (m, ctx) => {
          await ctx.startSaga(deadlineSaga, m, { id: m.id });
        }),
      ],
      sagas: [deadlineSaga],
    });
    const d = await createTestHarness(deadlineApp, { knex: env.knex, migrate: false });
    try {
      const id = randomUUID();
      d.failStep(deadlineSaga, 'confirm', 1, new Error('not yet'));
      d.publish('StartDeadline', { id });
      await d.idle();
      // confirm's retry is 30 s away; the deadline at 10 s comes first.
      await d.advanceTime(9000);
      expect((await d.saga(id))?.status).toBe('running');
      await d.advanceTime(1000);
      const saga = await d.saga(id);
      expect(saga).toMatchObject({ status: 'compensated', lastError: { name: 'SagaDeadlineError' } });
      expect(saga?.steps?.map((s) => [s.name, s.phase, s.status])).toEqual([
        ['reserve', 'execute', 'completed'],
        ['confirm', 'execute', 'running'],
        ['reserve', 'compensate', 'completed'],
      ]);
      // The retry still fires at 30 s and finds the saga compensated: nothing runs.
      await d.advanceTime(30_000);
      expect(d.history.at(-1)).toMatchObject({ kind: 'step', step: 'confirm', outcome: 'not-applicable' });
    } finally {
      await d.close();
    }
  });
});

describe('harness mechanics', () => {
  const Ping = z.object({ n: z.number() });
  const quickSaga = defineSaga<{ n: number }>('quick')
    .step('one', { run: async (ctx) => ({ n: ctx.state.n + 1 }), timeoutMs: 5000 })
    .parallel([
      { name: 'two-a', run: async (ctx) => void (await ctx.trx.raw('select 1')), timeoutMs: 5000 },
      { name: 'two-b', run: () => {}, timeoutMs: 5000 },
    ]);
  const pingApp = defineApp({
    name: 'ping',
    handlers: [
      defineHandler('Ping', Ping, (m, ctx) => {
        ctx.publish('Pong', { n: m.n + 1 });
      }),
      defineHandler('Pong', Ping, async (m, ctx) => {
        ctx.send('pongs', 'PongSeen', m);
        await ctx.startSaga(quickSaga, m, { id: `quick-${m.n}` });
      }),
    ],
    sagas: [quickSaga],
  });

  it('events on its own exchange come back to the app; idle() waits for steps that have a timeout', async () => {
    const p = await createTestHarness(pingApp, { knex: env.knex, migrate: false });
    try {
      const id = p.publish('Ping', { n: 41 });
      await p.idle();
      const [pong] = p.published('Pong');
      expect(pong).toMatchObject({ exchange: 'dw.messages', routingKey: 'Pong', payload: { n: 42 } });
      expect(pong?.headers).toMatchObject({ correlationId: id, causationId: id });
      expect(p.sent('pongs')).toMatchObject([
        { type: 'PongSeen', payload: { n: 42 }, headers: { correlationId: id } },
      ]);
      const saga = await p.saga('quick-42');
      expect(saga).toMatchObject({ status: 'completed', state: { n: 43 } });
      expect(saga?.steps?.map((s) => s.name).sort()).toEqual(['one', 'two-a', 'two-b']);
    } finally {
      await p.close();
    }
  });

  it('refuses faults for steps the app does not have', async () => {
    expect(() => h.failStep('book-trip', 'book-train', 1)).toThrow(
      /no step "book-train" in saga "book-trip"/,
    );
    expect(() => h.crashAfterCommit('book-train')).toThrow(
      /no saga of app example has a step named "book-train"/,
    );
    await expect(h.advanceTime(-1)).rejects.toThrow(RangeError);
  });
});
