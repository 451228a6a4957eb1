import { type Context, context } from '@opentelemetry/api';
import type { Knex } from 'knex';
import type { App } from '../../shared/app.js';
import { crashPoint } from '../../shared/crash-points.js';
import { classifyFailure } from '../../shared/db/failures.js';
import { OutageWait, Stopped } from '../../shared/db/outage.js';
import {
  ConcurrencyConflictError,
  SagaDeadlineError,
  toErrorInfo,
  WorkerDiedError,
} from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';
import { sagaStepBatchSize, sagaStepsTotal } from '../../shared/metrics.js';
import { insertOutboxMessages, maxOutboxValues, type OutboxMessage } from '../../shared/outbox.js';
import type { SagaDefinition, StepDefinition } from '../../shared/saga/definition.js';
import type { SagaDeadlineJob, SagaStepJob } from '../../shared/saga/jobs.js';
import { type NextStage, planNextStage, type StepEnd } from '../../shared/saga/plan.js';
import {
  advanceSagaVersion,
  type CompletedStep,
  completeStep,
  completeSteps,
  listStepRows,
  lockStep,
  lockSteps,
  mergeSagaState,
  readSagaForStep,
  readSagasForSteps,
  recordStepCompleted,
  type SagaForStep,
  transitionSaga,
} from '../../shared/saga/store.js';
import { storableJson } from '../../shared/storable.js';
import { type Clock, systemClock } from '../../shared/time.js';
import type { EagerSteps } from './eager.js';
import { recordFailureOrGiveUp, scheduleRetryOrGiveUp } from './failures.js';
import { StepBatcher } from './step-batcher.js';
import { stepContext, withTimeout } from './step-context.js';
import { beginCompensation, stageMessages } from './transitions.js';
import { SagaVersions } from './versions.js';

export interface StepRunnerDeps {
  app: App;
  knex: Knex;
  log: Logger;
  /** Aborted when shutdown gives up waiting: database outage backoffs stop. */
  signal: AbortSignal;
  /** Runs the next steps in this process right after a step commits; without it the relay does. */
  eager?: EagerSteps;
  /**
   * Time of retry due checks and step timeouts; a test harness passes a virtual one.
   * @defaultValue the system clock
   */
  clock?: Clock;
  /** Finds each instance's definition version (shared with the sweep). Default: one of its own. */
  versions?: SagaVersions;
  /**
   * Steps of different sagas run in one transaction (see runBatch), up to this many; 1 runs each
   * step in its own transaction.
   * @defaultValue 1
   */
  batchSize?: number;
  /**
   * Step transactions (batches) at once when batchSize > 1.
   * @defaultValue 1
   */
  batchesInFlight?: number;
}

/** What an attempt learned that outlives its transaction. */
interface AttemptProgress {
  /** Set once the user code returned: an error after that is still this attempt's. */
  attempt: number;
  /** The outbox messages written, some leased to this process to run once the transaction committed. */
  written: OutboxMessage[];
  /** The statement recording the step marked the leased outbox row delivered (StepDelivery.leased). */
  marked?: boolean;
  /**
   * In a batch: the step's bookkeeping, left to the batch's one completeSteps statement (`written`
   * and `marked` are set once that ran).
   */
  deferred?: { record: CompletedStep; written: OutboxMessage[] };
  /**
   * Set when the attempt failed (its code threw, or the framework's statements after it did) and
   * its failure is not yet committed: the transaction died before it could record it.
   */
  failed?: AttemptFailed;
}

/** How BullMQ handed the job out. */
export interface StepDelivery {
  /**
   * The job was started before (a stalled job handed out again: the worker died or hung during
   * it). The attempt it was running is counted as failed before the step runs again.
   */
  restarted?: boolean;
  /** How many times BullMQ started the job, this time included (each restart ran one attempt more). */
  starts?: number;
  /**
   * The step runs from its outbox row, leased to this process (an eager step): the statement
   * recording the step marks that row delivered too, and sets `marked` when it did.
   */
  leased?: { messageId: string; marked?: boolean };
}

/** A step waiting for its batch. */
interface BatchItem {
  saga: AnySaga;
  step: AnyStep;
  job: SagaStepJob;
  delivery: StepDelivery;
  /** The context the step was submitted in (its span): its code runs in it, inside the batch too. */
  context: Context;
  settle: (outcome: Promise<StepOutcome>) => void;
}

