import amqp from 'amqplib';
import { Redis } from 'ioredis';
import { app } from '../../../examples/app/index.js';
import { exampleMigrations } from '../../../examples/app/migrations.js';
import { workerDefaults } from '../../../shared/defaults.js';
import { declareOrderedTopology } from '../../../shared/ordering.js';
import type { QueueType } from '../../../shared/queue-type.js';
import { createRedis, type RedisClient, type RedisMode } from '../../../shared/redis.js';
import { appTopology, declareTopology, type Topology } from '../../../shared/topology.js';
import { waitUntil } from '../../../shared/wait.js';
import { count, createTestEnv, randomName, type TestEnv, urls } from '../../support/services.js';
import { closeLoadConnection, joinMeetings, keyedJoinMeetings, type Load, publishLoad } from './load.js';
import { type Kind, Supervisor, type SupervisorOptions } from './processes.js';
import { type Random, seededRandom } from './random.js';
import {
  planTrips,
  type SagaCounters,
  sagaCounters,
  sagasInFlight,
  type TripPlan,
  tripMessages,
} from './trips.js';

export const JOIN_MEETING_QUEUES = ['user_notification_events', 'user_ecst_events'] as const;

export interface Counters extends Partial<SagaCounters> {
  /** Published messages without their effect (participant row, or a job in either queue). */
  lost: number;
  /** Effects that happened more than once (participant rows, jobs for one user in one queue). */
  duplicated: number;
  /** Effects no published message asked for. */
  unexpected: number;
  /** Outbox rows not delivered yet. */
  outboxPending: number;
  /** Dead letters of messages that are missing (an invalid message without one) or not deserved. */
  deadLetters: number;
  /**
   * Ordering keys (meetings of the keyed load) whose messages were not handled exactly once each in
   * publish order (participant rows by id against the first publish of each message id).
   */
  keysOutOfOrder?: number;
}

export interface ChaosRunOptions {
  /**
   * REDIS_URL of the processes and of the run's own counting client (a comma list in cluster mode).
   * @defaultValue the shared Redis
   */
  redisUrl?: string;
  /**
   * REDIS_MODE of the processes and of the counting client.
   * @defaultValue 'single'
   */
  redisMode?: RedisMode;
  /**
   * REDIS_SENTINEL_NAME of the processes in sentinel mode.
   * @defaultValue unset
   */
  redisSentinelName?: string;
  /**
   * BULLMQ_PREFIX; cluster mode needs a hash tag.
   * @defaultValue the test env's prefix, wrapped in `{…}` in cluster mode
   */
  bullmqPrefix?: string;
  /**
   * DW_QUEUE_TYPE of the processes, and the type the work queue is declared with before the load.
   * @defaultValue unset: the processes keep the type the run declared (quorum, the default)
   */
  queueType?: QueueType;
  /**
   * Declare the ordered path (ordered exchange, consistent-hash exchange, the default number of
   * partition queues) before the load too, so keyed messages published before the workers are up
   * are queued, not unroutable. Needs the consistent-hash exchange plugin.
   * @defaultValue false
   */
  ordered?: boolean;
  /**
   * More environment for every process (on top of the run's own).
   * @defaultValue {}
   */
  env?: NodeJS.ProcessEnv;
}

/**
 * One chaos scenario: its own database, exchange, queue and BullMQ prefix, a seeded random source,
 * supervised `dw worker` / `dw relay` child processes, a JoinMeeting load from an independent
 * client, and the counters read back from Postgres and Redis.
 */
export class ChaosRun {
  readonly random: Random;
  readonly runId: string;
  readonly faults: string[] = [];
  private readonly supervisors: Supervisor[] = [];
  private load: Load | undefined;
  private joins = new Map<string, string>();
  /** Keyed meetings: meeting id → its message ids. */
  private keyed = new Map<string, string[]>();
  private trips: TripPlan[] = [];
  private invalid = new Set<string>();
  /** SendInvoice message id → its invoice id, and whether it fails more often than its 5 attempts. */
  private invoices = new Map<string, { invoiceId: string; doomed: boolean }>();
  private redisClient: RedisClient | undefined;

