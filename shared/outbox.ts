import type { Knex } from 'knex';
import { InvalidDestinationError } from './errors.js';
import { storableText } from './storable.js';

/**
 * Where an outbox message goes: a BullMQ queue (a bare string is a queue name), or an AMQP exchange
 * with a routing key (integration events for other services).
 */
export type Destination = string | { queue: string } | { exchange: string; routingKey: string };

export type ResolvedDestination =
  | { kind: 'bullmq'; queue: string }
  | { kind: 'amqp'; exchange: string; routingKey: string };

/** Throws InvalidDestinationError for a destination nothing could deliver to. */
export function resolveDestination(destination: Destination): ResolvedDestination {
  if (typeof destination === 'string') return bullmqDestination(destination);
  if ('queue' in destination) return bullmqDestination(destination.queue);
  return { kind: 'amqp', exchange: destination.exchange, routingKey: destination.routingKey };
}

function bullmqDestination(queue: unknown): ResolvedDestination {
  const problem = bullmqQueueNameProblem(queue);
  if (problem)
    throw new InvalidDestinationError(`cannot send to BullMQ queue ${JSON.stringify(queue)}: ${problem}`);
  return { kind: 'bullmq', queue: queue as string };
}

/**
 * Why BullMQ would refuse `name` as a queue name (it throws when the queue is created), or null
 * when it is fine.
 */
export function bullmqQueueNameProblem(name: unknown): string | null {
  if (typeof name !== 'string' || name.length === 0) {
    return 'a queue name must be a non-empty string (letters, digits, and any of "-_." are safe)';
  }
  if (name.includes(':')) {
    return 'a queue name cannot contain ":" (BullMQ\'s key separator); use "-", "_" or "." instead';
  }
  return null;
}

/** BullMQ job options the relay passes on (a subset that is safe to set from a message). */
export interface OutboxJobOptions {
  delay?: number;
  priority?: number;
  attempts?: number;
  backoff?: { type: 'fixed' | 'exponential'; delay: number };
}

export interface OutboxMessage {
  messageId: string;
  destination: ResolvedDestination;
  type: string;
  payload: unknown;
  headers: Record<string, string>;
  options?: OutboxJobOptions;
  /**
   * Held back from the relay for this long: the process that wrote it runs it itself right after
   * the commit (eager saga steps) and then marks it delivered. Should that process die first, the
   * relay delivers it once the lease is over.
   */
  leaseMs?: number;
}

/**
 * The wire contract of a relayed BullMQ job (docs/contracts.md, "Job data written by the relay"):
 * the relay writes it, saga runners and users' BullMQ workers read it.
 */
export interface OutboxJobData {
  messageId: string;
  type: string;
  payload: unknown;
  headers: Record<string, string>;
}

export interface OutboxRow extends OutboxMessage {
  id: number;
  attempts: number;
}

const table = 'dw_outbox';

/**
 * Multi-row inserts (one per 1000 messages: Postgres takes at most 65535 bound values per
 * statement); a message id already present (deterministic ids) is skipped. Returns the ids
 * inserted: a skipped row keeps its own lease and delivery, so its writer must not run it.
 */
export async function insertOutboxMessages(
  trx: Knex | Knex.Transaction,
  messages: readonly OutboxMessage[],
): Promise<Set<string>> {
  const inserted = new Set<string>();
  for (let i = 0; i < messages.length; i += maxOutboxValues) {
    for (const id of await insertOutboxChunk(trx, messages.slice(i, i + maxOutboxValues))) inserted.add(id);
  }
  return inserted;
}

async function insertOutboxChunk(
  trx: Knex | Knex.Transaction,
  messages: readonly OutboxMessage[],
): Promise<string[]> {
  if (messages.length === 0) return [];
  const values = outboxValues(messages);
  // Raw rather than the builder (this runs for every message).
  const { rows } = await trx.raw<{ rows: Array<{ message_id: string }> }>(
    `insert into ${table} (${outboxColumns}) values ${values.sql}
     on conflict (message_id) do nothing
     returning message_id`,
    values.bindings,
  );
  return rows.map((r) => r.message_id);
}

/** The columns an outbox row is written with, in the order of outboxValues. */
export const outboxColumns =
  'message_id, destination_kind, destination, routing_key, type, payload, headers, options, available_at';

/**
 * The VALUES rows of `messages` (at most 1000: Postgres takes at most 65535 bound values per
 * statement) with their bindings, for an insert into dw_outbox (outboxColumns): here, and in the
 * saga step's bookkeeping statement (shared/saga/store.ts).
 */
