import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { app } from '../../examples/app/index.js';
import { exampleMigrations } from '../../examples/app/migrations.js';
import { Relay } from '../../relay/relay.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { createTestEnv, type TestEnv } from '../support/services.js';

let env: TestEnv;

beforeAll(async () => {
  env = await createTestEnv(exampleMigrations);
});

afterAll(async () => {
  await env?.teardown();
});

const publishTrip = (trip: Record<string, unknown>) =>
  publishRaw(env.config.exchange, [
    { routingKey: 'BookTrip', body: trip, properties: { messageId: randomUUID(), type: 'BookTrip' } },
  ]);

const sagaStatus = async (id: string) => (await env.knex('dw_sagas').where({ id }).first('status'))?.status;

describe('eager saga steps', () => {
  it('run a saga to the end in the worker that started it, with no relay, and settle its outbox rows', async () => {
    const worker = await Worker.start({ app, config: env.config, sagaSweepIntervalMs: 0 });
    const tripId = randomUUID();
    try {
      await publishTrip({ tripId, customerId: 'c', amount: 10 });
      await waitUntil(async () => (await sagaStatus(tripId)) === 'completed', 'the trip to complete');
      // The eager steps' rows are marked delivered (in batches, right after they ran).
      await waitUntil(
        async () =>
          (await env.knex('dw_outbox').whereRaw("payload->>'sagaId' = ?", [tripId]).whereNull('delivered_at'))
            .length === 0,
        'the eager rows to be marked delivered',
      );
    } finally {
      await worker.stop(5000);
    }
    const ledger = await env.knex('trip_ledger').where({ trip_id: tripId }).orderBy('id');
    expect(ledger.map((r) => `${r.action}:${r.step}`)).toEqual([
      'execute:debit-customer',
      'execute:book-flight',
      'execute:book-hotel',
      'execute:email-customer',
    ]);
  });

  it('leave the steps to the relay and BullMQ when turned off', async () => {
    const worker = await Worker.start({
      app,
      config: env.config,
      sagaSweepIntervalMs: 0,
      sagaEagerLeaseMs: 0,
    });
    const tripId = randomUUID();
    try {
      await publishTrip({ tripId, customerId: 'c', amount: 10 });
      const firstStep = await waitUntil(
        async () => env.knex('dw_outbox').whereRaw("payload->>'sagaId' = ?", [tripId]).first(),
        'the first step job in the outbox',
      );
      // Not leased: deliverable at once, and nothing runs it until a relay delivers it.
      expect(new Date(firstStep.available_at).getTime()).toBeLessThanOrEqual(Date.now() + 1000);
      expect(await sagaStatus(tripId)).toBe('running');
      const relay = await Relay.start({ config: env.config });
      try {
        await waitUntil(
          async () => (await sagaStatus(tripId)) === 'completed',
          'the trip to complete via the relay',
        );
      } finally {
        await relay.stop(5000);
      }
    } finally {
      await worker.stop(5000);
    }
  });

  it('hand a leased step to the relay when its lease ends (the worker that held it died)', async () => {
    // A lease that outlives no one: what a worker killed right after a step commit leaves behind.
    const tripId = randomUUID();
    const dead = await Worker.start({
      app,
      config: env.config,
      sagaSweepIntervalMs: 0,
      sagaEagerLeaseMs: 1500,
    });
    // Stopping with no grace leaves eager work to the relay; here we only want its start to commit.
    await dead.stop(0);
    await env.knex.raw(
      `insert into dw_sagas (id, name, status, state, correlation_id) values (?, 'book-trip', 'running', ?, ?)`,
      [tripId, JSON.stringify({ tripId, customerId: 'c', amount: 5 }), tripId],
    );
    const { stepMessage } = await import('../../shared/saga/jobs.js');
    const { insertOutboxMessages } = await import('../../shared/outbox.js');
    await insertOutboxMessages(env.knex, [
      {
        ...stepMessage({
          sagaId: tripId,
          saga: 'book-trip',
          phase: 'execute',
          step: 'debit-customer',
          generation: 0,
        }),
        leaseMs: 1500,
      },
    ]);
    const worker = await Worker.start({ app, config: env.config, sagaSweepIntervalMs: 0 });
    const relay = await Relay.start({ config: env.config, pollIntervalMs: 100 });
    try {
      await waitUntil(
        async () => (await sagaStatus(tripId)) === 'completed',
        'the trip to complete after the lease',
      );
    } finally {
      await relay.stop(5000);
      await worker.stop(5000);
    }
    const ledger = await env.knex('trip_ledger').where({ trip_id: tripId, action: 'execute' });
    expect(ledger).toHaveLength(4);
  });
});