  private constructor(
    readonly scenario: string,
    readonly env: TestEnv,
    readonly redisUrl: string,
    private readonly options: ChaosRunOptions,
  ) {
    this.random = seededRandom();
    this.runId = randomName('r');
    console.log(`[chaos] ${scenario}: seed ${this.random.seed} (repeat with CHAOS_SEED=${this.random.seed})`);
  }

  static async create(scenario: string, options: ChaosRunOptions = {}): Promise<ChaosRun> {
    const { redisUrl = urls.redis, redisMode } = options;
    const env = await createTestEnv(exampleMigrations);
    env.config.redisUrl = redisUrl;
    if (redisMode) env.config.redisMode = redisMode;
    if (options.redisSentinelName) env.config.redisSentinelName = options.redisSentinelName;
    if (options.queueType) env.config.queueType = options.queueType;
    env.config.bullmqPrefix =
      options.bullmqPrefix ??
      (redisMode === 'cluster' ? `{${env.config.bullmqPrefix}}` : env.config.bullmqPrefix);
    const run = new ChaosRun(scenario, env, redisUrl, options);
    // Bind the work queue before the load starts, as `dw migrate` does, so nothing is unroutable.
    const connection = await amqp.connect(urls.amqp);
    try {
      const channel = await connection.createChannel();
      const topology = run.topology;
      await declareTopology(channel, topology, connection);
      if (options.ordered)
        await declareOrderedTopology(
          urls.amqp,
          () => connection.createChannel(),
          channel,
          topology,
          workerDefaults.orderedPartitions,
          connection,
        );
    } finally {
      await connection.close();
    }
    return run;
  }

  /** The scenario's own database name (faults touch this database only). */
  get database(): string {
    return new URL(this.env.config.databaseUrl).pathname.slice(1);
  }

  /** The work queue as the processes declare it (of DW_QUEUE_TYPE when the run sets one). */
  get topology(): Topology {
    const queueType = this.options.queueType ?? this.env.config.queueType;
    return appTopology(
      app,
      this.env.config.exchange,
      undefined,
      queueType ? { type: queueType, explicit: true } : undefined,
    );
  }

  get processEnv(): NodeJS.ProcessEnv {
    const { config } = this.env;
    return {
      DATABASE_URL: config.databaseUrl,
      AMQP_URL: config.amqpUrl,
      REDIS_URL: this.redisUrl,
      REDIS_MODE: config.redisMode ?? 'single',
      ...(config.redisSentinelName ? { REDIS_SENTINEL_NAME: config.redisSentinelName } : {}),
      DW_EXCHANGE: config.exchange,
      BULLMQ_PREFIX: config.bullmqPrefix,
      LOG_LEVEL: 'info',
      DW_CRASH_POINTS: '',
      ...(config.redisMode ? { REDIS_MODE: config.redisMode } : {}),
      ...(config.redisSentinelName ? { REDIS_SENTINEL_NAME: config.redisSentinelName } : {}),
      ...(config.queueType ? { DW_QUEUE_TYPE: config.queueType } : {}),
      ...this.options.env,
    };
  }

  /** A supervised process (restarted whenever it dies until the scenario stops it). */
  async spawn(
    kind: Kind,
    name: string,
    options: Pick<SupervisorOptions, 'args' | 'envFor'> = {},
  ): Promise<Supervisor> {
    const supervisor = new Supervisor({ name, kind, env: this.processEnv, ...options });
    this.supervisors.push(supervisor);
    await supervisor.start();
    return supervisor;
  }

