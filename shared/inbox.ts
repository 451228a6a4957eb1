import type { Knex } from 'knex';

/**
 * Records that `consumer` processed `messageId`, in the handler's transaction. False means the row
 * was there already: the message is a duplicate and must have no effect.
 */
export async function insertInboxRow(
  trx: Knex.Transaction,
  consumer: string,
  messageId: string,
): Promise<boolean> {
  // Raw rather than the builder: this runs once per message, and compiling the query showed in profiles.
  const { rows } = await trx.raw<{ rows: unknown[] }>(
    'insert into dw_inbox (consumer, message_id) values (?, ?) on conflict do nothing returning 1',
    [consumer, messageId],
  );
  return rows.length > 0;
}

/**
 * Records that `consumer` processed each of `messageIds` (distinct), in the transaction of their
 * batch, with one statement. Returns the ids inserted; the others were there already (duplicates).
 */
export async function insertInboxRows(
  trx: Knex.Transaction,
  consumer: string,
  messageIds: readonly string[],
): Promise<Set<string>> {
  // One array binding whatever the batch size; sorted, so two batches sharing ids lock their inbox
  // rows in the same order and wait for each other instead of deadlocking.
  const { rows } = await trx.raw<{ rows: Array<{ message_id: string }> }>(
    `insert into dw_inbox (consumer, message_id)
     select ?, id from unnest(?::text[]) as t(id) order by id
     on conflict do nothing returning message_id`,
    [consumer, [...messageIds]],
  );
  return new Set(rows.map((r) => r.message_id));
}

export async function inboxHas(knex: Knex, consumer: string, messageId: string): Promise<boolean> {
  const row = await knex('dw_inbox').where({ consumer, message_id: messageId }).first('message_id');
  return row !== undefined;
}

/**
 * Records that a redelivery of a message started handling; returns how many recorded deliveries
 * started and have not finished, this one included (the others died, or run concurrently).
 */
export async function startDelivery(knex: Knex, consumer: string, messageId: string): Promise<number> {
  // Upsert with a returning count: one round trip, safe under concurrent redeliveries.
  const { rows } = await knex.raw<{ rows: [{ count: number }] }>(
    `insert into dw_delivery_counts (consumer, message_id, count) values (?, ?, 1)
     on conflict (consumer, message_id)
       do update set count = dw_delivery_counts.count + 1, updated_at = now()
     returning count`,
    [consumer, messageId],
  );
  return rows[0].count;
}

/** A recorded delivery finished without settling the message (requeued): it did not die. */
export async function finishDelivery(knex: Knex, consumer: string, messageId: string): Promise<void> {
  // Never below zero: a concurrent settle may have removed the row.
  await knex.raw(
    `update dw_delivery_counts set count = count - 1, updated_at = now()
      where consumer = ? and message_id = ? and count > 0`,
    [consumer, messageId],
  );
}

/** The message is settled (acked): forget its deliveries. */
export async function forgetDeliveries(knex: Knex, consumer: string, messageId: string): Promise<void> {
  await knex.raw('delete from dw_delivery_counts where consumer = ? and message_id = ?', [
    consumer,
    messageId,
  ]);
}
