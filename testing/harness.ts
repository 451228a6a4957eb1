import type { ConsumeMessage } from 'amqplib';
import type { Knex } from 'knex';
import { type SagaView, sagaView } from '../ops/saga-view.js';
import { jobIdFor } from '../relay/destinations.js';
import type { App } from '../shared/app.js';
import { migrate } from '../shared/db/migrate.js';
import {
  type DeadLetterFilter,
  type DeadLetterJson,
  deadLetterToJson,
  listDeadLetters,
} from '../shared/dead-letters.js';
import { workerDefaults, workQueueName } from '../shared/defaults.js';
import {
  type IncomingMessage,
  type OutgoingMessage,
  publishOptions,
  readIncoming,
} from '../shared/envelope.js';
import { type Logger, silentLogger } from '../shared/logger.js';
import { orderedExchangeName } from '../shared/ordering.js';
import {
  claimOutboxBatch,
  markOutboxDelivered,
  type OutboxJobOptions,
  type OutboxRow,
} from '../shared/outbox.js';
import type { SagaDefinition, StepDefinition } from '../shared/saga/definition.js';
import { type SagaJob, type SagaPhase, type SagaStepJob, sagaQueue } from '../shared/saga/jobs.js';
import { getSaga, listStepRows } from '../shared/saga/store.js';
import { MessageProcessor, type Outcome, type RetryScheduler } from '../worker/message-processor.js';
import { SagaStepRunner, type StepOutcome } from '../worker/saga/step-runner.js';
import { type Task, VirtualClock } from './virtual-time.js';

export interface TestHarnessOptions {
  /** The test database (the caller creates and closes it). */
  knex: Knex;
  /**
   * Apply durable-worker's migrations and the app's before the first message.
   * @defaultValue true
   */
  migrate?: boolean;
  /**
   * The exchange the app publishes its events on (DW_EXCHANGE); events of types the app handles
   * come back to its own handlers, as the work queue's bindings make them in production.
   * @defaultValue "dw.messages"
   */
  exchange?: string;
  /**
   * Inbox consumer name and dead-letter queue of the app's messages.
   * @defaultValue `<exchange>.<app name>`
   */
  queue?: string;
  /**
   * Largest message body accepted, in bytes (WorkerOptions.maxMessageBytes).
   * @defaultValue 1048576
   */
  maxMessageBytes?: number;
  /**
   * WorkerOptions.maxDeliveries.
   * @defaultValue 5
   */
  maxDeliveries?: number;
  /** @defaultValue a logger that discards everything */
  logger?: Logger;
}

export interface PublishOptions {
  /** Message id (the inbox key). @defaultValue a new uuid */
  id?: string;
  /** @defaultValue the message id */
  correlationId?: string;
  causationId?: string;
  /** Extra AMQP headers. */
  headers?: Record<string, unknown>;
  /** Raw body bytes instead of `JSON.stringify(payload)` (to test what arrives malformed). */
  body?: Buffer | string;
}

/** A BullMQ job the app's handlers or steps sent to a queue of their own (not a saga job). */
export interface SentJob<Payload = unknown> {
  queue: string;
  messageId: string;
  type: string;
  payload: Payload;
  headers: Record<string, string>;
  options: OutboxJobOptions;
}

/** An event the app published through the outbox to RabbitMQ. */
export interface PublishedEvent<Payload = unknown> {
  exchange: string;
  routingKey: string;
  messageId: string;
  type: string;
  payload: Payload;
  headers: Record<string, string>;
}

/** What the harness ran, in order: each message delivery and each saga job, with its outcome. */
export type HarnessEvent =
  | { kind: 'message'; messageId: string; type: string | undefined; attempt: number; outcome: Outcome }
  | {
      kind: 'step';
      sagaId: string;
      saga: string;
      step: string;
      phase: SagaPhase;
      attempt: number | undefined;
      /** Handed out again after a (simulated) crash. */
      restarted: boolean;
      outcome: StepOutcome;
    }
  | { kind: 'deadline'; sagaId: string; saga: string; outcome: string };