  /**
   * Publishes `joins` JoinMeeting messages and `trips` BookTrip messages (a seeded mix of trips
   * that complete, retry, or fail at some step and compensate), interleaved, from outside.
   */
  startLoad(
    joins: number,
    {
      trips = 0,
      invalid = 0,
      invoices = 0,
      keyed,
      ...options
    }: {
      trips?: number;
      invalid?: number;
      invoices?: number;
      /** JoinMeeting messages keyed by meeting id, checked for order (Counters.keysOutOfOrder). */
      keyed?: { meetings: number; usersPerMeeting: number };
      chunk?: number;
      duplicateShare?: number;
    } = {},
  ): Load {
    const joinList = joinMeetings(this.runId, joins);
    // JoinMeeting without a meetingId: each must end as exactly one dead letter and nothing else.
    const invalidList = Array.from({ length: invalid }, (_, i) => ({
      id: `${this.runId}-bad-${i}`,
      type: 'JoinMeeting',
      body: { userId: `${this.runId}-bad-u${i}` },
    }));
    this.invalid = new Set(invalidList.map((m) => m.id));
    // SendInvoice whose handler throws on its first `failTimes` attempts (docs/contracts.md, "Example
    // app": 5 attempts, 2 at once, 2 delayed): handled once after its retries, or dead-lettered.
    const invoiceList = Array.from({ length: invoices }, (_, i) => {
      const failTimes = [undefined, undefined, 1, 2, 4, 5][this.random.int(0, 5)];
      return {
        id: `${this.runId}-inv-${i}`,
        type: 'SendInvoice',
        body: { invoiceId: `${this.runId}-i${i}`, ...(failTimes === undefined ? {} : { failTimes }) },
        doomed: (failTimes ?? 0) >= 5,
      };
    });
    this.invoices = new Map(
      invoiceList.map((m) => [m.id, { invoiceId: m.body.invoiceId, doomed: m.doomed }]),
    );
    const meetings = keyed ? keyedJoinMeetings(this.runId, keyed.meetings, keyed.usersPerMeeting) : [];
    this.keyed = new Map(meetings.map((list) => [list[0]!.orderingKey!, list.map((m) => m.id)]));
    this.joins = new Map(
      [...joinList, ...meetings.flat()].map((m) => [m.id, (m.body as { userId: string }).userId]),
    );
    this.trips = planTrips(trips, this.random);
    const unordered = [
      ...joinList,
      ...invalidList,
      ...invoiceList.map(({ doomed: _, ...m }) => m),
      ...tripMessages(this.runId, this.trips),
    ];
    // Interleave (seeded shuffle), so sagas and plain messages are in flight together; each
    // meeting's keyed messages keep their order (u0, u1, …) among the rest.
    this.shuffle(unordered);
    const messages = meetings.length === 0 ? unordered : this.interleave([unordered, ...meetings]);
    this.load = publishLoad(this.env.config.exchange, messages, this.random, options);
    return this.load;
  }

  /** The lists merged in a seeded random order that keeps the order within each list. */
  private interleave<T>(lists: readonly T[][]): T[] {
    const slots = lists.flatMap((list) => list.map(() => list));
    this.shuffle(slots);
    const next = new Map<T[], number>();
    return slots.map((list) => {
      const i = next.get(list) ?? 0;
      next.set(list, i + 1);
      return list[i]!;
    });
  }

  private shuffle<T>(list: T[]): void {
    for (let i = list.length - 1; i > 0; i--) {
      const j = this.random.int(0, i);
      [list[i], list[j]] = [list[j]!, list[i]!];
    }
  }

  /**
   * Publishes again every message of the load not handled yet (no inbox row), with the same ids:
   * what a deleted queue took with it, or what was unroutable while it was gone, is sent once more;
   * the inbox absorbs any that were only in flight. Returns how many.
   */
  async republishUnhandled(): Promise<number> {
    const load = this.load;
    if (!load) throw new Error('no load was started');
    await load.done;
    const handled = new Set<string>(await this.env.knex('dw_inbox').pluck('message_id'));
    const dead = new Set<string>(await this.env.knex('dw_dead_letters').pluck('message_id'));
    const missing = [...load.messages.values()].filter((m) => !handled.has(m.id) && !dead.has(m.id));
    await publishLoad(this.env.config.exchange, missing, this.random, { duplicateShare: 0 }).done;
    return missing.length;
  }

