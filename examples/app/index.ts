import { defineApp } from '../../index.js';
import { bookTripHandlers, bookTripSaga } from './book-trip.js';
import { joinMeeting } from './join-meeting.js';
import { exampleMigrations } from './migrations.js';
import { sendInvoiceHandlers } from './send-invoice.js';

/** The example app (docs/contracts.md, "Example app"): what `npm run demo` runs and what the default DW_APP serves. */
export const app = defineApp({
  name: 'example',
  handlers: [joinMeeting, ...bookTripHandlers, ...sendInvoiceHandlers],
  sagas: [bookTripSaga],
  migrations: exampleMigrations,
});

export default app;
