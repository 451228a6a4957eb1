import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { defineApp } from '../../shared/app.js';
import { DefinitionError } from '../../shared/errors.js';
import { defineSaga } from '../../shared/saga/definition.js';
import { stepJobId, stepMessage } from '../../shared/saga/jobs.js';
import {
  type NextStage,
  type PlannableSaga,
  planCompensation,
  planExecution,
  planNextStage,
  retryDelayMs,
  type StepEnd,
  type StepRecord,
} from '../../shared/saga/plan.js';

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

const seed = Number(process.env.FC_SEED ?? 20261123);

/** Random stage layouts: 1–5 stages of 1–3 steps, each with or without a compensation. */
const layouts = fc
  .array(fc.array(fc.boolean(), { minLength: 1, maxLength: 3 }), { minLength: 1, maxLength: 5 })
  .map(
    (stages): PlannableSaga => ({
      stages: stages.map((steps, stage) =>
        steps.map((compensable, i) => ({
          name: `s${stage}.${i}`,
          compensate: compensable ? noop : undefined,
        })),
      ),
    }),
  );
/** Which of the jobs waiting to run goes next, cycled through (the order jobs finish in). */
const picks = fc.array(fc.nat({ max: 1000 }), { minLength: 1, maxLength: 40 });

const names = (saga: PlannableSaga, stage: number) => (saga.stages[stage] ?? []).map((s) => s.name);
const stageOf = (saga: PlannableSaga, step: string) =>
  saga.stages.findIndex((s) => s.some((x) => x.name === step));

/** What the step runner does: plan from the step's place, and again with the records when asked. */
function afterCompleted(saga: PlannableSaga, end: StepEnd, records: readonly StepRecord[]): NextStage {
  const planned = planNextStage(saga, end);
  return planned.kind === 'read-records' ? planNextStage(saga, end, records) : planned;
}