export type StepOutcome =
  | 'completed'
  | 'retry-scheduled'
  | 'failed'
  | 'duplicate'
  | 'stale'
  | 'early'
  | 'not-applicable'
  | 'unknown-saga'
  /** The saga's instance started on a definition version this app lacks: left untouched. */
  | 'unknown-version';

/** The user's step function threw (or timed out) in attempt `attempt`; its transaction rolled back. */
class AttemptFailed extends Error {
  constructor(
    readonly error: unknown,
    readonly attempt: number,
  ) {
    super('step attempt failed');
  }
}

// biome-ignore lint/suspicious/noExplicitAny: sagas of any state type share the runner
type AnySaga = SagaDefinition<any>;
// biome-ignore lint/suspicious/noExplicitAny: see AnySaga
type AnyStep = StepDefinition<any>;

/**
 * Runs one saga job: a step or compensation attempt in one transaction (step lock, saga row read,
 * user code on ctx.trx under a savepoint, optimistic saga update, step record, next stage's outbox
 * rows); on failure the savepoint is rolled back and the same transaction records either a delayed
 * retry or the switch to compensation / `failed`.
 */
export class SagaStepRunner {
  /** Holds every step in flight while the database is down, logging the outage once. */
  private readonly outages: OutageWait;
  readonly versions: SagaVersions;

  private readonly batcher: StepBatcher<BatchItem> | undefined;

  constructor(private readonly deps: StepRunnerDeps) {
    this.versions = deps.versions ?? new SagaVersions(deps.app, deps.knex, deps.log);
    const batchSize = deps.batchSize ?? 1;
    this.batcher =
      batchSize > 1
        ? new StepBatcher<BatchItem>(
            {
              maxBatch: batchSize,
              maxInFlight: deps.batchesInFlight ?? 1,
              key: (item) => item.job.sagaId,
            },
            (items) => this.runBatch(items),
          )
        : undefined;
    this.outages = new OutageWait({
      classify: (error) =>
        error instanceof ConcurrencyConflictError ? 'transient' : classifyFailure(deps.knex, error),
      signal: deps.signal,
      log: deps.log,
      downMessage: 'database unavailable; saga steps wait until it is back',
      backMessage: 'database reachable again; saga steps resume',
      outageBackoff: { baseMs: 100, maxMs: 5000 },
      transientBackoff: { baseMs: 4, maxMs: 200, jitter: 'full' },
    });
  }

  async runStep(job: SagaStepJob, delivery: StepDelivery = {}): Promise<StepOutcome> {
    // The version the instance started with, never another: without it, the job is left alone.
    const found = await this.versions.resolve(job);
    if (found && 'missing' in found) {
      await this.versions.unserved(job.saga, job.sagaId, found.missing);
      sagaStepsTotal.inc({ phase: job.phase, outcome: 'unknown-version' });
      return 'unknown-version';
    }
    const saga = found?.saga;
    const step = saga?.getStep(job.step);
    if (!saga || !step || (job.phase === 'compensate' && !step.compensate)) {
      this.deps.log.error({ job }, 'saga job names a saga or step this app does not define; ignored');
      return 'unknown-saga';
    }
    if (this.batcher) {
      const batcher = this.batcher;
      return new Promise<StepOutcome>((resolve) =>
        batcher.submit({
          saga,
          step,
          job,
          delivery,
          context: context.active(),
          settle: (outcome) => resolve(outcome),
        }),
      );
    }
    return this.runOne(saga, step, job, delivery);
  }