  /** Messages handled so far (inbox rows). */
  handled(): Promise<number> {
    return count(this.env.knex, 'dw_inbox');
  }

  /** Waits until `n` more messages than now have been handled. */
  async progress(n: number, what = `${n} more messages handled`): Promise<void> {
    const target = (await this.handled()) + n;
    await waitUntil(
      async () => tolerant(async () => (await this.handled()) >= target || (await this.allHandled())),
      what,
      {
        timeoutMs: 60_000,
        intervalMs: 25,
      },
    );
  }

  private async allHandled(): Promise<boolean> {
    return (
      this.load !== undefined &&
      (await this.handled()) >= this.load.messages.size - this.expectedDeadLetters.size
    );
  }

  /** Messages that must end as exactly one dead letter each: invalid ones and doomed invoices. */
  private get expectedDeadLetters(): Set<string> {
    const dead = new Set(this.invalid);
    for (const [id, invoice] of this.invoices) if (invoice.doomed) dead.add(id);
    return dead;
  }

  /**
   * Holds handlers in flight: locks meeting_participants so every JoinMeeting transaction waits,
   * and resolves once at least one does. Returns the release.
   */
  async holdHandlers(): Promise<() => Promise<void>> {
    const trx = await this.env.knex.transaction();
    await trx.raw('lock table meeting_participants in exclusive mode');
    await waitUntil(async () => {
      // Sessions of our database waiting on a lock: the handlers we hold.
      const { rows } = await this.env.knex.raw(
        "select count(*)::int as n from pg_stat_activity where datname = ? and wait_event_type = 'Lock'",
        [this.database],
      );
      return rows[0].n > 0;
    }, 'a handler to be waiting on the held lock');
    return async () => {
      await trx.rollback();
    };
  }

  fault(description: string): void {
    this.faults.push(description);
  }

  /**
   * Waits until every published message was handled and delivered onward (or `timeoutMs`), then
   * returns the counters. A timeout is not thrown: the counters then say what is missing.
   */
  async settle(timeoutMs = 90_000): Promise<Counters> {
    const load = this.load;
    if (!load) throw new Error('no load was started');
    await load.done;
    const expectedJobs = this.joins.size * JOIN_MEETING_QUEUES.length;
    await waitUntil(
      () =>
        tolerant(
          async () =>
            (await this.handled()) >= load.messages.size - this.expectedDeadLetters.size &&
            (await count(this.env.knex, 'dw_dead_letters', { source: 'amqp' })) >=
              this.expectedDeadLetters.size &&
            (await count(this.env.knex, 'dw_outbox', { delivered_at: null })) === 0 &&
            (await this.jobCount()) >= expectedJobs &&
            (this.trips.length === 0 ||
              ((await count(this.env.knex, 'dw_sagas')) >= this.trips.length &&
                (await sagasInFlight(this.env.knex)) === 0)),
        ),
      'every message handled and relayed',
      { timeoutMs, intervalMs: 200 },
    ).catch((error: Error) => console.log(`[chaos] ${this.scenario}: ${error.message}`));
    return this.counters();
  }

  private redis(): RedisClient {
    if (!this.redisClient) {
      // A single node as before (reconnecting, one retry per command, for scenarios that restart
      // it); a cluster or sentinels through the project's own factory, as the processes connect
      // (reconnecting too; no scenario takes a cluster down, where its commands would wait).
      this.redisClient =
        this.env.config.redisMode && this.env.config.redisMode !== 'single'
          ? createRedis(this.env.config)
          : new Redis(this.redisUrl, { maxRetriesPerRequest: 1 });
      this.redisClient.on('error', () => {});
    }
    return this.redisClient;
  }

  private async jobCount(): Promise<number> {
    const prefix = this.env.config.bullmqPrefix;
    let total = 0;
    for (const queue of JOIN_MEETING_QUEUES) total += await this.redis().llen(`${prefix}:${queue}:wait`);
    return total;
  }