describe('planNextStage', () => {
  const end = (
    phase: 'execute' | 'compensate',
    stage: number,
    outcome: 'completed' | 'failed' = 'completed',
  ) => ({
    phase,
    stage,
    outcome,
  });

  it('moves a single step on to the next stage, and lets the last one complete the saga, without records', () => {
    expect(planNextStage(saga, end('execute', 0))).toEqual({
      kind: 'stage',
      phase: 'execute',
      stage: 1,
      pending: ['b', 'c', 'd'],
    });
    expect(planNextStage(saga, end('execute', 2))).toEqual({ kind: 'saga-completed' });
  });

  it('lets the last member of a parallel group move on, and the others wait', () => {
    expect(planNextStage(saga, end('execute', 1))).toEqual({ kind: 'read-records' });
    expect(planNextStage(saga, end('execute', 1), done('execute', 'a', 'c'))).toEqual({
      kind: 'group-pending',
    });
    expect(planNextStage(saga, end('execute', 1), done('execute', 'a', 'b', 'c', 'd'))).toEqual({
      kind: 'stage',
      phase: 'execute',
      stage: 2,
      pending: ['e'],
    });
    const groupLast = defineSaga('g')
      .step('a', noop)
      .parallel([
        { name: 'b', run: noop },
        { name: 'c', run: noop },
      ]);
    expect(planNextStage(groupLast, end('execute', 1), done('execute', 'a', 'b', 'c'))).toEqual({
      kind: 'saga-completed',
    });
  });

  it('plans a compensation from the records: its siblings, the stage before, or the end', () => {
    const executed = done('execute', 'a', 'b', 'c', 'd');
    expect(planNextStage(saga, end('compensate', 0))).toEqual({ kind: 'read-records' });
    expect(planNextStage(saga, end('compensate', 1), [...executed, ...done('compensate', 'd')])).toEqual({
      kind: 'stage',
      phase: 'compensate',
      stage: 1,
      pending: ['b'],
    });
    expect(
      planNextStage(saga, end('compensate', 1), [...executed, ...done('compensate', 'b', 'd')]),
    ).toMatchObject({ stage: 0, pending: ['a'] });
    expect(
      planNextStage(saga, end('compensate', 0), [...executed, ...done('compensate', 'a', 'b', 'd')]),
    ).toEqual({
      kind: 'saga-compensated',
    });
  });

  it('begins the compensation when a step fails for good, and fails the saga when a compensation does', () => {
    fc.assert(
      fc.property(layouts, fc.nat(), (layout, n) => {
        const stage = n % layout.stages.length;
        expect(planNextStage(layout, end('execute', stage, 'failed'))).toEqual({
          kind: 'begin-compensation',
        });
        expect(planNextStage(layout, end('compensate', stage, 'failed'), [])).toEqual({
          kind: 'saga-failed',
        });
      }),
      { seed },
    );
  });

  it('agrees with planExecution when a single step decides without records', () => {
    fc.assert(
      fc.property(layouts, (layout) => {
        for (const [stage, steps] of layout.stages.entries()) {
          if (steps.length !== 1) continue;
          const records = done(
            'execute',
            ...layout.stages.slice(0, stage + 1).flatMap((s) => s.map((x) => x.name)),
          );
          const plan = planExecution(layout, records);
          expect(planNextStage(layout, end('execute', stage))).toEqual(
            plan.kind === 'done' ? { kind: 'saga-completed' } : plan,
          );
        }
      }),
      { seed },
    );
  });

  it('runs every step once, stage after stage, and completes the saga once, whatever order the jobs finish in', () => {
    fc.assert(
      fc.property(layouts, picks, (layout, order) => {
        const records: StepRecord[] = [];
        const queued = [...names(layout, 0)];
        const ran: string[] = [];
        let completions = 0;
        for (let i = 0; queued.length > 0; i++) {
          const [step] = queued.splice((order[i % order.length] ?? 0) % queued.length, 1) as [string];
          const stage = stageOf(layout, step);
          // Every earlier stage had completed when this step's job was written.
          for (const earlier of layout.stages.slice(0, stage).flat()) expect(ran).toContain(earlier.name);
          ran.push(step);
          records.push({ step, phase: 'execute', status: 'completed' });
          const next = afterCompleted(layout, end('execute', stage), records);
          expect(next.kind).not.toBe('read-records');
          if (next.kind === 'saga-completed') completions++;
          else if (next.kind === 'stage') {
            expect(next).toMatchObject({ phase: 'execute', stage: stage + 1 });
            // The next stage is written once: by its predecessor's last step.
            for (const s of next.pending) expect([...ran, ...queued]).not.toContain(s);
            queued.push(...next.pending);
          } else expect(next.kind).toBe('group-pending');
        }
        expect([...ran].sort()).toEqual(
          layout.stages
            .flat()
            .map((s) => s.name)
            .sort(),
        );
        expect(completions).toBe(1);
        expect(afterCompleted(layout, end('execute', layout.stages.length - 1), records)).toEqual({
          kind: 'saga-completed',
        });
      }),
      { seed },
    );
  });

  it('compensates every completed step that can be, once, latest stage first, and ends the compensation once', () => {
    fc.assert(
      fc.property(
        layouts,
        fc.nat(),
        fc.array(fc.boolean(), { maxLength: 3 }),
        picks,
        (layout, n, part, order) => {
          // The saga failed in stage `failedAt`: the stages before it completed, some of its steps did.
          const failedAt = n % layout.stages.length;
          const executed = [
            ...layout.stages.slice(0, failedAt).flat(),
            ...(layout.stages[failedAt] ?? []).filter((_, i) => part[i]),
          ];
          const records: StepRecord[] = done('execute', ...executed.map((s) => s.name));
          const toCompensate = executed.filter((s) => s.compensate).map((s) => s.name);
          // Compensation begins with planCompensation (beginCompensation), then each one plans the next.
          const first = planCompensation(layout, records);
          const queued = first.kind === 'stage' ? [...first.pending] : [];
          const compensated: string[] = [];
          let ends = first.kind === 'done' ? 1 : 0;
          for (let i = 0; queued.length > 0; i++) {
            const [step] = queued.splice((order[i % order.length] ?? 0) % queued.length, 1) as [string];
            const stage = stageOf(layout, step);
            // No later stage still has a completed step left to compensate.
            const later = layout.stages.slice(stage + 1).flat();
            for (const s of later) if (toCompensate.includes(s.name)) expect(compensated).toContain(s.name);
            expect(compensated).not.toContain(step);
            compensated.push(step);
            records.push({ step, phase: 'compensate', status: 'completed' });
            const next = afterCompleted(layout, end('compensate', stage), records);
            if (next.kind === 'saga-compensated') ends++;
            else {
              expect(next).toMatchObject({ kind: 'stage', phase: 'compensate' });
              if (next.kind !== 'stage') continue;
              expect(next.stage).toBeLessThanOrEqual(stage);
              // Siblings' jobs written again keep their ids: the outbox writes them once.
              queued.push(...next.pending.filter((s) => !queued.includes(s)));
            }
          }
          expect([...compensated].sort()).toEqual([...toCompensate].sort());
          expect(ends).toBe(1);
        },
      ),
      { seed },
    );
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