  /** One step in its own transaction (after its died attempt is recorded, for a restarted job). */
  private async runOne(
    saga: AnySaga,
    step: AnyStep,
    job: SagaStepJob,
    delivery: StepDelivery,
  ): Promise<StepOutcome> {
    if (delivery.restarted) {
      const died = await this.withTransactionRetry(() =>
        this.deps.knex.transaction((trx) => this.recordDiedAttempt(trx, saga, step, job, delivery)),
      );
      if (died !== 'recorded') {
        if (died === 'stale') this.logStale(job, 'its attempt was recorded meanwhile');
        sagaStepsTotal.inc({ phase: job.phase, outcome: died });
        return died;
      }
    }
    let written: OutboxMessage[] = [];
    const outcome = await this.withTransactionRetry(async () => {
      const progress: AttemptProgress = { attempt: 0, written: [] };
      try {
        const result = await this.deps.knex.transaction((trx) =>
          this.attempt(trx, saga, step, job, progress, delivery),
        );
        written = progress.written;
        if (delivery.leased && result === 'completed') delivery.leased.marked = progress.marked;
        return result;
      } catch (error) {
        // The attempt failed and its transaction died before the failure committed (the session
        // was lost, or the commit failed): recorded on its own, and only that is retried, not the
        // step's code. The step lock went with the transaction: see attempt() for that window.
        const failed = progress.failed;
        if (failed) {
          return this.withTransactionRetry(() =>
            this.afterFailure(this.deps.knex, saga, step, job, failed.error, failed.attempt),
          );
        }
        // The commit failed after the attempt succeeded (a deferred constraint): the attempt
        // failed, or the job would fail and the sweep re-run it forever.
        if (
          progress.attempt > 0 &&
          !(error instanceof ConcurrencyConflictError) &&
          (await classifyFailure(this.deps.knex, error)) === 'application'
        ) {
          return this.afterFailure(this.deps.knex, saga, step, job, error, progress.attempt);
        }
        throw error;
      }
    });
    if (outcome === 'completed') {
      crashPoint('saga:after-step-commit');
      this.deps.eager?.run(written);
    }
    sagaStepsTotal.inc({ phase: job.phase, outcome });
    return outcome;
  }

  /**
   * Steps of different sagas (one each) in one transaction: their step locks and rows in one
   * statement each, then each step's attempt exactly as attempt() runs it (its code under its own
   * savepoint; on a failure, that savepoint rolled back and the failure recorded, still under the
   * step lock), one commit. A step whose bookkeeping conflicts (the saga moved) is rolled back to
   * its savepoint and runs on its own after the commit. When the batch itself fails (a lost
   * session, the commit), every step goes on as runStep does when its own transaction dies: a
   * failed attempt has its failure recorded on its own, any other runs again on its own. A crash
   * before the commit leaves nothing of the batch; after it, every step's record, as one by one.
   */
  private async runBatch(batch: BatchItem[]): Promise<void> {
    // A restarted job records its died attempt first: on its own (rare), after the others.
    const items = batch.filter((item) => !item.delivery.restarted);
    const restarted = batch.filter((item) => item.delivery.restarted);
    const [first] = items;
    sagaStepBatchSize.observe(items.length);
    if (items.length <= 1) {
      for (const item of first ? [first, ...restarted] : restarted) await this.runAlone(item);
      return;
    }
    const progress = items.map((): AttemptProgress => ({ attempt: 0, written: [] }));
    let outcomes: Array<StepOutcome | undefined>;
    try {
      outcomes = await this.deps.knex.transaction(async (trx) => {
        const keys = items.map(({ job, step }) => ({
          sagaId: job.sagaId,
          step: step.name,
          phase: job.phase,
        }));
        // Copies of these steps wait for the batch here, as for a single step's lock.
        await lockSteps(trx, keys);
        const rows = await readSagasForSteps(trx, keys);
        const decided: Array<StepOutcome | undefined> = [];
        for (const [i, item] of items.entries()) {
          const guarded = this.check(rows[i], item.job, item.delivery);
          decided.push(
            typeof guarded === 'string'
              ? guarded
              : await context.with(item.context, () =>
                  this.attemptInBatch(trx, item, guarded.row, guarded.attempt, progress[i]!),
                ),
          );
          crashPoint('saga:inside-batch');
        }
        await this.completeDeferred(trx, progress);
        return decided;
      });
    } catch (error) {
      this.deps.log.debug(
        { err: error, steps: items.length },
        'saga step batch failed; its steps run one by one',
      );
      outcomes = items.map(() => undefined);
    }
    if (outcomes.includes('completed')) {
      crashPoint('saga:after-batch-commit');
      crashPoint('saga:after-step-commit');
    }
    const alone: number[] = [];
    const written: OutboxMessage[] = [];
    for (const [i, item] of items.entries()) {
      const outcome = outcomes[i];
      if (outcome === undefined) {
        alone.push(i);
        continue;
      }
      if (outcome === 'completed') {
        written.push(...progress[i]!.written);
        if (item.delivery.leased) item.delivery.leased.marked = progress[i]!.marked;
      }
      sagaStepsTotal.inc({ phase: item.job.phase, outcome });
      item.settle(Promise.resolve(outcome));
    }
    this.deps.eager?.run(written);
    // One after the other, on this batch's slot: the pool holds one connection per batch in flight.
    for (const i of alone) {
      const item = items[i]!;
      await this.runAlone(item, progress[i]!.failed);
    }
    for (const item of restarted) await this.runAlone(item);
  }