export interface TestHarness {
  /** The virtual time (epoch ms): the real time plus every advanceTime so far. */
  now(): number;
  /**
   * Delivers a message to the app's handlers as RabbitMQ would (type = routing key); it runs on
   * the next idle() or advanceTime(). Returns the message id.
   */
  publish(type: string, payload: unknown, options?: PublishOptions): string;
  /**
   * Runs everything that is due now (messages, immediate retries, saga steps and compensations,
   * handler events, the next steps they queue) until nothing due is left. Rejects with the first
   * error the harness itself met (a failure in the framework, never a handler's or step's).
   */
  idle(): Promise<void>;
  /**
   * Moves the virtual time by `ms`, running in time order what falls due meanwhile: delayed
   * message retries, step retries after their backoff, delayed jobs, saga deadlines, and the
   * timeouts of steps still running. Ends like idle().
   */
  advanceTime(ms: number): Promise<void>;
  /** Jobs sent to `queue` (all queues when omitted), oldest first; `Payload` is what the test expects. */
  sent<Payload = unknown>(queue?: string): SentJob<Payload>[];
  /** Events published with this type (all when omitted), oldest first. */
  published<Payload = unknown>(type?: string): PublishedEvent<Payload>[];
  /** The saga as `dw sagas show <id> --json` prints it; undefined when there is none. */
  saga(id: string): Promise<SagaView | undefined>;
  /** The dead letters as `dw dlq list --json` prints them (newest first). */
  deadLetters(filter?: Omit<DeadLetterFilter, 'ids'>): Promise<DeadLetterJson[]>;
  /** Everything run so far, in order. */
  readonly history: readonly HarnessEvent[];
  /**
   * The next `times` attempts of the step (its run function) throw `error` (default: an Error
   * saying so) before its code runs; retries, compensation and dead letters follow as in production.
   */
  failStep<S extends object>(
    saga: string | SagaDefinition<S>,
    step: string,
    times: number,
    error?: unknown,
  ): void;
  /** The same for the step's compensation. */
  failCompensation<S extends object>(
    saga: string | SagaDefinition<S>,
    step: string,
    times: number,
    error?: unknown,
  ): void;
  /**
   * The next time the step (any saga, or `options.saga`) commits, the process "dies" right after
   * the commit: the job is handed out again as a stalled BullMQ job would be, and the next steps
   * go through the outbox as the relay would deliver them.
   */
  crashAfterCommit(step: string, options?: { saga?: string; phase?: SagaPhase }): void;
  /** Ends what still runs (firing pending step timeouts); the knex stays open (it is the caller's). */
  close(): Promise<void>;
}

type Work =
  | { kind: 'message'; incoming: IncomingMessage }
  | { kind: 'job'; jobId: string; job: SagaJob; starts: number; postponed: number };

interface Entry {
  dueAt: number;
  seq: number;
  work: Work;
}

// biome-ignore lint/suspicious/noExplicitAny: sagas of any state type
type AnySaga = SagaDefinition<any>;
// biome-ignore lint/suspicious/noExplicitAny: see AnySaga
type AnyStep = StepDefinition<any>;

/**
 * Runs `app`'s handlers and sagas in this process against a real Postgres, through the worker's
 * own MessageProcessor and SagaStepRunner; only the transports are replaced: RabbitMQ by an
 * in-memory queue, its retry queues and BullMQ's delays by a virtual-time scheduler, the relay by
 * the harness claiming outbox rows itself (with the relay's claim, so they end delivered).
 */
export async function createTestHarness(app: App, options: TestHarnessOptions): Promise<TestHarness> {
  if (options.migrate ?? true) await migrate(options.knex, app.migrations);
  return new Harness(app, options);
}

class Harness implements TestHarness {
  readonly history: HarnessEvent[] = [];
  private readonly knex: Knex;
  private readonly exchange: string;
  private readonly clock: VirtualClock;
  private readonly processor: MessageProcessor;
  private readonly runner: SagaStepRunner;
  private readonly abort = new AbortController();
  private readonly entries: Entry[] = [];
  private readonly tasks = new Set<Task>();
  private readonly seenJobs = new Set<string>();
  private readonly sentJobs: SentJob[] = [];
  private readonly events: PublishedEvent[] = [];
  private readonly faults = new Map<string, { left: number; error: unknown }>();
  private readonly crashes: Array<{ step: string; saga?: string; phase: SagaPhase }> = [];
  private errors: unknown[] = [];
  private closed = false;
  private seq = 0;
  private turn: Promise<unknown> = Promise.resolve();
  private change = deferred();

