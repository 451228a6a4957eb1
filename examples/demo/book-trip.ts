import { randomUUID } from 'node:crypto';
import { waitUntil } from '../../index.js';
import type { DemoContext } from './context.js';

/** BookTrip: four trips through the book-trip saga, each shown as its timeline and ledger. */
export async function bookTripDemo(ctx: DemoContext): Promise<void> {
  ctx.say('\n== BookTrip: a saga of four steps, each its own transaction, compensated in reverse on failure');
  const trips = [
    { label: 'all four steps succeed', payload: {} },
    {
      label: 'book-hotel fails on every attempt: the earlier steps are undone in reverse',
      payload: { failAt: 'book-hotel' },
    },
    {
      label: 'book-flight fails once; its retry succeeds and the trip completes',
      payload: { failAt: 'book-flight', failTimes: 1 },
    },
    {
      label: 'debit-customer (the first step) fails for good: nothing to undo',
      payload: { failAt: 'debit-customer' },
    },
  ].map((t, i) => ({
    ...t,
    tripId: randomUUID(),
    payload: { customerId: `customer-${i + 1}`, amount: 100 + i * 25, ...t.payload },
  }));
  await ctx.publish(trips.map((t) => ({ type: 'BookTrip', payload: { tripId: t.tripId, ...t.payload } })));
  ctx.say(`published ${trips.length} BookTrip messages`);

  for (const [i, trip] of trips.entries()) {
    await waitUntil(async () => {
      const row = await ctx.knex('dw_sagas').where({ id: trip.tripId }).first('status');
      return row && !['running', 'compensating'].includes(row.status);
    }, `trip ${trip.tripId} to finish`);
    ctx.say(`\n-- trip ${i + 1}: ${trip.label}`);
    ctx.say((await ctx.dw(['sagas', 'show', trip.tripId])).trimEnd());
    const ledger: Array<{ step: string; action: string }> = await ctx
      .knex('trip_ledger')
      .where({ trip_id: trip.tripId })
      .orderBy('id');
    ctx.say(
      `  trip_ledger: ${ledger.length ? ledger.map((r) => `${r.action} ${r.step}`).join(' → ') : '(no effects)'}`,
    );
  }
}
