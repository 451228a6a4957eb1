import type { Knex } from 'knex';
import type { ErrorInfo } from './errors.js';
import { storableJson, storableText } from './storable.js';

export const deadLetterReasons = [
  'invalid-json',
  'unknown-type',
  'invalid-payload',
  'handler-failed',
  'step-failed',
  'compensation-failed',
] as const;
export type DeadLetterReason = (typeof deadLetterReasons)[number];

export interface NewDeadLetter {
  source: 'amqp' | 'saga';
  queue: string;
  messageId: string;
  type: string | null;
  reason: DeadLetterReason;
  error: ErrorInfo;
  attempts: number;
  firstFailedAt?: Date;
  /** The JSON payload when the body parsed; undefined otherwise. */
  payload?: unknown;
  /** The body bytes as received, which a replay publishes again unchanged. */
  body?: Buffer;
  headers?: Record<string, unknown>;
  properties?: Record<string, unknown>;
  sagaId?: string;
  step?: string;
  phase?: 'execute' | 'compensate';
}

/** A dead letter as the CLI and scripts see it (docs/contracts.md, "JSON shapes"). */
export interface DeadLetterJson {
  id: number;
  source: 'amqp' | 'saga';
  queue: string;
  messageId: string;
  type: string | null;
  reason: DeadLetterReason;
  error: ErrorInfo;
  attempts: number;
  firstFailedAt: string;
  lastFailedAt: string;
  /** The JSON payload; the raw body as a string when it was not JSON. */
  payload: unknown;
  headers: Record<string, unknown>;
  sagaId?: string;
  step?: string;
  phase?: string;
}

export interface DeadLetterRow {
  id: number;
  source: 'amqp' | 'saga';
  queue: string;
  message_id: string;
  type: string | null;
  reason: DeadLetterReason;
  error: ErrorInfo;
  attempts: number;
  first_failed_at: Date;
  last_failed_at: Date;
  payload: unknown;
  body: Buffer | null;
  headers: Record<string, unknown>;
  properties: Record<string, unknown>;
  saga_id: string | null;
  step: string | null;
  phase: string | null;
}

/**
 * Stores a dead letter. Storing the same (queue, message id) again, as happens when the process
 * died between storing and acking, updates the entry instead of adding a second one.
 */
export async function storeDeadLetter(knex: Knex | Knex.Transaction, entry: NewDeadLetter): Promise<number> {
  // Everything but `body` comes from untrusted input and must not make the entry unstorable.
  const payload = entry.payload === undefined ? null : (storableJson(entry.payload) ?? null);
  const properties = {
    ...entry.properties,
    ...(entry.payload !== undefined && payload === null
      ? { payloadOmitted: 'the payload is nested too deeply to be stored as jsonb; body holds it' }
      : {}),
  };
  const [row] = await knex('dw_dead_letters')
    .insert({
      source: entry.source,
      queue: entry.queue,
      message_id: storableText(entry.messageId),
      type: entry.type === null ? null : storableText(entry.type),
      reason: entry.reason,
      error: storableJson(entry.error) ?? storableJson({ message: String(entry.error.message) }),
      attempts: entry.attempts,
      first_failed_at: entry.firstFailedAt ?? knex.fn.now(),
      payload,
      body: entry.body ?? null,
      headers: storableJson(entry.headers ?? {}) ?? '{}',
      properties: storableJson(properties) ?? '{}',
      saga_id: entry.sagaId === undefined ? null : storableText(entry.sagaId),
      step: entry.step === undefined ? null : storableText(entry.step),
      phase: entry.phase ?? null,
    })
    .onConflict(['queue', 'message_id'])
    .merge([
      'source',
      'type',
      'reason',
      'error',
      'attempts',
      'last_failed_at',
      'payload',
      'body',
      'headers',
      'properties',
    ])
    .returning('id');
  return (row as { id: number }).id;
}

/** Looks the id up as storeDeadLetter stored it. */
export async function deadLetterExists(knex: Knex, queue: string, messageId: string): Promise<boolean> {
  const row = await knex('dw_dead_letters')
    .where({ queue, message_id: storableText(messageId) })
    .first('id');
  return row !== undefined;
}

export interface DeadLetterFilter {
  type?: string;
  reason?: DeadLetterReason;
  queue?: string;
  /** Entries that failed last at or after this time. */
  since?: Date;
  /** Only these ids (with the other filters still applied). */
  ids?: readonly number[];
}

function filtered(knex: Knex | Knex.Transaction, filter: DeadLetterFilter): Knex.QueryBuilder {
  const query = knex('dw_dead_letters');
  if (filter.type) query.where('type', filter.type);
  if (filter.reason) query.where('reason', filter.reason);
  if (filter.queue) query.where('queue', filter.queue);
  if (filter.since) query.where('last_failed_at', '>=', filter.since);
  if (filter.ids) query.whereIn('id', filter.ids);
  return query;
}