  constructor(
    private readonly app: App,
    options: TestHarnessOptions,
  ) {
    this.knex = options.knex;
    this.exchange = options.exchange ?? 'dw.messages';
    const log = options.logger ?? silentLogger;
    this.clock = new VirtualClock(() => this.notify());
    const retries: RetryScheduler = {
      schedule: async (_tierMs, delayMs, content, properties) => {
        const incoming = readIncoming({
          content,
          fields: { routingKey: properties.type ?? '', redelivered: false },
          properties,
        } as unknown as ConsumeMessage);
        this.enqueue(this.clock.now() + delayMs, { kind: 'message', incoming });
      },
    };
    this.processor = new MessageProcessor({
      app,
      knex: this.knex,
      queue: options.queue ?? workQueueName(this.exchange, app.name),
      exchange: this.exchange,
      retryQueues: retries,
      maxMessageBytes: options.maxMessageBytes ?? workerDefaults.maxMessageBytes,
      maxDeliveries: options.maxDeliveries ?? workerDefaults.maxDeliveries,
      // No broker counts the harness's redeliveries: the crash-loop accounting is kept in Postgres.
      queueType: 'classic',
      log,
      signal: this.abort.signal,
    });
    this.runner = new SagaStepRunner({
      app: this.withFaults(app),
      knex: this.knex,
      log,
      signal: this.abort.signal,
      clock: this.clock,
    });
  }

  now(): number {
    return this.clock.now();
  }

  publish(type: string, payload: unknown, options: PublishOptions = {}): string {
    this.assertOpen('publish');
    const message: OutgoingMessage = {
      type,
      payload,
      id: options.id,
      correlationId: options.correlationId,
      causationId: options.causationId,
      headers: options.headers,
    };
    const body =
      options.body === undefined
        ? Buffer.from(JSON.stringify(payload))
        : Buffer.isBuffer(options.body)
          ? options.body
          : Buffer.from(options.body);
    const incoming = this.incoming(message, type, body);
    this.enqueue(this.clock.now(), { kind: 'message', incoming });
    return incoming.id;
  }

  idle(): Promise<void> {
    return this.inTurn(async () => {
      await this.settle(false);
    });
  }

  advanceTime(ms: number): Promise<void> {
    if (!(Number.isFinite(ms) && ms >= 0)) {
      return Promise.reject(new RangeError(`advanceTime: ms must be a finite number >= 0, got ${ms}`));
    }
    return this.inTurn(async () => {
      // What is due now runs before the time moves; a step waiting for its timeout stays parked.
      await this.settle(true);
      const target = this.clock.now() + ms;
      for (;;) {
        const entry = this.nextEntry(target);
        const timer = this.clock.nextTimer(target);
        if (!entry && !timer) break;
        if (timer && (!entry || timer.dueAt <= entry.dueAt)) {
          this.clock.moveTo(timer.dueAt);
          this.clock.fire(timer);
        } else if (entry) {
          this.clock.moveTo(entry.dueAt);
        }
        await this.settle(true);
      }
      this.clock.moveTo(target);
      await this.settle(true);
    });
  }

  sent<Payload = unknown>(queue?: string): SentJob<Payload>[] {
    return this.sentJobs.filter((job) => queue === undefined || job.queue === queue) as SentJob<Payload>[];
  }

  published<Payload = unknown>(type?: string): PublishedEvent<Payload>[] {
    return this.events.filter(
      (event) => type === undefined || event.type === type,
    ) as PublishedEvent<Payload>[];
  }

  async saga(id: string): Promise<SagaView | undefined> {
    const row = await getSaga(this.knex, id);
    return row ? sagaView(row, await listStepRows(this.knex, id)) : undefined;
  }

  async deadLetters(filter: Omit<DeadLetterFilter, 'ids'> = {}): Promise<DeadLetterJson[]> {
    const rows = await listDeadLetters(this.knex, filter);
    return rows.map((row) => deadLetterToJson(row));
  }

