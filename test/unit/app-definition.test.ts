import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineApp, defineBatchHandler, defineHandler, type HandlerContext } from '../../shared/app.js';
import { DefinitionError } from '../../shared/errors.js';
import { defaultRetryPolicy } from '../../shared/retry-policy.js';
import { defineSaga } from '../../shared/saga/definition.js';

const noop = defineHandler('A', z.object({}), () => {});

describe('defineApp', () => {
  it('groups handlers by type in registration order and resolves retry policies per type', () => {
    const second = defineHandler('A', z.object({}), () => {}, { retry: { immediateRetries: 0 } });
    const app = defineApp({
      name: 'svc',
      handlers: [noop, second, defineHandler('B', z.object({}), () => {})],
    });
    expect(app.handlers.get('A')).toEqual([noop, second]);
    expect(app.retryPolicyFor('A').immediateRetries).toBe(0);
    expect(app.retryPolicyFor('B')).toEqual(defaultRetryPolicy);
  });

  it('a batch handler called for one message (the one-by-one path) gets a batch of one', async () => {
    const seen: unknown[][] = [];
    const handler = defineBatchHandler('C', z.object({ n: z.number() }), (batch) => {
      seen.push(batch.map((entry) => [entry.message, entry.ctx]));
    });
    const ctx = { envelope: { id: 'm1' } } as unknown as HandlerContext;
    await handler.handle({ n: 1 }, ctx);
    expect(seen).toEqual([[[{ n: 1 }, ctx]]]);
    expect(defineApp({ handlers: [handler] }).handlers.get('C')).toEqual([handler]);
  });

  it('refuses a saga with no steps, duplicate step names, or two sagas with one name', () => {
    expect(() => defineApp({ sagas: [defineSaga('empty')] })).toThrow(/saga empty has no steps/);
    const dup = defineSaga('dup')
      .step('a', () => {})
      .step('a', () => {});
    expect(() => defineApp({ sagas: [dup] })).toThrow(/two steps named "a"/);
    const s = () => defineSaga('same').step('a', () => {});
    expect(() => defineApp({ sagas: [s(), s()] })).toThrow(DefinitionError);
  });

  it('refuses conflicting retry policies, bad names and duplicate migrations', () => {
    const r = (type: string) =>
      defineHandler(type, z.object({}), () => {}, { retry: { immediateRetries: 1 } });
    expect(() => defineApp({ handlers: [r('X'), r('X')] })).toThrow(/retry policies on two handlers/);
    expect(() => defineApp({ name: 'bad name' })).toThrow(DefinitionError);
    const m = { name: 'm1', up: async () => {} };
    expect(() => defineApp({ migrations: [m, m] })).toThrow(/two migrations are named "m1"/);
  });
});

describe('defineSaga', () => {
  it('accepts bare functions, [run, compensate] pairs, options and parallel groups', () => {
    const run = () => {};
    const undo = () => {};
    const saga = defineSaga<{ n: number }>('trip', { retry: { attempts: 5 } })
      .step('a', run)
      .step('b', [run, undo])
      .parallel([
        { name: 'c1', run, compensate: undo, retry: { attempts: 1 } },
        { name: 'c2', run },
      ])
      .step('d', { run, timeoutMs: 50 });
    expect(saga.stages.map((stage) => stage.map((s) => s.name))).toEqual([['a'], ['b'], ['c1', 'c2'], ['d']]);
    expect(saga.getStep('b')?.compensate).toBe(undo);
    expect(saga.getStep('a')?.retry.attempts).toBe(5);
    expect(saga.getStep('c1')?.retry.attempts).toBe(1);
    expect(saga.getStep('c2')?.stage).toBe(2);
    expect(saga.getStep('d')?.timeoutMs).toBe(50);
  });

  it('refuses steps that cannot run', () => {
    expect(() => defineSaga('s').step('a', {} as never)).toThrow(/needs a run function/);
    expect(() => defineSaga('s').parallel([])).toThrow(/at least one step/);
    expect(() => defineSaga('s').step('a', { run: () => {}, retry: { attempts: 0 } })).toThrow(/attempts/);
    expect(() => defineSaga('bad name')).toThrow(DefinitionError);
  });
});
