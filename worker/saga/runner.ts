import { Worker as BullWorker, DelayedError, Queue } from 'bullmq';
import type { Knex } from 'knex';
import type { App } from '../../shared/app.js';
import { backoffMs } from '../../shared/backoff.js';
import type { Logger } from '../../shared/logger.js';
import type { OutboxJobData } from '../../shared/outbox.js';
import {
  assertPrefixFitsRedis,
  assertRedisReachable,
  createRedis,
  destroySockets,
  type RedisConfig,
  redisHealthy,
  warnUnlessNoEviction,
} from '../../shared/redis.js';
import { type SagaJob, sagaQueue } from '../../shared/saga/jobs.js';
import { registerSagaDefinitions } from '../../shared/saga/registry.js';
import { settledWithin } from '../../shared/time.js';
import { EagerSteps } from './eager.js';
import { SagaStepRunner } from './step-runner.js';
import { inStepSpan } from './step-span.js';
import { sweepOnce } from './sweep.js';

export interface SagaRunnerDeps {
  app: App;
  knex: Knex;
  /** Where Redis is (REDIS_MODE, REDIS_URL, …). */
  redis: RedisConfig;
  bullmqPrefix: string;
  concurrency: number;
  sweepIntervalMs: number;
  staleAfterMs: number;
  /** Lease of eagerly run steps (see EagerSteps); 0 leaves every step to the relay. */
  eagerLeaseMs: number;
  /** Steps of different sagas run in one transaction (1: each step in its own). */
  batchSize: number;
  log: Logger;
}

export interface SagaRunner {
  stop(graceMs: number): Promise<void>;
  /** True when Redis answers. */
  healthy(): Promise<boolean>;
  /** Runs one recovery sweep now; returns how many sagas it resumed. */
  sweep(): Promise<number>;
  /** Runs first steps of sagas started by this process's handlers; undefined when turned off. */
  eager: EagerSteps | undefined;
}

/**
 * BullMQ settings of the step worker. A job's lock is renewed every lockDuration / 2 while it
 * runs; a SIGKILLed worker stops renewing, and the stalled check (every stalledInterval) puts its
 * job back within about lockDuration + stalledInterval. maxStalledCount is high because the step
 * records make a re-run harmless, while a job failed for stalling would leave the saga to the sweep.
 */
const workerSettings = { lockDuration: 10_000, stalledInterval: 5_000, maxStalledCount: 1000 };

/**
 * A saga job's data, with how often it was put back because it came before its due time or named
 * a saga version this worker lacks (`unserved`, of those).
 */
type PostponedJobData = OutboxJobData & { postponed?: number; unserved?: number };

/**
 * Delay before a job of a saga version this worker lacks is handed out again: doubling from 1 s up
 * to a minute, so that a worker that has the version gets it soon and the others do not spin on it.
 */
const unservedDelayMs = (times: number) => backoffMs(times, { baseMs: 1000, maxMs: 60_000 });

