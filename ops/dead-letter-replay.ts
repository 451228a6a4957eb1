import type { ConfirmChannel, Options } from 'amqplib';
import type { Knex } from 'knex';
import { publishMandatory } from '../shared/amqp.js';
import { type DeadLetterRow, deleteDeadLetter, lockDeadLetter } from '../shared/dead-letters.js';
import { Headers } from '../shared/envelope.js';
import { inboxHas } from '../shared/inbox.js';
import { orderedHashExchangeName } from '../shared/ordering.js';
import type { SagaStepJob } from '../shared/saga/jobs.js';
import type { PlannableSaga } from '../shared/saga/plan.js';
import { readDefinitionVersion } from '../shared/saga/store.js';
import { retryCompensation } from './saga-recovery.js';

export type ReplayOutcome =
  /** Sent back to its queue and removed from the dead letters. */
  | 'replayed'
  /** --dry-run: would have been replayed. */
  | 'would-replay'
  /** The inbox holds its id: handling it again would have no effect, so it stays a dead letter. */
  | 'already-processed'
  /** A failed saga step: the saga compensated already; the entry is a record, not replayable. */
  | 'not-replayable'
  | 'not-found';

export interface ReplayResult {
  id: number;
  outcome: ReplayOutcome;
  messageId?: string;
  queue?: string;
  /** Why, for outcomes other than replayed. */
  detail?: string;
  /** The entry is older than the deduplication window: a duplicate would not be detected. */
  beyondDedupWindow?: boolean;
}

export interface ReplayOptions {
  dryRun: boolean;
  /** Inbox rows older than this are pruned; older entries are replayed with a warning. */
  dedupWindowMs: number;
  /**
   * The app's definition of a saga at the definition version the instance started with, to plan
   * which compensations a replayed saga entry resumes. Without it (or when it answers undefined:
   * the app lacks that version) the entry's own compensation is re-enqueued.
   */
  sagaDefinition?: (name: string, version: number) => Promise<PlannableSaga | undefined>;
}

/** Headers the retry machinery and the broker add; a replay starts the attempt count afresh. */
function replayHeaders(row: DeadLetterRow): Record<string, unknown> {
  const headers: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(row.headers ?? {})) {
    if (name === Headers.attempt || name === Headers.firstFailedAt || name === Headers.replayedFrom) continue;
    if (/^x-(first-|last-)?death/.test(name)) continue;
    headers[name] = value;
  }
  headers[Headers.replayedFrom] = String(row.id);
  return headers;
}

function hasOrderingKey(headers: Record<string, unknown> | undefined): boolean {
  const key = headers?.[Headers.orderingKey];
  return key !== undefined && key !== null;
}

function publishOptionsFor(row: DeadLetterRow): Options.Publish & { messageId: string } {
  const props = row.properties ?? {};
  const timestamp = typeof props.timestamp === 'string' ? Date.parse(props.timestamp) : Number.NaN;
  return {
    messageId: row.message_id,
    ...(row.type ? { type: row.type } : {}),
    ...(typeof props.correlationId === 'string' ? { correlationId: props.correlationId } : {}),
    contentType: 'application/json',
    ...(Number.isNaN(timestamp) ? {} : { timestamp: Math.floor(timestamp / 1000) }),
    persistent: true,
    headers: replayHeaders(row),
  };
}

/**
 * Replays one dead letter. The entry stays locked while its message is published and is deleted
 * after the broker confirmed: a crash in between replays it twice at worst (the inbox absorbs the
 * second), and a worker dead-lettering the replayed message again waits for our delete, so the new
 * entry is never lost.
 */
export async function replayDeadLetter(
  knex: Knex,
  channel: () => Promise<ConfirmChannel>,
  id: number,
  options: ReplayOptions,
): Promise<ReplayResult> {
  return knex.transaction(async (trx) => {
    const row = await lockDeadLetter(trx, id);
    if (!row) return { id, outcome: 'not-found', detail: 'no dead letter with this id' };
    const base = {
      id,
      messageId: row.message_id,
      queue: row.queue,
      beyondDedupWindow: Date.now() - row.first_failed_at.getTime() > options.dedupWindowMs,
    };
    if (row.source === 'saga') return replaySagaEntry(trx, row, base, options);
    if (await inboxHas(trx, row.queue, row.message_id)) {
      return {
        ...base,
        outcome: 'already-processed',
        detail: 'already processed (inbox holds its id); not replayed',
      };
    }
    if (options.dryRun) return { ...base, outcome: 'would-replay' };
    const body = row.body ?? Buffer.from(JSON.stringify(row.payload));
    // A crash loop left its delivery count at the limit: the replay starts it afresh.
    await deleteDeliveryCount(trx, row.queue, row.message_id);
    const properties = publishOptionsFor(row);
    if (hasOrderingKey(properties.headers)) {
      // A keyed message goes back through its queue's consistent-hash exchange: to the end of its
      // key's partition, after the messages of the key that moved on while it was a dead letter.
      await publishMandatory(
        await channel(),
        orderedHashExchangeName(row.queue),
        row.type ?? '',
        body,
        properties,
      );
    } else {
      // Through the default exchange, mandatory: a queue that does not exist is an UnroutableError.
      await publishMandatory(await channel(), '', row.queue, body, properties);
    }
    await deleteDeadLetter(trx, id);
    return { ...base, outcome: 'replayed' };
  });
}

async function deleteDeliveryCount(
  trx: Knex.Transaction,
  consumer: string,
  messageId: string,
): Promise<void> {
  await trx('dw_delivery_counts').where({ consumer, message_id: messageId }).delete();
}

async function replaySagaEntry(
  trx: Knex.Transaction,
  row: DeadLetterRow,
  base: Omit<ReplayResult, 'outcome'>,
  options: ReplayOptions,
): Promise<ReplayResult> {
  if (row.reason !== 'compensation-failed' || !row.saga_id || !row.step) {
    return {
      ...base,
      outcome: 'not-replayable',
      detail: 'a failed saga step is a record only: the saga compensated already',
    };
  }
  if (options.dryRun) return { ...base, outcome: 'would-replay' };
  const name = (row.payload as Partial<SagaStepJob> | null)?.saga;
  const version = name ? await readDefinitionVersion(trx, row.saga_id) : undefined;
  const definition =
    name && version !== undefined ? await options.sagaDefinition?.(name, version) : undefined;
  const answer = await retryCompensation(trx, { sagaId: row.saga_id, step: row.step }, definition);
  if (answer === 'not-failed') {
    return { ...base, outcome: 'not-replayable', detail: `saga ${row.saga_id} is not failed any more` };
  }
  // Resuming resets every compensation of the saga that failed for good (a group fails together),
  // so their entries are settled too.
  await deleteSagaCompensationFailures(trx, row.saga_id);
  return { ...base, outcome: 'replayed' };
}

async function deleteSagaCompensationFailures(trx: Knex.Transaction, sagaId: string): Promise<void> {
  await trx('dw_dead_letters').where({ saga_id: sagaId, reason: 'compensation-failed' }).delete();
}
