import { randomUUID } from 'node:crypto';
import { waitUntil } from '../../index.js';
import type { DemoContext } from './context.js';

/** SendInvoice: an outage sends it to the dead letters after 5 attempts; after the outage, a replay sends it once. */
export async function sendInvoiceDemo(ctx: DemoContext): Promise<void> {
  ctx.say('\n== SendInvoice: retries, the dead letters, and a replay once the outage is over');
  const invoiceId = `inv-${randomUUID().slice(0, 8)}`;
  const messageId = randomUUID();
  await ctx.knex('invoice_outage').insert({});
  ctx.say('the invoicing service is down (a row in invoice_outage)');
  await ctx.publish([{ id: messageId, type: 'SendInvoice', payload: { invoiceId } }]);
  ctx.say(`published SendInvoice ${invoiceId}: 2 immediate retries, then after 1 s and 2 s...`);

  const entry = await waitUntil(
    () => ctx.knex('dw_dead_letters').where({ message_id: messageId }).first('id', 'attempts', 'reason'),
    'SendInvoice to reach the dead letters',
  );
  ctx.say(
    `dead-lettered after ${entry.attempts} attempts (reason ${entry.reason}); \`dw dlq list --type SendInvoice\`:`,
  );
  ctx.say((await ctx.dw(['dlq', 'list', '--type', 'SendInvoice', '--limit', '5'])).trimEnd());

  await ctx.knex('invoice_outage').delete();
  ctx.say('\nthe outage is over (invoice_outage emptied); `dw dlq replay` sends it back:');
  ctx.say((await ctx.dw(['dlq', 'replay', String(entry.id)])).trimEnd());

  const sent = await waitUntil(async () => {
    const rows = await ctx.knex('invoices_sent').where({ invoice_id: invoiceId });
    return rows.length > 0 ? rows : undefined;
  }, 'the invoice to be sent');
  const left = await ctx.knex('dw_dead_letters').where({ message_id: messageId }).first('id');
  ctx.say(
    `invoices_sent rows for ${invoiceId}: ${sent.length}; still in the dead letters: ${left ? 'yes' : 'no'}`,
  );
}