  failStep<S extends object>(
    saga: string | SagaDefinition<S>,
    step: string,
    times: number,
    error?: unknown,
  ): void {
    this.addFault(saga, step, 'execute', times, error);
  }

  failCompensation<S extends object>(
    saga: string | SagaDefinition<S>,
    step: string,
    times: number,
    error?: unknown,
  ): void {
    this.addFault(saga, step, 'compensate', times, error);
  }

  crashAfterCommit(step: string, options: { saga?: string; phase?: SagaPhase } = {}): void {
    const sagas = [...this.app.sagas.values()].filter((s) => !options.saga || s.name === options.saga);
    if (!sagas.some((s) => s.getStep(step))) {
      throw new Error(`crashAfterCommit: no saga of app ${this.app.name} has a step named "${step}"`);
    }
    this.crashes.push({ step, saga: options.saga, phase: options.phase ?? 'execute' });
  }

  async close(): Promise<void> {
    this.closed = true;
    this.abort.abort();
    this.clock.fireAll();
    await this.turn.catch(() => {});
    while (this.tasks.size > 0) {
      const waiting = this.change.promise;
      this.clock.fireAll();
      if (this.tasks.size > 0) await waiting;
    }
  }

  private assertOpen(what: string): void {
    if (this.closed) throw new Error(`${what}: the test harness is closed; create another one`);
  }

  /** Serialises idle() and advanceTime() calls. */
  private inTurn(fn: () => Promise<void>): Promise<void> {
    if (this.closed) return Promise.reject(new Error('the test harness is closed; create another one'));
    const run = this.turn.then(fn).then(() => {
      const [first] = this.errors;
      this.errors = [];
      if (first !== undefined) throw first;
    });
    this.turn = run.catch(() => {});
    return run;
  }

  private notify(): void {
    const current = this.change;
    this.change = deferred();
    current.resolve();
  }

  /**
   * Relays the outbox and runs due work, one piece at a time, until none is due and nothing runs.
   * A task inside a step timeout (it set a virtual timer) does not hold the next piece back: it
   * may be waiting for its timeout, which only moving the time ends. At the end, with
   * `allowParked` such tasks are left running; without, they are waited for.
   */
  private async settle(allowParked: boolean): Promise<void> {
    for (;;) {
      if ([...this.tasks].some((task) => task.timers === 0)) {
        await this.change.promise;
        continue;
      }
      // A task that ends while the outbox is read may commit rows that read did not see: then
      // read again before calling it idle.
      const before = this.change;
      await this.relayOutbox();
      const entry = this.nextEntry(this.clock.now());
      if (entry) {
        this.entries.splice(this.entries.indexOf(entry), 1);
        this.start(entry.work);
        continue;
      }
      if (this.change !== before) continue;
      if (allowParked || this.tasks.size === 0) return;
      await this.waitForParked();
    }
  }

  /**
   * Only tasks inside a step timeout are left: they usually finish on their own, but one that
   * waits for its timeout never does until the time moves. Say so instead of hanging the test.
   */
  private async waitForParked(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const quiet = new Promise<'quiet'>((resolve) => {
      timer = setTimeout(() => resolve('quiet'), parkedHintMs);
    });
    try {
      if ((await Promise.race([this.change.promise, quiet])) === 'quiet') {
        throw new Error(
          `idle(): a saga step with a timeoutMs has been running for ${parkedHintMs / 1000} s; if it waits for its timeout, call advanceTime(timeoutMs) instead of idle()`,
        );
      }
    } finally {
      clearTimeout(timer);
    }
  }

  private start(work: Work): void {
    const task: Task = { timers: 0, done: false };
    this.tasks.add(task);
    void this.clock.tasks
      .run(task, () => (work.kind === 'message' ? this.runMessage(work) : this.runJob(work)))
      .catch((error) => this.errors.push(error))
      .finally(() => {
        task.done = true;
        this.tasks.delete(task);
        this.notify();
      });
  }