export function outboxValues(messages: readonly OutboxMessage[]): { sql: string; bindings: Knex.Value[] } {
  const bindings: Knex.Value[] = [];
  for (const m of messages) {
    bindings.push(
      m.messageId,
      m.destination.kind,
      m.destination.kind === 'bullmq' ? m.destination.queue : m.destination.exchange,
      m.destination.kind === 'amqp' ? m.destination.routingKey : null,
      m.type,
      JSON.stringify(m.payload ?? null),
      JSON.stringify(m.headers),
      JSON.stringify(m.options ?? {}),
      (m.leaseMs ?? 0) / 1000,
    );
  }
  // Typed casts: the rows may also be read as a VALUES list of a select; make_interval keeps a lease bound.
  const row =
    '(?::text, ?::text, ?::text, ?::text, ?::text, ?::jsonb, ?::jsonb, ?::jsonb, now() + make_interval(secs => ?))';
  return { sql: messages.map(() => row).join(', '), bindings };
}

/** Most messages outboxValues takes in one statement. */
export const maxOutboxValues = 1000;

interface OutboxDbRow {
  id: number;
  message_id: string;
  destination_kind: 'bullmq' | 'amqp';
  destination: string;
  routing_key: string | null;
  type: string;
  payload: unknown;
  headers: Record<string, string>;
  options: OutboxJobOptions;
  attempts: number;
}

/**
 * Claims up to `limit` deliverable rows, oldest first: locks them until the caller's transaction
 * ends, without changing them. The caller marks the rows it delivered (markOutboxDelivered) in the
 * same transaction, after the delivery; a crash before the commit leaves them pending. SKIP LOCKED
 * lets several relays claim disjoint batches at once. Returned in id order.
 */
export async function claimOutboxBatch(trx: Knex.Transaction, limit: number): Promise<OutboxRow[]> {
  // Locking rather than marking here: the mark goes with the Redis position, known only after the
  // adds, so each row gets one new version per delivery instead of two (docs/benchmarks.md, Relay).
  const { rows } = await trx.raw<{ rows: OutboxDbRow[] }>(
    `select id, message_id, destination_kind, destination, routing_key, type, payload, headers, options, attempts
       from ${table}
      where delivered_at is null and available_at <= now()
      order by id limit ? for update skip locked`,
    [limit],
  );
  return rows
    .sort((a, b) => a.id - b.id)
    .map((r) => ({
      id: r.id,
      messageId: r.message_id,
      destination:
        r.destination_kind === 'bullmq'
          ? { kind: 'bullmq', queue: r.destination }
          : { kind: 'amqp', exchange: r.destination, routingKey: r.routing_key ?? '' },
      type: r.type,
      payload: r.payload,
      // A row written by hand may have none; everything downstream reads header fields.
      headers: r.headers ?? {},
      options: r.options,
      attempts: r.attempts,
    }));
}

/** Marks leased messages delivered: their process ran them itself, the relay must not. */
export async function markLeasedDelivered(knex: Knex, messageIds: readonly string[]): Promise<void> {
  if (messageIds.length === 0) return;
  await knex(table)
    .whereIn('message_id', messageIds)
    .whereNull('delivered_at')
    .update({ delivered_at: knex.fn.now() });
}

/** Ends the lease of messages their process will not run after all: the relay takes them now. */
export async function endLeases(knex: Knex, messageIds: readonly string[]): Promise<void> {
  if (messageIds.length === 0) return;
  await knex(table)
    .whereIn('message_id', messageIds)
    .whereNull('delivered_at')
    .update({ available_at: knex.fn.now() });
}

/** The highest Redis position of a delivered row (0 when none): Redis must hold at least this. */
export async function maxRedisSeq(knex: Knex): Promise<number> {
  // Spelled as a backward scan of the partial index (one committed row read): as max(), the planner
  // may scan every delivered row when its statistics predate the positions (a fresh ANALYZE on a
  // backlog), and the relay reads this once per batch.
  const { rows } = await knex.raw<{ rows: Array<{ seq: string }> }>(
    `select redis_seq::text as seq from ${table} where redis_seq is not null order by redis_seq desc limit 1`,
  );
  return Number(rows[0]?.seq ?? 0);
}

/**
 * Marks claimed rows delivered, recording on `jobIds` (those the relay added to BullMQ) the Redis
 * position of their batch (see maxRedisSeq); rows sent elsewhere get none.
 */
export async function markOutboxDelivered(
  trx: Knex.Transaction,
  ids: readonly number[],
  jobIds: readonly number[],
  redisSeq: number | undefined,
): Promise<void> {
  if (ids.length === 0) return;
  const jobs = new Set(jobIds);
  const seqs = ids.map((id) => (jobs.has(id) && redisSeq !== undefined ? String(redisSeq) : null));
  // One statement, one new row version each: the batch's whole write. unnest pairs each id with
  // its position (null for rows sent to RabbitMQ).
  await trx.raw(
    `update ${table} o set delivered_at = now(), redis_seq = d.seq
       from unnest(?::bigint[], ?::bigint[]) as d(id, seq)
      where o.id = d.id`,
    [[...ids], seqs as Knex.Value],
  );
}

