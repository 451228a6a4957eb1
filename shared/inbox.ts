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
  const rows = await trx('dw_inbox')
    .insert({ consumer, message_id: messageId })
    .onConflict(['consumer', 'message_id'])
    .ignore()
    .returning('message_id');
  return rows.length > 0;
}

export async function inboxHas(knex: Knex, consumer: string, messageId: string): Promise<boolean> {
  const row = await knex('dw_inbox').where({ consumer, message_id: messageId }).first('message_id');
  return row !== undefined;
}

/** Counts one more started delivery of a message; returns the count including this one. */
export async function bumpDeliveryCount(knex: Knex, consumer: string, messageId: string): Promise<number> {
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
