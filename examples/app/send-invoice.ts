import { z } from 'zod';
import { defineHandler } from '../../index.js';

export const SendInvoice = z.object({
  invoiceId: z.union([z.string().min(1).max(200), z.number().int()]).transform(String),
  failTimes: z.number().int().min(0).optional(),
});

/** The (pretend) invoicing service is down: retrying later can help. */
export class InvoiceServiceDownError extends Error {
  override name = 'InvoiceServiceDownError';
}

/**
 * docs/contracts.md, "Example app": throws while the attempt is at most `failTimes` or while `invoice_outage` has a row;
 * otherwise records the invoice as sent. 2 immediate retries, then after 1 s and 2 s, then the
 * dead letters: 5 attempts in all.
 */
export const sendInvoice = defineHandler(
  'SendInvoice',
  SendInvoice,
  async (message, ctx) => {
    if (message.failTimes !== undefined && ctx.envelope.attempt <= message.failTimes) {
      throw new InvoiceServiceDownError(
        `invoice ${message.invoiceId}: attempt ${ctx.envelope.attempt} fails on purpose (failTimes ${message.failTimes})`,
      );
    }
    if (await ctx.trx('invoice_outage').first('id')) {
      throw new InvoiceServiceDownError(`invoice ${message.invoiceId}: the invoicing service is down`);
    }
    await ctx.trx('invoices_sent').insert({ invoice_id: message.invoiceId });
  },
  { retry: { immediateRetries: 2, delayed: { count: 2, initialMs: 1000, factor: 2 } } },
);

export const sendInvoiceHandlers = [sendInvoice];
