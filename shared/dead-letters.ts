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
  /** The JSON payload when the body parsed; otherwise undefined and `body` keeps the bytes. */
  payload?: unknown;
  body?: Buffer;
  headers?: Record<string, unknown>;
  properties?: Record<string, unknown>;
  sagaId?: string;
  step?: string;
  phase?: 'execute' | 'compensate';
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
      error: JSON.stringify(entry.error),
      attempts: entry.attempts,
      first_failed_at: entry.firstFailedAt ?? knex.fn.now(),
      payload: entry.payload === undefined ? null : JSON.stringify(entry.payload),
      body: entry.body ?? null,
      headers: JSON.stringify(entry.headers ?? {}),
      properties: JSON.stringify(entry.properties ?? {}),
      saga_id: entry.sagaId ?? null,
      step: entry.step ?? null,
      phase: entry.phase ?? null,
    })
    .onConflict(['queue', 'message_id'])
    .merge(['reason', 'error', 'attempts', 'last_failed_at', 'payload', 'body', 'headers', 'properties'])
    .returning('id');
  return (row as { id: number }).id;
}

export async function deadLetterExists(knex: Knex, queue: string, messageId: string): Promise<boolean> {
  return (await knex('dw_dead_letters').where({ queue, message_id: messageId }).first('id')) !== undefined;
}