  /** A step in its own transaction, or (`failed`) only the failure of its batched attempt recorded. */
  private async runAlone(item: BatchItem, failed?: AttemptFailed): Promise<void> {
    const own = context.with(item.context, () =>
      failed ? this.recordFailed(item, failed) : this.runOne(item.saga, item.step, item.job, item.delivery),
    );
    item.settle(own);
    await own.catch(() => {});
  }

  /**
   * A batched step's attempt (see attemptGuarded): its outcome, or undefined when its bookkeeping
   * conflicted and it was rolled back to its savepoint (it then runs on its own). Throws what
   * leaves the transaction unusable: the whole batch then goes on one by one.
   */
  private async attemptInBatch(
    trx: Knex.Transaction,
    item: BatchItem,
    row: SagaForStep,
    attempt: number,
    progress: AttemptProgress,
  ): Promise<StepOutcome | undefined> {
    try {
      return await this.attemptGuarded(
        trx,
        item.saga,
        item.step,
        item.job,
        row,
        attempt,
        progress,
        item.delivery,
        true,
      );
    } catch (error) {
      if (progress.failed || (await classifyFailure(this.deps.knex, error)) === 'outage') throw error;
      progress.written = [];
      progress.marked = false;
      progress.deferred = undefined;
      return undefined;
    }
  }

  /**
   * The bookkeeping the batch's steps left (see runAttempt), in one statement (at most
   * maxOutboxValues messages each: several when more). Throws ConcurrencyConflictError when a
   * saga moved or a duplicate completed a step meanwhile: the batch, every step's effects with it,
   * rolls back and its steps run one by one.
   */
  private async completeDeferred(trx: Knex.Transaction, progress: AttemptProgress[]): Promise<void> {
    const pending = progress.filter((p) => p.deferred);
    const chunks: AttemptProgress[][] = [];
    let count = 0;
    for (const p of pending) {
      const size = p.deferred!.record.messages.length;
      if (chunks.length === 0 || count + size > maxOutboxValues) {
        chunks.push([]);
        count = 0;
      }
      chunks.at(-1)!.push(p);
      count += size;
    }
    for (const chunk of chunks) {
      const done = await completeSteps(
        trx,
        chunk.map((p) => p.deferred!.record),
      );
      if (done.recorded !== chunk.length) {
        const first = chunk[0]!.deferred!.record.step;
        throw new ConcurrencyConflictError(first.sagaId, first.expectedVersion);
      }
      const inserted = new Set(done.inserted);
      for (const p of chunk) {
        const { record, written } = p.deferred!;
        p.marked = record.step.leasedMessageId !== undefined;
        p.written = written.filter((m) => inserted.has(m.messageId));
      }
    }
  }

  /** A batched attempt that failed but whose batch died before its failure committed: recorded on its own. */
  private async recordFailed(item: BatchItem, failed: AttemptFailed): Promise<StepOutcome> {
    const { saga, step, job } = item;
    const outcome = await this.withTransactionRetry(() =>
      this.afterFailure(this.deps.knex, saga, step, job, failed.error, failed.attempt),
    );
    sagaStepsTotal.inc({ phase: job.phase, outcome });
    return outcome;
  }

  /** Records a failed attempt and what follows from it, on `knex` (the attempt's own transaction, or a new one). */
  private async afterFailure(
    knex: Knex,
    saga: AnySaga,
    step: AnyStep,
    job: SagaStepJob,
    error: unknown,
    attempt: number,
  ): Promise<StepOutcome> {
    return scheduleRetryOrGiveUp({ knex, log: this.deps.log }, saga, step, job, error, attempt);
  }

