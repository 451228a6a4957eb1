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
