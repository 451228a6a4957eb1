import type { Knex } from 'knex';
import { type Backoff, backoffMs } from '../backoff.js';
import type { Logger } from '../logger.js';
import { sleep } from '../time.js';
import { classifyFailure, type FailureKind } from './failures.js';

/** What `OutageWait.run` returns when shutdown ended the wait; `error` is the failure it waited out. */
export class Stopped {
  constructor(readonly error: unknown) {}
}

export interface OutageWaitOptions {
  /** How a failure is classified: `application` is rethrown, `outage` and `transient` are waited out. */
  classify: (error: unknown) => FailureKind | Promise<FailureKind>;
  /** Aborted on shutdown: the backoff ends and `run` returns a Stopped instead of trying again. */
  signal: AbortSignal;
  /** Where the two lines of an outage go, unless `run` is given a logger of its own. */
  log: Logger;
  /** Logged as a warning, with the error, when an outage starts. */
  downMessage: string;
  /** Logged as info when work succeeds again after an outage. */
  backMessage: string;
  /** Spaces the tries during an outage. */
  outageBackoff: Backoff;
  /**
   * Spaces the tries after a transient failure (serialization failure, deadlock, conflict).
   * @defaultValue outageBackoff
   */
  transientBackoff?: Backoff;
}

/** The classifier for work that only fails for lack of a database when the database says so. */
export function databaseFailures(knex: Knex): (error: unknown) => Promise<FailureKind> {
  return (error) => classifyFailure(knex, error);
}

/**
 * Waits out database outages (restart, terminated session, unreachable) and transient failures
 * for everything one component runs: one instance per component, so an outage is logged once, as
 * it starts and as it ends, however many messages or steps are in flight.
 */
export class OutageWait {
  private down = false;

  constructor(private readonly options: OutageWaitOptions) {}

  /**
   * Runs `fn` until it succeeds (its value) or fails for the application (rethrown), backing off
   * between tries; none of the tries counts as an attempt of the work. Once the signal aborted, a
   * failure that would be waited out ends the wait at once: it returns a Stopped with that failure.
   */
  async run<T>(fn: () => Promise<T>, log: Logger = this.options.log): Promise<T | Stopped> {
    const { classify, signal, downMessage, backMessage, outageBackoff } = this.options;
    const transientBackoff = this.options.transientBackoff ?? outageBackoff;
    const failures: Record<'outage' | 'transient', number> = { outage: 0, transient: 0 };
    for (;;) {
      try {
        const result = await fn();
        if (this.down) {
          this.down = false;
          log.info(backMessage);
        }
        return result;
      } catch (error) {
        const kind = await classify(error);
        if (kind === 'application') throw error;
        if (kind === 'outage' && !this.down) {
          this.down = true;
          log.warn({ err: error }, downMessage);
        }
        const delay = backoffMs(failures[kind]++, kind === 'outage' ? outageBackoff : transientBackoff);
        await sleep(delay, signal);
        if (signal.aborted) return new Stopped(error);
      }
    }
  }
}