  /**
   * A restarted job: the attempt it was running never recorded its end (the process died, or hung
   * past the lock), so it is recorded now as failed, in its own transaction, or a step that kills
   * the worker would be run forever. 'recorded' when the job goes on with the next attempt;
   * 'failed' when that was the last one; 'stale' when the attempt the previous start ran was
   * recorded by someone (it failed and scheduled its retry, then died before BullMQ heard of it).
   */
  private async recordDiedAttempt(
    trx: Knex.Transaction,
    saga: AnySaga,
    step: AnyStep,
    job: SagaStepJob,
    delivery: StepDelivery,
  ): Promise<'recorded' | 'failed' | 'stale'> {
    await lockStep(trx, job.sagaId, step.name, job.phase);
    const row = await readSagaForStep(trx, job.sagaId, step.name, job.phase);
    // Nothing to record: the attempt below reads the row again and tells what the job is.
    if (!row || row.status !== (job.phase === 'execute' ? 'running' : 'compensating')) return 'recorded';
    if (row.step_status === 'completed' || row.step_status === 'failed') return 'recorded';
    if (staleGeneration(job, row)) return 'stale';
    const recorded = row.step_attempts ?? 0;
    if (job.attempt !== undefined) {
      // Each earlier start of this job ran one attempt, from job.attempt on.
      const previous = job.attempt + Math.max(2, delivery.starts ?? 2) - 2;
      if (recorded >= previous) return 'stale';
    }
    const attempt = recorded + 1;
    const error = new WorkerDiedError(step.name, job.phase, attempt);
    this.deps.log.warn({ sagaId: job.sagaId, step: step.name, phase: job.phase, attempt }, error.message);
    // Under the step's lock: recordFailureOrGiveUp's transactions are savepoints of this one.
    const outcome = await recordFailureOrGiveUp(
      { knex: trx, log: this.deps.log },
      saga,
      step,
      job,
      error,
      attempt,
    );
    return outcome === 'failed' ? 'failed' : 'recorded';
  }

  private logStale(job: SagaStepJob, why: string) {
    this.deps.log.debug({ job }, `stale saga job copy ignored: ${why}`);
  }

  async runDeadline(
    job: SagaDeadlineJob,
  ): Promise<'compensating' | 'not-applicable' | 'unknown-saga' | 'unknown-version'> {
    const found = await this.versions.resolve(job);
    if (found && 'missing' in found) {
      await this.versions.unserved(job.saga, job.sagaId, found.missing);
      return 'unknown-version';
    }
    const saga = found?.saga;
    if (!saga) return 'unknown-saga';
    const started = await this.withTransactionRetry(() =>
      this.deps.knex.transaction((trx) =>
        beginCompensation(
          trx,
          saga,
          job.sagaId,
          toErrorInfo(new SagaDeadlineError(saga.name, saga.deadlineMs), { stack: false }),
        ),
      ),
    );
    if (started) this.deps.log.warn({ sagaId: job.sagaId }, 'saga deadline passed: compensating');
    return started ? 'compensating' : 'not-applicable';
  }

  /**
   * One attempt, inside its transaction: 'completed', or the failure recorded ('retry-scheduled',
   * 'failed'). Throws to run it again uncounted (outage, conflict), or with progress.failed set
   * when the transaction died before the failure was recorded.
   */
  private async attempt(
    trx: Knex.Transaction,
    saga: AnySaga,
    step: AnyStep,
    job: SagaStepJob,
    progress: AttemptProgress,
    delivery: StepDelivery,
  ): Promise<StepOutcome> {
    const guarded = await this.guard(trx, step, job, delivery);
    if (typeof guarded === 'string') return guarded;
    return this.attemptGuarded(trx, saga, step, job, guarded.row, guarded.attempt, progress, delivery);
  }

