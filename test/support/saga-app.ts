import { randomUUID } from 'node:crypto';
import type { Knex } from 'knex';
import { z } from 'zod';
import { defineApp, defineHandler } from '../../shared/app.js';
import { NonRetryableError } from '../../shared/errors.js';
import { defineSaga, type SagaDefinition, type StepContext } from '../../shared/saga/definition.js';
import { waitUntil } from '../../shared/wait.js';
import { publishRaw } from './amqp.js';

/**
 * Sagas for the saga integration tests. Each step that commits writes a trip_ledger row
 * (trip_id = saga id), so a test reads back exactly which effects happened, in order.
 * The saga's state says where to fail: `fail[step] = n` fails the first n attempts (-1: all),
 * `fatal` names a step that throws NonRetryableError, `failCompensation[step]` likewise.
 */
export interface TestState {
  fail?: Record<string, number>;
  fatal?: string;
  failCompensation?: Record<string, number>;
  [key: string]: unknown;
}
type Ctx = StepContext<TestState>;

/** Calls of each step function per saga, rolled back or not (the ledger only has committed ones). */
export const calls = new Map<string, number>();
/** Idempotency keys each step saw, per saga/phase/step. */
export const keys = new Map<string, Set<string>>();
/** Test hooks run inside a step before it records anything (barriers, gates). */
export const hooks = new Map<string, (ctx: Ctx) => Promise<void> | void>();

function fails(map: Record<string, number> | undefined, ctx: Ctx): boolean {
  const n = map?.[ctx.step];
  return n !== undefined && (n < 0 || ctx.attempt <= n);
}

async function effect(ctx: Ctx, action: 'execute' | 'compensate'): Promise<void> {
  const key = `${ctx.sagaId}/${action}/${ctx.step}`;
  calls.set(key, (calls.get(key) ?? 0) + 1);
  keys.set(key, (keys.get(key) ?? new Set()).add(ctx.idempotencyKey));
  await hooks.get(`${ctx.sagaName}/${ctx.step}/${action}`)?.(ctx);
  if (action === 'execute' && ctx.state.fatal === ctx.step) throw new NonRetryableError(`${ctx.step}: fatal`);
  if (fails(action === 'execute' ? ctx.state.fail : ctx.state.failCompensation, ctx)) {
    throw new Error(`${ctx.step} ${action} failed on attempt ${ctx.attempt}`);
  }
  await ctx.trx('trip_ledger').insert({ trip_id: ctx.sagaId, step: ctx.step, action });
  // An event for other services, sent only if this step commits.
  ctx.send('saga_test_events', `${ctx.step}.${action}`, { sagaId: ctx.sagaId, attempt: ctx.attempt });
}

const run = (result?: Record<string, unknown>) => async (ctx: Ctx) => {
  await effect(ctx, 'execute');
  return result as Partial<TestState> | undefined;
};
const undo = (ctx: Ctx) => effect(ctx, 'compensate');
const fast = { attempts: 3, backoffMs: 5, maxBackoffMs: 50, jitter: 0.2 };

/** Four steps, every one with a compensation. */
export const sequential = defineSaga<TestState>('sequential', { retry: fast })
  .step('s1', [run({ s1: true }), undo])
  .step('s2', { run: run({ s2: true }), compensate: undo })
  .step('s3', [run({ s3: true }), undo])
  .step('s4', [run({ s4: true }), undo]);

/** A bare function (nothing to undo), pairs and full options side by side. */
export const mixed = defineSaga<TestState>('mixed', { retry: fast })
  .step('pair', [run(), undo])
  .step('bare', run())
  .step('options', { run: run(), compensate: undo, retry: { attempts: 2 } })
  .step('last', run());

/** a, then b | c | d at once, then e. */
export const fanOut = defineSaga<TestState>('fan-out', { retry: fast })
  .step('a', [run({ a: 1 }), undo])
  .parallel([
    { name: 'b', run: run({ b: 1 }), compensate: undo },
    { name: 'c', run: run({ c: 1 }), compensate: undo },
    { name: 'd', run: run({ d: 1 }) },
  ])
  .step('e', [run({ e: 1 }), undo]);

/** A step with a timeout, and a saga with a deadline. */
export const timed = defineSaga<TestState>('timed', { retry: fast })
  .step('quick', [run(), undo])
  .step('slow', {
    run: async (ctx) => {
      await effect(ctx, 'execute');
      if (ctx.attempt === 1) await new Promise((r) => setTimeout(r, 5_000));
    },
    compensate: undo,
    timeoutMs: 1000,
  });

export const deadlined = defineSaga<TestState>('deadlined', { retry: fast, deadlineMs: 3000 })
  .step('first', [run(), undo])
  .step('wait', [run(), undo]);

/** p2's retry waits a minute: long enough for a test to lose the delayed job in Redis. */
export const stalling = defineSaga<TestState>('stalling', { retry: fast })
  .step('p1', [run(), undo])
  .step('p2', {
    run: run(),
    compensate: undo,
    retry: { attempts: 3, backoffMs: 60_000, maxBackoffMs: 60_000 },
  })
  .step('p3', run());

export const sagas: SagaDefinition<TestState>[] = [sequential, mixed, fanOut, timed, deadlined, stalling];

const StartTest = z.object({ saga: z.string(), id: z.string(), state: z.record(z.string(), z.unknown()) });

export const sagaTestApp = defineApp({
  name: 'test',
  handlers: [
    defineHandler('StartTestSaga', StartTest, async (message, ctx) => {
      const saga = sagas.find((s) => s.name === message.saga);
      if (!saga) throw new NonRetryableError(`no saga ${message.saga}`);
      await ctx.startSaga(saga, message.state as TestState, { id: message.id });
    }),
    // Starts a saga the app does not register: refused, so it cannot sit `running` for ever.
    defineHandler('StartStraySaga', z.object({}), async (_message, ctx) => {
      await ctx.startSaga(
        defineSaga('stray').step('x', () => {}),
        {},
      );
    }),
  ],
  sagas,
});

/** Publishes StartTestSaga messages the way any AMQP client would. */
export async function startSagas(
  exchange: string,
  starts: Array<{ saga: string; id?: string; state?: TestState }>,
): Promise<string[]> {
  const withIds = starts.map((s) => ({ ...s, id: s.id ?? randomUUID(), state: s.state ?? {} }));
  await publishRaw(
    exchange,
    withIds.map((body) => ({
      routingKey: 'StartTestSaga',
      body,
      properties: { messageId: randomUUID(), type: 'StartTestSaga', contentType: 'application/json' },
    })),
  );
  return withIds.map((s) => s.id);
}

/** A saga's trip_ledger as `+step` (executed) and `-step` (compensated), in commit order. */
export async function signedLedger(knex: Knex, sagaId: string): Promise<string[]> {
  return (await knex('trip_ledger').where({ trip_id: sagaId }).orderBy('id')).map(
    (r: { step: string; action: string }) => `${r.action === 'execute' ? '+' : '-'}${r.step}`,
  );
}

/** Waits until the saga is neither running nor compensating; returns its row. */
export function sagaFinished(knex: Knex, sagaId: string) {
  return waitUntil(async () => {
    const row = await knex('dw_sagas').where({ id: sagaId }).first();
    return row && !['running', 'compensating'].includes(row.status) ? row : undefined;
  }, `saga ${sagaId} to finish`);
}