/** Newest first. */
export async function listDeadLetters(
  knex: Knex,
  filter: DeadLetterFilter,
  limit?: number,
): Promise<DeadLetterRow[]> {
  const query = filtered(knex, filter)
    .select('*')
    .orderBy([
      { column: 'last_failed_at', order: 'desc' },
      { column: 'id', order: 'desc' },
    ]);
  if (limit !== undefined) query.limit(limit);
  return query;
}

/** Ids matching the filter, oldest first (replay order follows the order of failure). */
export async function deadLetterIds(knex: Knex, filter: DeadLetterFilter): Promise<number[]> {
  const rows: Array<{ id: number }> = await filtered(knex, filter).select('id').orderBy('id');
  return rows.map((r) => r.id);
}

export async function getDeadLetter(
  knex: Knex | Knex.Transaction,
  id: number,
): Promise<DeadLetterRow | undefined> {
  return knex('dw_dead_letters').where({ id }).first();
}

/** Locks the entry for the caller's transaction, so a worker storing it again waits until we decide. */
export async function lockDeadLetter(trx: Knex.Transaction, id: number): Promise<DeadLetterRow | undefined> {
  return trx('dw_dead_letters').where({ id }).forUpdate().first();
}

export async function deleteDeadLetter(knex: Knex | Knex.Transaction, id: number): Promise<boolean> {
  return (await knex('dw_dead_letters').where({ id }).delete()) > 0;
}

export async function deleteDeadLetters(knex: Knex, filter: DeadLetterFilter): Promise<number> {
  return filtered(knex, filter).delete();
}

export async function countDeadLetters(knex: Knex, filter: DeadLetterFilter): Promise<number> {
  const row = await filtered(knex, filter).count<{ count: string | number }[]>('* as count').first();
  return Number(row?.count ?? 0);
}

export async function countDeadLettersByReason(knex: Knex): Promise<Record<string, number>> {
  const rows = (await knex('dw_dead_letters')
    .select('reason')
    .count('* as count')
    .groupBy('reason')
    .orderBy('reason')) as unknown as Array<{ reason: string; count: string | number }>;
  return Object.fromEntries(rows.map((r) => [r.reason, Number(r.count)]));
}

export function deadLetterToJson(row: DeadLetterRow, options: { stack?: boolean } = {}): DeadLetterJson {
  const { stack, ...error } = row.error ?? { message: '' };
  const payload = row.payload ?? (row.body ? row.body.toString('utf8') : null);
  return {
    id: row.id,
    source: row.source,
    queue: row.queue,
    messageId: row.message_id,
    type: row.type,
    reason: row.reason,
    error: options.stack && stack ? { ...error, stack } : error,
    attempts: row.attempts,
    firstFailedAt: row.first_failed_at.toISOString(),
    lastFailedAt: row.last_failed_at.toISOString(),
    payload,
    headers: row.headers ?? {},
    ...(row.saga_id ? { sagaId: row.saga_id } : {}),
    ...(row.step ? { step: row.step } : {}),
    ...(row.phase ? { phase: row.phase } : {}),
  };
}

/** What the dashboard filters dead letters by; every field optional, all combined with AND. */
export interface DeadLetterSearch {
  type?: string;
  reason?: DeadLetterReason;
  queue?: string;
  /** Case-insensitive substring of the error message or stack. */
  text?: string;
  /** Last failed at or after / before. */
  from?: Date;
  to?: Date;
  /** A group key as deadLetterGroups returns it. */
  group?: string;
  sagaId?: string;
  ids?: readonly number[];
}

/**
 * The error message with what varies between occurrences of one failure replaced (quoted strings,
 * uuids, hex ids, numbers), so that "order 17 timed out after 3001 ms" and "order 18 timed out
 * after 2999 ms" fall in one group. Patterns are bound, not inlined: they hold quotes and `?`.
 */
const normalisedMessage = `regexp_replace(regexp_replace(regexp_replace(regexp_replace(
    coalesce(dl.error->>'message', ''), ?, '"…"', 'g'), ?, '<uuid>', 'gi'), ?, '<id>', 'gi'), ?, '<n>', 'g')`;
const normalisePatterns = [
  `"[^"]*"|'[^']*'`,
  '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}',
  '\\m(0x[0-9a-f]+|[0-9a-f]{8,})\\M',
  '[0-9]+',
];