  /** attempt() once the guard let the job run attempt `attempt` (in a batch too, with its lock). */
  private async attemptGuarded(
    trx: Knex.Transaction,
    saga: AnySaga,
    step: AnyStep,
    job: SagaStepJob,
    row: SagaForStep,
    attempt: number,
    progress: AttemptProgress,
    delivery: StepDelivery,
    /** In a batch: the bookkeeping of a step alone in its stage is left to completeDeferred. */
    defer = false,
  ): Promise<StepOutcome> {
    // The code runs under a savepoint of the transaction holding the step lock. When it fails, the
    // savepoint is rolled back and the failure recorded (retry, compensation or dead letter) in
    // this same transaction: the lock is released only once the attempt is on record, so a copy
    // waiting for it reads that and stands down instead of running the attempt again.
    //
    // The window left: the transaction dies before that commit (the connection or the server is
    // lost, the backend is terminated by pg_terminate_backend or idle_in_transaction_session_timeout,
    // the commit itself fails). The lock goes with it, the failure is recorded in a separate
    // transaction (runStep), and a copy that takes the lock in between reads no record of the
    // attempt and runs it again. The step timeout does not open it: it only cancels the running
    // query (pg_cancel_backend), which leaves the session and the savepoint usable. External effects
    // must still pass ctx.idempotencyKey: an attempt cut short by an outage is not counted either.
    let thrown: unknown;
    try {
      return await trx.transaction(async (sub) => {
        try {
          return await this.runAttempt(sub, saga, step, job, row, attempt, progress, delivery, defer);
        } catch (error) {
          thrown = error;
          if (error instanceof AttemptFailed) progress.failed = error;
          // The framework's statements after the code failed, e.g. a step that caught a database
          // error left the transaction aborted (25P02), or it sent an unstorable message.
          else if (
            progress.attempt > 0 &&
            !(error instanceof ConcurrencyConflictError) &&
            (await classifyFailure(this.deps.knex, error)) === 'application'
          )
            progress.failed = new AttemptFailed(error, progress.attempt);
          throw error;
        }
      });
    } catch (error) {
      const failed = progress.failed;
      // Knex rejects with what the code threw once the savepoint is rolled back, with the
      // rollback's own error when that failed: the transaction is dead, runStep records the failure.
      if (!failed || error !== thrown) throw error;
      // progress.failed stays set: should the commit fail, runStep records it again (idempotent).
      return this.afterFailure(trx, saga, step, job, failed.error, failed.attempt);
    }
  }

  /**
   * Whether this job runs an attempt, and which: the step lock taken, the saga row and the step's
   * record read under it. Otherwise the outcome that says why not.
   */
  private async guard(
    trx: Knex.Transaction,
    step: AnyStep,
    job: SagaStepJob,
    delivery: StepDelivery,
  ): Promise<{ row: SagaForStep; attempt: number } | StepOutcome> {
    // Copies of this job wait for each other here; the record read next is then settled.
    await lockStep(trx, job.sagaId, step.name, job.phase);
    const row = await readSagaForStep(trx, job.sagaId, step.name, job.phase);
    return this.check(row, job, delivery);
  }

  /** guard's verdict on the saga row and step record read under the step lock. */
  private check(
    row: SagaForStep | undefined,
    job: SagaStepJob,
    delivery: StepDelivery,
  ): { row: SagaForStep; attempt: number } | StepOutcome {
    if (!row || row.status !== (job.phase === 'execute' ? 'running' : 'compensating')) {
      return 'not-applicable';
    }
    // A duplicated or redelivered job: the record says this already happened (or gave up).
    if (row.step_status === 'completed' || row.step_status === 'failed') return 'duplicate';
    if (staleGeneration(job, row)) {
      this.logStale(job, `the saga moved on to generation ${row.generation}`);
      return 'stale';
    }
    const attempt = (row.step_attempts ?? 0) + 1;
    // A restarted job runs the attempt after the one it recorded as died; others exactly theirs.
    if (job.attempt !== undefined && !delivery.restarted && attempt > job.attempt) {
      this.logStale(job, `attempt ${job.attempt} was made already`);
      return 'stale';
    }
    // A retry handed out before its backoff ran out (a copy without the delay): it waits.
    if (job.notBefore !== undefined && job.notBefore > (this.deps.clock ?? systemClock).now()) return 'early';
    return { row, attempt };
  }