/**
 * After Redis lost data: makes the rows delivered at Redis positions in (`from`, `to`] pending
 * again (their jobs are gone; a job that survived is not duplicated, same job id) and records the
 * loss. Several relays repairing the same loss record it once. Returns how many rows.
 */
// Names "delivering outbox rows to Redis" among the advisory locks of this database.
const REDIS_DELIVERY_LOCK = 0x64770002;

/**
 * Taken by every relay batch before its claim, held to its commit: a repair of lost Redis rows
 * (below) waits for the batches in flight, whose positions it could otherwise not see yet.
 */
export async function lockForRedisDelivery(trx: Knex.Transaction): Promise<void> {
  // Shared: batches do not wait for each other, only for a repair.
  await trx.raw('select pg_advisory_xact_lock_shared(?)', [REDIS_DELIVERY_LOCK]);
}

export async function redeliverLostRows(knex: Knex, from: number, to: number): Promise<number> {
  return knex.transaction(async (trx) => {
    // Exclusive: batches that took their position before the loss commit first, so their rows are
    // visible to the update below (a batch still in flight would otherwise keep its lost jobs).
    await trx.raw('select pg_advisory_xact_lock(?)', [REDIS_DELIVERY_LOCK]);
    // Only rows the relay put into Redis have a position (not eager steps run in-process).
    const count = await trx(table)
      .where('redis_seq', '>', from)
      .andWhere('redis_seq', '<=', to)
      .update({ delivered_at: null, redis_seq: null, available_at: trx.fn.now() });
    // One row per loss however many relays repair it; their counts add up.
    await trx.raw(
      `insert into dw_redis_losses (seq_from, seq_to, rows_redelivered) values (?, ?, ?)
       on conflict (seq_from, seq_to)
       do update set rows_redelivered = dw_redis_losses.rows_redelivered + excluded.rows_redelivered`,
      [from, to, count],
    );
    return count;
  });
}

/**
 * Un-claims a row the relay could not deliver: pending again, but out of the way until `retryInMs`
 * has passed, so it blocks nothing.
 */
export async function markOutboxFailed(
  trx: Knex.Transaction,
  id: number,
  error: string,
  retryInMs: number,
): Promise<void> {
  // make_interval keeps the delay a bound parameter.
  await trx.raw(
    `update ${table} set delivered_at = null, redis_seq = null, attempts = attempts + 1, last_error = ?,
       available_at = now() + make_interval(secs => ?) where id = ?`,
    // The error may echo a hostile queue name or payload: NUL or a lone surrogate (also one left by
    // the cut) would make PostgreSQL refuse the update and the whole batch roll back.
    [storableText(error.slice(0, 2000)), retryInMs / 1000, id],
  );
}

export interface OutboxBacklog {
  pending: number;
  oldestPendingAgeSeconds: number | null;
  failing: number;
}

export async function outboxBacklog(knex: Knex): Promise<OutboxBacklog> {
  // One pass over the pending partial index.
  const { rows } = await knex.raw<{ rows: [{ pending: number; oldest: number | null; failing: number }] }>(
    `select count(*)::int as pending,
            extract(epoch from now() - min(created_at))::float8 as oldest,
            count(*) filter (where attempts > 0)::int as failing
       from ${table} where delivered_at is null`,
  );
  const row = rows[0];
  return { pending: row.pending, oldestPendingAgeSeconds: row.oldest, failing: row.failing };
}

/**
 * How long delivered rows waited for a relay over the last five minutes (delivered minus
 * available, so a delayed send does not count as lag); nulls when nothing was delivered.
 */
export async function relayLag(
  knex: Knex,
): Promise<{ delivered: number; avgMs: number | null; maxMs: number | null }> {
  const { rows } = await knex.raw<{
    rows: [{ delivered: number; avg_ms: number | null; max_ms: number | null }];
  }>(
    `select count(*)::int as delivered,
            (avg(extract(epoch from delivered_at - available_at)) * 1000)::float8 as avg_ms,
            (max(extract(epoch from delivered_at - available_at)) * 1000)::float8 as max_ms
       from dw_outbox where delivered_at > now() - interval '5 minutes'`,
  );
  const row = rows[0];
  return {
    delivered: row.delivered,
    avgMs: row.avg_ms === null ? null : Math.max(0, Math.round(row.avg_ms)),
    maxMs: row.max_ms === null ? null : Math.max(0, Math.round(row.max_ms)),
  };
}
