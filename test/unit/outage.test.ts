import type { Knex } from 'knex';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { databaseFailures, OutageWait, type OutageWaitOptions, Stopped } from '../../shared/db/outage.js';
import { DurableWorkerError } from '../../shared/errors.js';

/** What PostgreSQL says when an administrator (or a restart) ends the session: an outage. */
function sessionTerminated(): Error {
  return Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' });
}

// These errors are classified by their SQLSTATE alone: the classifier never asks the database.
const noDatabase = {} as Knex;

function capturingLogger() {
  const lines: Array<{ level: number; msg: string }> = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line)) });
  return { log, lines: () => lines.map((l) => `${pino.levels.labels[l.level]}: ${l.msg}`) };
}

function outageWait(overrides: Partial<OutageWaitOptions> = {}) {
  const { log, lines } = capturingLogger();
  const wait = new OutageWait({
    classify: databaseFailures(noDatabase),
    signal: new AbortController().signal,
    log,
    downMessage: 'database down',
    backMessage: 'database back',
    outageBackoff: { baseMs: 1, maxMs: 2 },
    ...overrides,
  });
  return { wait, lines };
}

/** A function that fails with `error()` `times` times, then returns 'done'. */
function failing(times: number, error: () => unknown) {
  const fn = async () => {
    fn.calls++;
    if (fn.calls <= times) throw error();
    return 'done';
  };
  fn.calls = 0;
  return fn;
}

describe('OutageWait', () => {
  it('waits out an outage, logging one line as it starts and one as it ends', async () => {
    const { wait, lines } = outageWait();
    const fn = failing(3, sessionTerminated);
    await expect(wait.run(fn)).resolves.toBe('done');
    expect(fn.calls).toBe(4);
    expect(lines()).toEqual(['warn: database down', 'info: database back']);
  });

  it('logs an outage once for all the work in flight', async () => {
    const { wait, lines } = outageWait();
    let databaseDown = true;
    const calls = [0, 0, 0];
    const runs = calls.map((_, i) =>
      wait.run(async () => {
        calls[i] = (calls[i] ?? 0) + 1;
        if (databaseDown) throw sessionTerminated();
        return 'done';
      }),
    );
    await expect.poll(() => calls.every((c) => c >= 2)).toBe(true);
    databaseDown = false;
    expect(await Promise.all(runs)).toEqual(['done', 'done', 'done']);
    expect(lines()).toEqual(['warn: database down', 'info: database back']);
  });

  it('retries transient failures quietly', async () => {
    const { wait, lines } = outageWait();
    const serialization = () => Object.assign(new Error('could not serialize access'), { code: '40001' });
    const fn = failing(2, serialization);
    await expect(wait.run(fn)).resolves.toBe('done');
    expect(fn.calls).toBe(3);
    expect(lines()).toEqual([]);
  });

  it('rethrows an application error at once', async () => {
    const { wait, lines } = outageWait();
    const bug = new TypeError('handler bug');
    const fn = failing(1, () => bug);
    await expect(wait.run(fn)).rejects.toBe(bug);
    expect(fn.calls).toBe(1);
    expect(lines()).toEqual([]);
  });

  it('rethrows a non-retryable error even when it looks like an outage', async () => {
    const { wait } = outageWait();
    const refused = Object.assign(new DurableWorkerError('no'), { retryable: false, code: '57P01' });
    await expect(wait.run(failing(1, () => refused))).rejects.toBe(refused);
  });

  it('returns a Stopped with the failure as soon as the signal aborts, without trying again', async () => {
    const abort = new AbortController();
    // A backoff no test would wait out: only the abort can end it.
    const { wait } = outageWait({
      signal: abort.signal,
      outageBackoff: { baseMs: 3_600_000, maxMs: 3_600_000 },
    });
    const failure = sessionTerminated();
    const fn = failing(Number.POSITIVE_INFINITY, () => failure);
    const running = wait.run(fn);
    await expect.poll(() => fn.calls).toBe(1);
    abort.abort();
    const result = await running;
    expect(result).toBeInstanceOf(Stopped);
    expect((result as Stopped).error).toBe(failure);
    expect(fn.calls).toBe(1);
  });

  it('after the abort, a failure ends the wait without a backoff', async () => {
    const abort = new AbortController();
    abort.abort();
    const { wait } = outageWait({
      signal: abort.signal,
      outageBackoff: { baseMs: 3_600_000, maxMs: 3_600_000 },
    });
    const fn = failing(1, sessionTerminated);
    await expect(wait.run(fn)).resolves.toBeInstanceOf(Stopped);
    expect(fn.calls).toBe(1);
    // Work that succeeds still runs: only waiting stops.
    await expect(wait.run(failing(0, sessionTerminated))).resolves.toBe('done');
  });
});