  async counters(): Promise<Counters> {
    const load = this.load;
    if (!load) throw new Error('no load was started');
    const { knex, config } = this.env;
    // After a Postgres restart the test's own pool may hold dead connections: let it renew them.
    await waitUntil(
      () => tolerant(async () => Boolean(await knex.raw('select 1'))),
      'the test database pool',
    );
    const expected = new Set(this.joins.values());
    let lost = 0;
    let duplicated = 0;
    let unexpected = 0;

    const rows = await knex('meeting_participants')
      .select('user_id')
      .count<{ user_id: string; n: number }[]>('* as n')
      .groupBy('user_id');
    const participants = new Map(rows.map((r) => [r.user_id, Number(r.n)]));
    for (const [user, n] of participants) {
      if (!expected.has(user)) unexpected += n;
      else duplicated += n - 1;
    }
    for (const user of expected) if (!participants.has(user)) lost++;

    const expectedDead = this.expectedDeadLetters;
    const inbox = await knex('dw_inbox').pluck('message_id');
    for (const id of inbox) if (!load.messages.has(id) || expectedDead.has(id)) unexpected++;

    const dead = new Set<string>(await knex('dw_dead_letters').where({ source: 'amqp' }).pluck('message_id'));
    let deadLetters = 0;
    for (const id of dead) if (!expectedDead.has(id)) deadLetters++;
    for (const id of expectedDead) if (!dead.has(id)) deadLetters++;

    if (this.invoices.size > 0) {
      const sent = await knex('invoices_sent')
        .select('invoice_id')
        .count<{ invoice_id: string; n: number }[]>('* as n')
        .groupBy('invoice_id');
      const sentCount = new Map(sent.map((r) => [r.invoice_id, Number(r.n)]));
      const known = new Set<string>();
      for (const { invoiceId, doomed } of this.invoices.values()) {
        known.add(invoiceId);
        const n = sentCount.get(invoiceId) ?? 0;
        if (doomed) unexpected += n;
        else if (n === 0) lost++;
        else duplicated += n - 1;
      }
      for (const [invoiceId, n] of sentCount) if (!known.has(invoiceId)) unexpected += n;
    }

    // The onward effect: one job per participant in each queue, nothing consumes them in this app.
    const redis = this.redis();
    for (const queue of JOIN_MEETING_QUEUES) {
      const ids = await redis.lrange(`${config.bullmqPrefix}:${queue}:wait`, 0, -1);
      duplicated += ids.length - new Set(ids).size;
      const perUser = new Map<string, number>();
      const pipeline = redis.pipeline();
      for (const id of new Set(ids)) pipeline.hget(`${config.bullmqPrefix}:${queue}:${id}`, 'data');
      const replies = (await pipeline.exec()) ?? [];
      for (const [, data] of replies) {
        const userId = data
          ? (JSON.parse(String(data)) as { payload: { userId: string } }).payload.userId
          : '';
        perUser.set(userId, (perUser.get(userId) ?? 0) + 1);
      }
      for (const [user, n] of perUser) {
        if (!expected.has(user)) unexpected += n;
        else duplicated += n - 1;
      }
      for (const user of expected) if (!perUser.has(user)) lost++;
    }

    return {
      lost,
      duplicated,
      unexpected,
      outboxPending: await count(knex, 'dw_outbox', { delivered_at: null }),
      deadLetters,
      ...(this.keyed.size ? { keysOutOfOrder: (await this.orderViolations()).length } : {}),
      ...(this.trips.length ? await sagaCounters(knex, this.trips) : {}),
    };
  }

