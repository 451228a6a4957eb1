import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { app } from '../../examples/app/index.js';
import { waitUntil } from '../../shared/wait.js';
import { publishRaw } from '../support/amqp.js';
import { type SagaFixture, startSagaFixture } from '../support/saga-fixture.js';

let fx: SagaFixture;

beforeAll(async () => {
  fx = await startSagaFixture(app);
});

afterAll(() => fx?.stop());

async function ledger(tripId: string): Promise<string[]> {
  const rows = await fx.env.knex('trip_ledger').where({ trip_id: tripId }).orderBy('id');
  return rows.map((r: { step: string; action: string }) => `${r.action}:${r.step}`);
}

async function finalStatus(tripId: string): Promise<string> {
  return waitUntil(async () => {
    const row = await fx.env.knex('dw_sagas').where({ id: tripId }).first('status');
    return row && !['running', 'compensating'].includes(row.status) ? (row.status as string) : undefined;
  }, `trip ${tripId} to finish`);
}

describe('BookTrip published by an independent AMQP client', () => {
  it('ends completed, compensated, completed, compensated with exact ledgers', async () => {
    const trips = {
      happy: { tripId: randomUUID(), customerId: 'c-1', amount: 120 },
      hotelAlwaysFails: { tripId: randomUUID(), customerId: 'c-2', amount: 80, failAt: 'book-hotel' },
      flightFailsOnce: {
        tripId: randomUUID(),
        customerId: 'c-3',
        amount: 60,
        failAt: 'book-flight',
        failTimes: 1,
      },
      firstStepFails: { tripId: randomUUID(), customerId: 'c-4', amount: 40, failAt: 'debit-customer' },
    };
    await publishRaw(
      fx.env.config.exchange,
      Object.values(trips).map((body) => ({
        routingKey: 'BookTrip',
        body,
        properties: { messageId: randomUUID(), type: 'BookTrip', contentType: 'application/json' },
      })),
    );

    expect(await finalStatus(trips.happy.tripId)).toBe('completed');
    expect(await finalStatus(trips.hotelAlwaysFails.tripId)).toBe('compensated');
    expect(await finalStatus(trips.flightFailsOnce.tripId)).toBe('completed');
    expect(await finalStatus(trips.firstStepFails.tripId)).toBe('compensated');

    const all = ['debit-customer', 'book-flight', 'book-hotel', 'email-customer'].map((s) => `execute:${s}`);
    expect(await ledger(trips.happy.tripId)).toEqual(all);
    expect(await ledger(trips.flightFailsOnce.tripId)).toEqual(all);
    expect(await ledger(trips.hotelAlwaysFails.tripId)).toEqual([
      'execute:debit-customer',
      'execute:book-flight',
      'compensate:book-flight',
      'compensate:debit-customer',
    ]);
    expect(await ledger(trips.firstStepFails.tripId)).toEqual([]);

    // The step log: book-hotel failed for good after 3 attempts; book-flight needed 2.
    const hotel = await fx.env
      .knex('dw_saga_steps')
      .where({ saga_id: trips.hotelAlwaysFails.tripId, step: 'book-hotel' })
      .first();
    expect(hotel).toMatchObject({ phase: 'execute', status: 'failed', attempts: 3 });
    const flight = await fx.env
      .knex('dw_saga_steps')
      .where({ saga_id: trips.flightFailsOnce.tripId, step: 'book-flight' })
      .first();
    expect(flight).toMatchObject({ status: 'completed', attempts: 2 });
    const dead = await fx.env.knex('dw_dead_letters').where({ saga_id: trips.hotelAlwaysFails.tripId });
    expect(dead).toHaveLength(1);
    expect(dead[0]).toMatchObject({
      reason: 'step-failed',
      source: 'saga',
      queue: 'dw-sagas',
      message_id: `${trips.hotelAlwaysFails.tripId}:execute:book-hotel`,
      step: 'book-hotel',
      phase: 'execute',
    });
    const happyState = await fx.env.knex('dw_sagas').where({ id: trips.happy.tripId }).first();
    expect(happyState.state).toMatchObject({ tripId: trips.happy.tripId, flightRef: expect.any(String) });
  });
});