  private async runMessage(work: Extract<Work, { kind: 'message' }>): Promise<void> {
    const { incoming } = work;
    const outcome = await this.processor.process(incoming);
    this.history.push({
      kind: 'message',
      messageId: incoming.id,
      type: incoming.type,
      attempt: incoming.attempt,
      outcome,
    });
    // Unacked: the broker hands it out again, flagged as redelivered.
    if (outcome === 'requeue' && !this.abort.signal.aborted) {
      this.enqueue(this.clock.now(), { kind: 'message', incoming: { ...incoming, redelivered: true } });
    }
  }

  private async runJob(work: Extract<Work, { kind: 'job' }>): Promise<void> {
    const { job } = work;
    if (job.kind === 'deadline') {
      const outcome = await this.runner.runDeadline(job);
      this.history.push({ kind: 'deadline', sagaId: job.sagaId, saga: job.saga, outcome });
      return;
    }
    work.starts++;
    // As the BullMQ runner counts them: starts that only put an early job back do not count.
    const starts = work.starts - work.postponed;
    const restarted = starts > 1;
    const outcome = await this.runner.runStep(job, { restarted, starts });
    this.history.push({
      kind: 'step',
      sagaId: job.sagaId,
      saga: job.saga,
      step: job.step,
      phase: job.phase,
      attempt: job.attempt,
      restarted,
      outcome,
    });
    if (outcome === 'early' && job.notBefore !== undefined) {
      work.postponed++;
      this.enqueue(job.notBefore, work);
    } else if (outcome === 'completed' && this.takeCrash(job)) {
      // The process died before BullMQ heard of the end: the stalled job is handed out again.
      this.enqueue(this.clock.now(), work);
    }
  }

  private takeCrash(job: SagaStepJob): boolean {
    const index = this.crashes.findIndex(
      (c) => c.step === job.step && c.phase === job.phase && (!c.saga || c.saga === job.saga),
    );
    if (index < 0) return false;
    this.crashes.splice(index, 1);
    return true;
  }

  /** Claims every deliverable outbox row as the relay does and delivers it to its stand-in. */
  private async relayOutbox(): Promise<void> {
    const batch = 500;
    for (;;) {
      const claimed = await this.knex.transaction(async (trx) => {
        const rows = await claimOutboxBatch(trx, batch);
        for (const row of rows) this.deliver(row);
        await markOutboxDelivered(
          trx,
          rows.map((r) => r.id),
          [],
          undefined,
        );
        return rows.length;
      });
      if (claimed < batch) return;
    }
  }

  private deliver(row: OutboxRow): void {
    const { destination } = row;
    if (destination.kind === 'bullmq') {
      const jobId = jobIdFor(row.messageId);
      if (destination.queue === sagaQueue) {
        // BullMQ adds a job id once.
        if (this.seenJobs.has(jobId)) return;
        this.seenJobs.add(jobId);
        const job = row.payload as SagaJob;
        this.enqueue(this.clock.now() + (row.options?.delay ?? 0), {
          kind: 'job',
          jobId,
          job,
          starts: 0,
          postponed: 0,
        });
        return;
      }
      this.sentJobs.push({
        queue: destination.queue,
        messageId: row.messageId,
        type: row.type,
        payload: row.payload,
        headers: row.headers,
        options: row.options ?? {},
      });
      return;
    }
    this.events.push({
      exchange: destination.exchange,
      routingKey: destination.routingKey,
      messageId: row.messageId,
      type: row.type,
      payload: row.payload,
      headers: row.headers,
    });
    // The work queue is bound to the app's exchange with each type it handles (appTopology), and
    // its partitions to the ordered exchange (keyed messages, shared/ordering.ts).
    const ours =
      destination.exchange === this.exchange || destination.exchange === orderedExchangeName(this.exchange);
    if (ours && this.app.handlers.has(destination.routingKey)) {
      const message: OutgoingMessage = {
        id: row.messageId,
        type: row.type,
        payload: row.payload,
        correlationId: row.headers.correlationId,
        causationId: row.headers.causationId,
        traceparent: row.headers.traceparent,
        orderingKey: row.headers.orderingKey,
      };
      const body = Buffer.from(JSON.stringify(row.payload));
      this.enqueue(this.clock.now(), {
        kind: 'message',
        incoming: this.incoming(message, destination.routingKey, body),
      });
    }
  }

