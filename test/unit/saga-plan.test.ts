import { describe, expect, it } from 'vitest';
import { defineApp } from '../../shared/app.js';
import { DefinitionError } from '../../shared/errors.js';
import { defineSaga } from '../../shared/saga/definition.js';
import { stepJobId, stepMessage } from '../../shared/saga/jobs.js';
import { planCompensation, planExecution, retryDelayMs, type StepRecord } from '../../shared/saga/plan.js';

const noop = () => {};
const saga = defineSaga('trip')
  .step('a', [noop, noop])
  .parallel([
    { name: 'b', run: noop, compensate: noop },
    { name: 'c', run: noop },
    { name: 'd', run: noop, compensate: noop },
  ])
  .step('e', [noop, noop]);

const done = (phase: 'execute' | 'compensate', ...steps: string[]): StepRecord[] =>
  steps.map((step) => ({ step, phase, status: 'completed' }));

describe('planExecution', () => {
  it('starts at the first stage and waits for a whole parallel group', () => {
    expect(planExecution(saga, [])).toEqual({ kind: 'stage', phase: 'execute', stage: 0, pending: ['a'] });
    expect(planExecution(saga, done('execute', 'a', 'c'))).toEqual({
      kind: 'stage',
      phase: 'execute',
      stage: 1,
      pending: ['b', 'd'],
    });
    expect(planExecution(saga, done('execute', 'a', 'b', 'c', 'd'))).toMatchObject({
      stage: 2,
      pending: ['e'],
    });
    expect(planExecution(saga, done('execute', 'a', 'b', 'c', 'd', 'e'))).toEqual({ kind: 'done' });
  });
});

describe('planCompensation', () => {
  it('goes backwards stage by stage, skipping steps without a compensation', () => {
    const executed = done('execute', 'a', 'b', 'c', 'd');
    expect(planCompensation(saga, executed)).toEqual({
      kind: 'stage',
      phase: 'compensate',
      stage: 1,
      pending: ['b', 'd'],
    });
    expect(planCompensation(saga, [...executed, ...done('compensate', 'b')])).toMatchObject({
      pending: ['d'],
    });
    expect(planCompensation(saga, [...executed, ...done('compensate', 'b', 'd')])).toMatchObject({
      stage: 0,
      pending: ['a'],
    });
    expect(planCompensation(saga, [...executed, ...done('compensate', 'a', 'b', 'd')])).toEqual({
      kind: 'done',
    });
  });

  it('compensates only the completed siblings of a failed group, and nothing when the first step failed', () => {
    const records: StepRecord[] = [
      ...done('execute', 'a', 'd'),
      { step: 'b', phase: 'execute', status: 'failed' },
    ];
    expect(planCompensation(saga, records)).toMatchObject({ stage: 1, pending: ['d'] });
    expect(planCompensation(saga, [{ step: 'a', phase: 'execute', status: 'failed' }])).toEqual({
      kind: 'done',
    });
  });
});

describe('retryDelayMs', () => {
  const policy = { attempts: 5, backoffMs: 100, maxBackoffMs: 350, jitter: 0.2 };
  it('doubles from backoffMs, is capped, and spreads by the jitter', () => {
    expect(retryDelayMs(policy, 1, () => 0.5)).toBe(100);
    expect(retryDelayMs(policy, 2, () => 0.5)).toBe(200);
    expect(retryDelayMs(policy, 3, () => 0.5)).toBe(350);
    expect(retryDelayMs(policy, 1, () => 0)).toBe(80);
    expect(retryDelayMs(policy, 1, () => 1)).toBe(120);
  });
});

describe('saga job ids', () => {
  it('are stable per saga, phase, step, generation and attempt', () => {
    expect(stepJobId('s', 'execute', 'a', 0)).toBe(stepJobId('s', 'execute', 'a', 0, 1));
    const ids = new Set([
      stepJobId('s', 'execute', 'a', 0),
      stepJobId('s', 'compensate', 'a', 0),
      stepJobId('s', 'execute', 'a', 1),
      stepJobId('s', 'execute', 'a', 0, 2),
      stepJobId('t', 'execute', 'a', 0),
    ]);
    expect(ids.size).toBe(5);
    const message = stepMessage({
      sagaId: 's',
      saga: 'trip',
      phase: 'execute',
      step: 'a',
      generation: 0,
      delayMs: 50,
    });
    expect(message).toMatchObject({
      messageId: stepJobId('s', 'execute', 'a', 0),
      destination: { kind: 'bullmq', queue: 'dw-sagas' },
      payload: { kind: 'step', sagaId: 's', saga: 'trip', phase: 'execute', step: 'a' },
      options: { delay: 50 },
    });
    expect(message.messageId).not.toContain(':');
  });
});

describe('saga definitions', () => {
  it('are refused at defineApp time when they cannot work', () => {
    expect(() => defineApp({ sagas: [defineSaga('empty')] })).toThrow(/has no steps/);
    expect(() => defineApp({ sagas: [defineSaga('dup').step('x', noop).step('x', noop)] })).toThrow(
      /two steps named "x"/,
    );
    expect(() =>
      defineApp({
        sagas: [
          defineSaga('p')
            .parallel([{ name: 'y', run: noop }])
            .step('y', noop),
        ],
      }),
    ).toThrow(DefinitionError);
    expect(() => defineSaga('r').step('x', { run: noop, retry: { attempts: 0 } })).toThrow(/retry.attempts/);
  });
});