  /**
   * On the savepoint `trx`: the step's code, then its record and the next stage's messages (the
   * code's own messages first), leased for the eager runner when there is one.
   */
  private async runAttempt(
    trx: Knex.Transaction,
    saga: AnySaga,
    step: AnyStep,
    job: SagaStepJob,
    row: SagaForStep,
    attempt: number,
    progress: AttemptProgress,
    delivery: StepDelivery,
    defer = false,
  ): Promise<'completed'> {
    const outbox: OutboxMessage[] = [];
    const result = await this.runWithTimeout(trx, saga, step, job, row, attempt, outbox);
    progress.attempt = attempt;

    const end = { phase: job.phase, stage: step.stage, outcome: 'completed' } as const;
    // Planned from the step's place in the saga: a last single step completes it with its record.
    const planned = planNextStage(saga, end);
    if (planned.kind === 'stage' || planned.kind === 'saga-completed') {
      // A step alone in its stage (the common case): its whole bookkeeping in one statement.
      outbox.push(...(await this.nextStage(trx, saga, row, end, planned)));
      const written = this.deps.eager ? this.deps.eager.lease(outbox) : outbox;
      if (written.length <= maxOutboxValues) {
        const merged = job.phase === 'execute' && result && typeof result === 'object' ? result : undefined;
        const record: CompletedStep = {
          step: {
            sagaId: row.id,
            step: step.name,
            stage: step.stage,
            phase: job.phase,
            attempts: attempt,
            expectedVersion: row.version,
            leasedMessageId: delivery.leased?.messageId,
          },
          saga: {
            state: merged ? { ...row.state, ...merged } : undefined,
            status: planned.kind === 'saga-completed' ? 'completed' : undefined,
          },
          messages: written,
        };
        if (defer && storableRecord(record)) {
          // Recorded with the batch's other steps in one statement before its commit; should that
          // find the saga moved, the whole batch rolls back and its steps run one by one.
          progress.deferred = { record, written };
          return 'completed';
        }
        const done = await completeStep(trx, record.step, record.saga, written);
        // Nothing recorded: the saga moved meanwhile (version or status), or a duplicate completed it.
        if (!done.recorded) throw new ConcurrencyConflictError(row.id, row.version);
        progress.marked = delivery.leased !== undefined;
        const inserted = new Set(done.inserted);
        progress.written = written.filter((m) => inserted.has(m.messageId));
        return 'completed';
      }
      await this.record(trx, saga, step, job, row, attempt, result, planned.kind === 'saga-completed');
      const inserted = await insertOutboxMessages(trx, written);
      progress.written = written.filter((m) => inserted.has(m.messageId));
      return 'completed';
    }
    await this.record(trx, saga, step, job, row, attempt, result, false);
    outbox.push(...(await this.nextStage(trx, saga, row, end, planned)));

    const written = this.deps.eager ? this.deps.eager.lease(outbox) : outbox;
    const inserted = await insertOutboxMessages(trx, written);
    // A row that existed already (a sibling compensation queued before) has its own lease or job:
    // running it here too would run it twice.
    progress.written = written.filter((m) => inserted.has(m.messageId));
    if (job.phase === 'compensate') crashPoint('saga:during-compensation');
    return 'completed';
  }

  /**
   * The step's (or compensation's) code on ctx.trx (the savepoint `trx`), cut short at the step's
   * timeout; its result. Throws AttemptFailed when the code failed, what it threw otherwise.
   */
  private async runWithTimeout(
    trx: Knex.Transaction,
    saga: AnySaga,
    step: AnyStep,
    job: SagaStepJob,
    row: SagaForStep,
    attempt: number,
    outbox: OutboxMessage[],
  ): Promise<unknown> {
    const abort = new AbortController();
    const ctx = stepContext({
      trx,
      saga: row,
      sagaName: saga.name,
      step: step.name,
      phase: job.phase,
      attempt,
      outbox,
      log: this.deps.log,
      signal: abort.signal,
    });
    try {
      const fn = job.phase === 'execute' ? step.run : step.compensate!;
      return await withTimeout(
        () => Promise.resolve().then(() => fn(ctx)),
        step,
        abort,
        // Cancels the attempt's query, if one runs: the rollback would otherwise wait for it.
        () => this.deps.knex.raw('select pg_cancel_backend(?)', [row.backend_pid]),
        this.deps.clock,
      );
    } catch (error) {
      // The database going away (or a serialization conflict) is not the step's fault: the whole
      // attempt runs again. A network error of the step's own calls is the step's failure.
      if ((await classifyFailure(this.deps.knex, error)) !== 'application') throw error;
      throw new AttemptFailed(error, attempt);
    }
  }

