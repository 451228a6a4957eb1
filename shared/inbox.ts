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
