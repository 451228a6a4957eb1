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
