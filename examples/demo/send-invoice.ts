import type { DemoContext } from './context.js';

/** Issue 4 fills this in: outage, dead letter, outage over, replay. */
export async function sendInvoiceDemo(_ctx: DemoContext): Promise<void> {}