  /** The message as the consumer reads it off the queue (readIncoming), from what a publisher sends. */
  private incoming(message: OutgoingMessage, routingKey: string, body: Buffer): IncomingMessage {
    return readIncoming({
      content: body,
      fields: { routingKey, redelivered: false },
      properties: publishOptions(message),
    } as unknown as ConsumeMessage);
  }

  private enqueue(dueAt: number, work: Work): void {
    this.entries.push({ dueAt, seq: ++this.seq, work });
    this.notify();
  }

  /** The earliest entry due at or before `time` (first queued first among equals). */
  private nextEntry(time: number): Entry | undefined {
    let next: Entry | undefined;
    for (const entry of this.entries) {
      if (entry.dueAt > time) continue;
      if (!next || entry.dueAt < next.dueAt || (entry.dueAt === next.dueAt && entry.seq < next.seq))
        next = entry;
    }
    return next;
  }

  private addFault<S extends object>(
    saga: string | SagaDefinition<S>,
    step: string,
    phase: SagaPhase,
    times: number,
    error: unknown,
  ): void {
    const name = typeof saga === 'string' ? saga : saga.name;
    const definition = this.app.sagas.get(name) as AnySaga | undefined;
    const target = definition?.getStep(step);
    if (!target) throw new Error(`no step "${step}" in saga "${name}" of app ${this.app.name}`);
    if (phase === 'compensate' && !target.compensate) {
      throw new Error(`step "${step}" of saga "${name}" has no compensation to fail`);
    }
    if (!(Number.isInteger(times) && times >= 0)) throw new RangeError('times must be a whole number >= 0');
    this.faults.set(faultKey(name, step, phase), { left: times, error });
  }

  /**
   * The app the step runner sees: each saga a copy whose steps first consume the faults asked
   * for. The handlers keep the original definitions (startSaga checks they are the app's own).
   */
  private withFaults(app: App): App {
    const wrap = (name: string, saga: AnySaga): AnySaga => {
      const wrapped = Object.create(saga) as AnySaga;
      const stages = saga.stages.map((stage) =>
        stage.map(
          (step): AnyStep => ({
            ...step,
            run: this.faulty(name, step, 'execute', step.run),
            compensate: step.compensate && this.faulty(name, step, 'compensate', step.compensate),
          }),
        ),
      );
      Object.defineProperty(wrapped, 'stages', { value: stages });
      return wrapped;
    };
    // Every version the runner may look up, so an instance of an older version meets its faults too.
    const sagaVersions = new Map<string, Map<number, AnySaga>>();
    for (const [name, versions] of app.sagaVersions as ReadonlyMap<string, ReadonlyMap<number, AnySaga>>) {
      sagaVersions.set(name, new Map([...versions].map(([version, saga]) => [version, wrap(name, saga)])));
    }
    const sagas = new Map<string, AnySaga>();
    for (const [name, saga] of app.sagas as ReadonlyMap<string, AnySaga>) {
      sagas.set(name, sagaVersions.get(name)?.get(saga.version) ?? wrap(name, saga));
    }
    return {
      ...app,
      sagas,
      sagaVersions,
      sagaDefinition: (name, version) => sagaVersions.get(name)?.get(version),
    };
  }

  private faulty<F extends (...args: never[]) => unknown>(
    saga: string,
    step: AnyStep,
    phase: SagaPhase,
    fn: F,
  ): F {
    const key = faultKey(saga, step.name, phase);
    return ((...args: Parameters<F>) => {
      const fault = this.faults.get(key);
      if (fault && fault.left > 0) {
        fault.left--;
        throw (
          fault.error ??
          new Error(
            `${phase === 'execute' ? 'step' : 'compensation of'} ${step.name} fails on purpose (failStep)`,
          )
        );
      }
      return fn(...args);
    }) as F;
  }
}

/** How long idle() waits for steps inside their timeout with nothing else happening. */
const parkedHintMs = 10_000;

function faultKey(saga: string, step: string, phase: SagaPhase): string {
  return JSON.stringify([saga, step, phase]);
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}