/** `with g as (…)`: the matching entries with their normalised message and group key. */
function searchCte(search: DeadLetterSearch): { sql: string; bindings: Knex.RawBinding[] } {
  const where: string[] = [];
  const bindings: Knex.RawBinding[] = [...normalisePatterns];
  const add = (clause: string, ...values: Knex.RawBinding[]) => {
    where.push(clause);
    bindings.push(...values);
  };
  if (search.type !== undefined) add('dl.type = ?', search.type);
  if (search.reason !== undefined) add('dl.reason = ?', search.reason);
  if (search.queue !== undefined) add('dl.queue = ?', search.queue);
  if (search.text !== undefined) {
    add(
      `position(lower(?) in lower(coalesce(dl.error->>'message', '') || ' ' || coalesce(dl.error->>'stack', ''))) > 0`,
      search.text,
    );
  }
  if (search.from !== undefined) add('dl.last_failed_at >= ?', search.from);
  if (search.to !== undefined) add('dl.last_failed_at < ?', search.to);
  if (search.sagaId !== undefined) add('dl.saga_id = ?', search.sagaId);
  if (search.ids !== undefined) add('dl.id = any(?::bigint[])', [...search.ids]);
  const outer: string[] = [];
  if (search.group !== undefined) {
    outer.push('group_key = ?');
    bindings.push(search.group);
  }
  const sql = `with n as (
      select dl.*, ${normalisedMessage} as normalised
        from dw_dead_letters dl
       ${where.length ? `where ${where.join(' and ')}` : ''}
    ), g as (
      select n.*, md5(coalesce(n.type, '') || chr(31) || n.reason || chr(31) || n.normalised) as group_key
        from n
    ), m as (select * from g ${outer.length ? `where ${outer.join(' and ')}` : ''})`;
  return { sql, bindings };
}

export type DeadLetterSearchRow = DeadLetterRow & { group_key: string; normalised: string };

/** One page of the matching entries, newest first, and how many match in all. */
export async function searchDeadLetters(
  knex: Knex,
  search: DeadLetterSearch,
  page: { limit: number; offset: number },
): Promise<{ rows: DeadLetterSearchRow[]; total: number }> {
  const cte = searchCte(search);
  // The total rides along with each row (count over the whole match), so one statement serves both.
  const { rows } = await knex.raw<{ rows: Array<DeadLetterSearchRow & { total: number }> }>(
    `${cte.sql}
     select m.*, count(*) over ()::int as total from m
      order by m.last_failed_at desc, m.id desc limit ? offset ?`,
    [...cte.bindings, page.limit, page.offset],
  );
  if (rows.length === 0 && page.offset > 0) {
    return { rows: [], total: await countDeadLettersMatching(knex, search) };
  }
  return { rows: rows.map(({ total: _, ...row }) => row as DeadLetterSearchRow), total: rows[0]?.total ?? 0 };
}

export async function countDeadLettersMatching(knex: Knex, search: DeadLetterSearch): Promise<number> {
  const cte = searchCte(search);
  const { rows } = await knex.raw<{ rows: [{ n: number }] }>(
    `${cte.sql} select count(*)::int as n from m`,
    cte.bindings,
  );
  return rows[0].n;
}

/** Ids of the matching entries, oldest first (replay order follows the order of failure). */
export async function deadLetterIdsMatching(
  knex: Knex,
  search: DeadLetterSearch,
  max: number,
): Promise<number[]> {
  const cte = searchCte(search);
  const { rows } = await knex.raw<{ rows: Array<{ id: string | number }> }>(
    `${cte.sql} select id from m order by id limit ?`,
    [...cte.bindings, max],
  );
  return rows.map((r) => Number(r.id));
}

export interface DeadLetterGroup {
  key: string;
  type: string | null;
  reason: DeadLetterReason;
  /** The normalised error message the group shares. */
  message: string;
  /** One real message of the group, the newest. */
  sample: string;
  count: number;
  queues: string[];
  firstSeen: Date;
  lastSeen: Date;
}

/** Groups of the matching entries by type + reason + normalised message, biggest first. */
export async function deadLetterGroups(
  knex: Knex,
  search: DeadLetterSearch,
  page: { limit: number; offset: number },
): Promise<{ groups: DeadLetterGroup[]; total: number }> {
  const cte = searchCte(search);
  const { rows } = await knex.raw<{
    rows: Array<{
      key: string;
      type: string | null;
      reason: DeadLetterReason;
      message: string;
      sample: string | null;
      count: number;
      queues: string[];
      first_seen: Date;
      last_seen: Date;
      total: number;
    }>;
  }>(
    `${cte.sql}
     select group_key as key, type, reason, normalised as message,
            (array_agg(error->>'message' order by last_failed_at desc, id desc))[1] as sample,
            count(*)::int as count, array_agg(distinct queue) as queues,
            min(first_failed_at) as first_seen, max(last_failed_at) as last_seen,
            count(*) over ()::int as total
       from m group by group_key, type, reason, normalised
      order by count(*) desc, max(last_failed_at) desc, group_key limit ? offset ?`,
    [...cte.bindings, page.limit, page.offset],
  );
  return {
    total: rows[0]?.total ?? 0,
    groups: rows.map((r) => ({
      key: r.key,
      type: r.type,
      reason: r.reason,
      message: r.message,
      sample: r.sample ?? '',
      count: r.count,
      queues: r.queues,
      firstSeen: r.first_seen,
      lastSeen: r.last_seen,
    })),
  };
}