/** Runs the app's saga steps from BullMQ; undefined when the app defines no sagas. */
export async function startSagaRunner(deps: SagaRunnerDeps): Promise<SagaRunner | undefined> {
  if (deps.app.sagas.size === 0) return undefined;
  const { log } = deps;
  // Refuses a saga version whose stages changed under the same version, before taking any job.
  await registerSagaDefinitions(
    deps.knex,
    [...deps.app.sagaVersions.values()].flatMap((versions) => [...versions.values()]),
  );
  assertPrefixFitsRedis(deps.redis.redisMode, deps.bullmqPrefix);
  await assertRedisReachable(deps.redis);
  const connection = createRedis(deps.redis, { bullmqPrefix: deps.bullmqPrefix });
  connection.on('error', () => {});
  await warnUnlessNoEviction(connection, log);
  const abort = new AbortController();
  // `concurrency` step transactions at once, each a batch of up to batchSize steps: the eager
  // runner hands out enough steps to fill them. BullMQ does not: a job it handed out that waits
  // for its batch when the worker dies counts as an attempt that died (it cannot tell), so only
  // `concurrency` jobs are out at once, as without batches; they batch when the eager steps keep
  // the transactions busy.
  const stepsAtOnce = deps.concurrency * deps.batchSize;
  const eager =
    deps.eagerLeaseMs > 0
      ? new EagerSteps(
          deps.knex,
          { leaseMs: deps.eagerLeaseMs, concurrency: stepsAtOnce, log },
          (job, headers, leased) => inStepSpan(job, headers, true, () => runner.runStep(job, { leased })),
        )
      : undefined;
  const runner: SagaStepRunner = new SagaStepRunner({
    app: deps.app,
    knex: deps.knex,
    log,
    signal: abort.signal,
    eager,
    batchSize: deps.batchSize,
    batchesInFlight: deps.concurrency,
  });
  const queue = new Queue(sagaQueue, { connection, prefix: deps.bullmqPrefix });
  queue.on('error', () => {});
  const worker = new BullWorker<OutboxJobData>(
    sagaQueue,
    async (job, token) => {
      const data = job.data.payload as SagaJob;
      const postponed = (job.data as PostponedJobData).postponed ?? 0;
      // Started before: a stalled job handed out again (BullMQ counts both on the job, for free;
      // its start count also counts the starts that only put the job back until it was due).
      const starts = Math.max(job.attemptsStarted - postponed, job.stalledCounter + 1);
      const outcome =
        data.kind === 'deadline'
          ? await runner.runDeadline(data)
          : await inStepSpan(data, job.data.headers, false, () =>
              runner.runStep(data, { restarted: starts > 1, starts }),
            );
      if (outcome === 'unknown-version' && token) {
        // Not acked away: back to BullMQ, delayed, for a worker that has the version (any worker
        // may take it; this one leaves it alone again). Without that, the sweep resumes the saga.
        const unserved = (job.data as PostponedJobData).unserved ?? 0;
        await job.updateData({
          ...job.data,
          postponed: postponed + 1,
          unserved: unserved + 1,
        } as PostponedJobData);
        await job.moveToDelayed(Date.now() + unservedDelayMs(unserved), token);
        throw new DelayedError();
      }
      if (data.kind === 'deadline') return outcome;
      if (outcome === 'early' && data.notBefore !== undefined && token) {
        // A retry's copy handed out before its backoff ran out: back to BullMQ until it is due.
        await job.updateData({ ...job.data, postponed: postponed + 1 } as PostponedJobData);
        await job.moveToDelayed(data.notBefore, token);
        throw new DelayedError();
      }
      return outcome;
    },
    { connection, prefix: deps.bullmqPrefix, concurrency: deps.concurrency, ...workerSettings },
  );
  // While Redis is away BullMQ reports every failed command of its connections: log the first
  // error of each 30 s and count the rest, instead of a storm.
  let lastErrorLogged = 0;
  let errorsSuppressed = 0;
  worker.on('error', (error) => {
    if (Date.now() - lastErrorLogged < 30_000) {
      errorsSuppressed++;
      return;
    }
    log.warn(
      { err: error, errorsSuppressed },
      'saga worker: Redis error (repeats within 30 s are not logged)',
    );
    lastErrorLogged = Date.now();
    errorsSuppressed = 0;
  });
  worker.on('failed', (job, error) =>
    log.error({ err: error, jobId: job?.id }, 'saga job failed outside its step; the sweep will resume it'),
  );

  const sweep = () =>
    sweepOnce({
      app: deps.app,
      knex: deps.knex,
      queue,
      staleAfterMs: deps.staleAfterMs,
      log,
      served: runner.versions.served(),
    });
  let sweeping: Promise<unknown> = Promise.resolve();
  const timer =
    deps.sweepIntervalMs > 0
      ? setInterval(() => {
          sweeping = sweep().catch((error) =>
            log.warn({ err: error }, 'saga sweep failed; next pass retries'),
          );
        }, deps.sweepIntervalMs)
      : undefined;
  timer?.unref();

  let stopped: Promise<void> | undefined;
  return {
    healthy: () => redisHealthy(connection),
    sweep,
    eager,
    stop(graceMs) {
      stopped ??= (async () => {
        // Every wait below ends by the grace time, plus forceMs for what is forced after it: with
        // Redis down or not answering, BullMQ's close, the sweep and the queue's close never end.
        const hardDeadline = Date.now() + graceMs + forceMs;
        const left = () => Math.max(0, hardDeadline - Date.now());
        if (timer) clearInterval(timer);
        const closing = worker.close();
        const [drained] = await Promise.all([settledWithin(closing, graceMs), eager?.stop(graceMs)]);
        if (!drained) {
          // Jobs still running stay in BullMQ's active list; the stalled check hands them out again.
          abort.abort();
          await settledWithin(worker.close(true), left());
        }
        const settled =
          (await settledWithin(sweeping, left())) && (await settledWithin(queue.close(), left()));
        connection.disconnect();
        // A Redis that stopped answering (hung, blackholed) never acknowledges the close: drop the
        // socket, so that commands still waiting (a sweep's) fail now and release what they hold.
        if (!settled) destroySockets(connection);
      })();
      return stopped;
    },
  };
}

/** What a stop may wait past its grace time to end what it forces (BullMQ's close, the sweep's). */
const forceMs = 1000;