  /**
   * The keyed meetings whose participant rows, by id (the order the handlers inserted them: one
   * message of a key at a time, so each insert after the previous one committed), differ from the
   * publish order of their messages: the first publish of each message id (a duplicate published
   * earlier than the original is where that message stands; later copies are absorbed by the inbox).
   */
  async orderViolations(): Promise<Array<{ key: string; published: string[]; handled: string[] }>> {
    const load = this.load;
    if (!load) throw new Error('no load was started');
    const order = new Map<string, string[]>();
    const seen = new Set<string>();
    for (const m of load.sequence) {
      if (m.orderingKey === undefined || seen.has(m.id)) continue;
      seen.add(m.id);
      const list = order.get(m.orderingKey) ?? [];
      list.push(this.joins.get(m.id) ?? '?');
      order.set(m.orderingKey, list);
    }
    const violations: Array<{ key: string; published: string[]; handled: string[] }> = [];
    for (const key of this.keyed.keys()) {
      const handled: string[] = await this.env
        .knex('meeting_participants')
        .where({ meeting_id: key })
        .orderBy('id')
        .pluck('user_id');
      const published = order.get(key) ?? [];
      if (handled.length !== published.length || handled.some((user, i) => user !== published[i]))
        violations.push({ key, published, handled });
    }
    return violations;
  }

  /** Messages of the keyed load handled so far (participant rows of keyed meetings). */
  async keyedHandled(): Promise<number> {
    if (this.keyed.size === 0) return 0;
    return Number(
      (
        await this.env
          .knex('meeting_participants')
          .whereIn('meeting_id', [...this.keyed.keys()])
          .count<{ n: string }[]>('* as n')
      )[0]?.n ?? 0,
    );
  }

  /** How many keyed messages the load has in all. */
  get keyedTotal(): number {
    return [...this.keyed.values()].reduce((n, ids) => n + ids.length, 0);
  }

  /** Prints the counters with the seed and the faults injected; a failing scenario shows this line. */
  report(counters: Counters, extra: Record<string, unknown> = {}): string {
    const restarts = Object.fromEntries(
      this.supervisors.map((s) => [s.all[0]?.name ?? '?', s.incarnations - 1]),
    );
    const warnings = Object.fromEntries(
      this.supervisors.map((s) => [s.all[0]?.name ?? '?', { total: s.warnings, ...s.warningKinds }]),
    );
    const line = JSON.stringify({
      scenario: this.scenario,
      seed: this.random.seed,
      messages: this.load?.messages.size,
      trips: this.trips.length,
      published: this.load?.confirmed(),
      ...counters,
      faults: this.faults.length,
      restarts,
      warnings,
      ...extra,
    });
    console.log(`[chaos] ${line}`);
    return line;
  }

  tails(): string {
    return this.supervisors.map((s) => s.tail()).join('\n');
  }

  /** Graceful stop of every process; the exits (a graceful stop must exit 0). */
  async stopAll(): Promise<Array<{ name: string; code: number | null; signal: string | null }>> {
    const exits = await Promise.all(
      this.supervisors.map(async (s) => {
        const exit = await s.stop();
        return exit
          ? { name: s.all[0]?.name ?? '?', code: exit.code, signal: exit.signal }
          : { name: s.all[0]?.name ?? '?', code: null, signal: 'grace time exceeded' };
      }),
    );
    return exits;
  }

  async teardown(): Promise<void> {
    await Promise.all(this.supervisors.map((s) => s.destroy()));
    await closeLoadConnection();
    this.redisClient?.disconnect();
    this.redisClient = undefined;
    await this.env.teardown();
  }
}

/** A check that fails while a service is being restarted is simply "not yet". */
async function tolerant(check: () => Promise<boolean>): Promise<boolean> {
  try {
    return await check();
  } catch {
    return false;
  }
}

/** Asserts the counters are all zero; the message carries the report line (seed included) and the logs. */
export function assertClean(run: ChaosRun, counters: Counters, extra: Record<string, unknown> = {}): void {
  const line = run.report(counters, extra);
  const bad = Object.entries(counters).filter(([, v]) => v !== 0);
  if (bad.length > 0) {
    throw new Error(`chaos scenario "${run.scenario}" broke a guarantee: ${line}\n${run.tails()}`);
  }
}