  /**
   * The step's completion record with the saga's update (its result merged into the state, the
   * version moved; `finishes`: the saga completed), in one statement.
   */
  private async record(
    trx: Knex.Transaction,
    saga: AnySaga,
    step: AnyStep,
    job: SagaStepJob,
    row: SagaForStep,
    attempt: number,
    result: unknown,
    finishes: boolean,
  ): Promise<void> {
    const stageSize = saga.stages[step.stage]?.length ?? 1;
    const merged = job.phase === 'execute' && result && typeof result === 'object' ? result : undefined;
    const sagaUpdate =
      stageSize > 1
        ? // A group member: siblings serialize on the row lock instead of re-running on conflicts.
          mergeSagaState(trx, row.id, row.status, merged)
        : advanceSagaVersion(trx, row.id, row.version, {
            state: merged ? { ...row.state, ...merged } : undefined,
            status: finishes ? 'completed' : undefined,
          });
    // Nothing recorded: the saga moved meanwhile (version or status), or a duplicate completed it.
    const recorded = await recordStepCompleted(
      trx,
      { sagaId: row.id, step: step.name, stage: step.stage, phase: job.phase, attempts: attempt },
      sagaUpdate,
    );
    if (!recorded) throw new ConcurrencyConflictError(row.id, row.version);
  }

  /**
   * Carries out what follows the recorded step: the messages of the stage to run next, or the
   * saga's end. A group member or a compensation, `planned` as `read-records`, plans again with
   * the step records.
   */
  private async nextStage(
    trx: Knex.Transaction,
    saga: AnySaga,
    row: SagaForStep,
    end: StepEnd,
    planned: NextStage,
  ): Promise<OutboxMessage[]> {
    const saga_ = {
      id: row.id,
      name: saga.name,
      definition_version: saga.version,
      generation: row.generation,
      correlation_id: row.correlation_id,
    };
    if (planned.kind === 'stage') return stageMessages(saga_, planned);
    // Otherwise a last single step: its record's update completed the saga.
    if (planned.kind !== 'read-records') return [];
    // A parallel group: the saga row is locked by the record's update, so this new statement
    // sees every sibling that committed before; the sibling that commits last sees them all
    // and is the one that moves on.
    const records = await listStepRows(trx, row.id);
    const next = planNextStage(saga, end, records);
    if (next.kind === 'saga-completed') await transitionSaga(trx, row.id, 'running', 'completed');
    else if (next.kind === 'saga-compensated')
      await transitionSaga(trx, row.id, 'compensating', 'compensated');
    // A compensation's own stage too: siblings still pending. Their jobs normally exist (same ids:
    // not written, not run here); after a reopened compensation they may not, so writing them
    // keeps the group moving.
    else if (next.kind === 'stage') return stageMessages(saga_, next, row.generation, records);
    return [];
  }

  /**
   * Re-runs `fn` on optimistic-concurrency conflicts, serialization failures and deadlocks
   * (briefly, with jitter), and on database outages (backing off up to 5 s) until shutdown gives up.
   * None of these count as an attempt of the step.
   */
  private async withTransactionRetry<T>(fn: () => Promise<T>): Promise<T> {
    const result = await this.outages.run(fn);
    // Shutdown gave up waiting: the job fails with what it waited out, and the sweep resumes it.
    if (result instanceof Stopped) throw result.error;
    return result;
  }
}

/** The sweep or a replay re-enqueued the saga's work under a later generation: this copy is old. */
function staleGeneration(job: SagaStepJob, row: Pick<SagaForStep, 'generation'>): boolean {
  return job.generation !== undefined && job.generation < row.generation;
}

/**
 * Whether PostgreSQL takes the step's record and messages as they are. A record it refuses (NUL or
 * a lone surrogate in the state or a message) is written by the step itself, inside its savepoint,
 * so the refusal is that step's own failure: in the batch's one statement it would fail the whole
 * batch and run the other steps' code again.
 */
function storableRecord(record: CompletedStep): boolean {
  const value = [
    record.saga.state ?? null,
    record.messages.map((m) => [
      m.messageId,
      m.type,
      m.destination,
      m.payload ?? null,
      m.headers,
      m.options ?? null,
    ]),
  ];
  try {
    return storableJson(value) === JSON.stringify(value);
  } catch {
    return false;
  }
}
