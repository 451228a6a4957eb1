import { describe, expect, it } from 'vitest';
import * as api from '../../index.js';
import * as errors from '../../shared/errors.js';
import { DurableWorkerError } from '../../shared/errors.js';

type ErrorClass = new (...args: never[]) => Error;

const errorClasses = Object.entries(errors as Record<string, unknown>).filter(
  (entry): entry is [string, ErrorClass] =>
    typeof entry[1] === 'function' && entry[1].prototype instanceof Error,
);

// Constructors differ (a message, a list of problems, a step and an attempt…): the first argument
// list a class accepts gives the instance whose code and retryability are read.
const argumentLists: unknown[][] = [
  ['sample', 'sample', 1],
  [['sample'], 'sample', 1],
  ['sample', 1, ['sample'], new Date(0)],
  [],
];

function sample(name: string, cls: ErrorClass): Error {
  for (const args of argumentLists) {
    try {
      return Reflect.construct(cls, args) as Error;
    } catch {}
  }
  throw new Error(`cannot construct ${name}: add an argument list it accepts to argumentLists`);
}

describe('error classes', () => {
  it('finds the classes of shared/errors.ts', () => {
    expect(errorClasses.map(([name]) => name)).toEqual(
      expect.arrayContaining([
        'DurableWorkerError',
        'InvalidOptionError',
        'NotMigratedError',
        'SagaDeadlineError',
      ]),
    );
  });

  it.each(errorClasses)('%s extends DurableWorkerError and is exported from index.ts', (name, cls) => {
    expect(cls === DurableWorkerError || cls.prototype instanceof DurableWorkerError).toBe(true);
    expect((api as Record<string, unknown>)[name], `index.ts does not export ${name}`).toBe(cls);
  });

  it.each(errorClasses)('%s has a stable DW_ code, its name and a declared retryability', (name, cls) => {
    const error = sample(name, cls) as DurableWorkerError;
    expect(error.code).toMatch(/^DW_[A-Z_]+$/);
    expect(error.name).toBe(name);
    expect(typeof error.retryable).toBe('boolean');
  });

  it('gives every class its own code', () => {
    const codes = errorClasses.map(([name, cls]) => (sample(name, cls) as DurableWorkerError).code);
    expect(new Set(codes).size).toBe(codes.length);
  });

  it('says how to fix an unmigrated database', () => {
    const error = new errors.NotMigratedError(['001_inbox_outbox']);
    expect(error.message).toMatch(/001_inbox_outbox.*run `dw migrate`/);
    expect(error.retryable).toBe(false);
  });

  it('keeps the stack out of an error info when asked', () => {
    const info = errors.toErrorInfo(new errors.SagaDeadlineError('book-trip', 500), { stack: false });
    expect(info).toEqual({
      name: 'SagaDeadlineError',
      code: 'DW_SAGA_DEADLINE',
      message: 'saga book-trip did not complete within its deadline of 500 ms',
    });
  });
});
