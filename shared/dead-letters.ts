import type { Knex } from 'knex';
import type { ErrorInfo } from './errors.js';

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
  const [row] = await knex('dw_dead_letters')
    .insert({
      source: entry.source,
      queue: entry.queue,
      message_id: entry.messageId,
      type: entry.type,
      reason: entry.reason,
      error: jsonb(entry.error),
      attempts: entry.attempts,
      first_failed_at: entry.firstFailedAt ?? knex.fn.now(),
      payload: entry.payload === undefined ? null : jsonb(entry.payload),
      body: entry.body ?? null,
      headers: jsonb(entry.headers ?? {}),
      properties: jsonb(entry.properties ?? {}),
      saga_id: entry.sagaId ?? null,
      step: entry.step ?? null,
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

/**
 * JSON text Postgres accepts as jsonb: it refuses the NUL character (\u0000), which a valid JSON
 * body may well contain. Replacing it keeps a poison message storable; the exact bytes stay in `body`.
 */
function jsonb(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    typeof v === 'string' && v.includes('\0') ? v.replaceAll('\0', '\uFFFD') : v,
  );
}

export async function deadLetterExists(knex: Knex, queue: string, messageId: string): Promise<boolean> {
  return (await knex('dw_dead_letters').where({ queue, message_id: messageId }).first('id')) !== undefined;
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
