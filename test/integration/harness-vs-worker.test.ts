import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { app } from '../../examples/app/index.js';
import { exampleMigrations } from '../../examples/app/migrations.js';
import { type SagaView, sagaView } from '../../ops/saga-view.js';
import { Relay } from '../../relay/relay.js';
import { getSaga, listStepRows } from '../../shared/saga/store.js';
import { waitUntil } from '../../shared/wait.js';
import { createTestHarness, type TestHarness } from '../../testing/index.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { createTestEnv, type TestEnv } from '../support/services.js';

/*
 * The harness claims to mean what production means: the same scenario, run by the harness and by
 * a real worker and relay (RabbitMQ, Redis, BullMQ), leaves the same saga JSON (dw sagas show
 * --json), times aside. Each side has its own database, so the trip and message ids can be equal.
 */

let harnessEnv: TestEnv;
let workerEnv: TestEnv;
let harness: TestHarness;
let worker: Worker;
let relay: Relay;

beforeAll(async () => {
  [harnessEnv, workerEnv] = await Promise.all([createTestEnv(), createTestEnv(exampleMigrations)]);
  harness = await createTestHarness(app, { knex: harnessEnv.knex });
  worker = await Worker.start({ app, config: workerEnv.config, sagaSweepIntervalMs: 0 });
  relay = await Relay.start({ config: workerEnv.config });
});

afterAll(async () => {
  await harness?.close();
  await relay?.stop();
  await worker?.stop();
  await harnessEnv?.teardown();
  await workerEnv?.teardown();
});

const iso = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

/** The view with every timestamp replaced by a marker (null stays null). */
function withoutTimes(view: SagaView | undefined): unknown {
  return JSON.parse(JSON.stringify(view), (_key, value) =>
    typeof value === 'string' && iso.test(value) ? '<time>' : value,
  );
}

describe('the harness and a real worker', () => {
  it('give the same saga JSON for a trip whose flight fails once', async () => {
    const messageId = randomUUID();
    const trip = {
      tripId: randomUUID(),
      customerId: 'c-7',
      amount: 99.5,
      failAt: 'book-flight',
      failTimes: 1,
    };

    harness.publish('BookTrip', trip, { id: messageId });
    await harness.idle();
    await harness.advanceTime(1000);
    const fromHarness = await harness.saga(trip.tripId);

    await publishRaw(workerEnv.config.exchange, [
      {
        routingKey: 'BookTrip',
        body: trip,
        properties: { messageId, type: 'BookTrip', contentType: 'application/json' },
      },
    ]);
    await waitUntil(async () => {
      const row = await workerEnv.knex('dw_sagas').where({ id: trip.tripId }).first('status');
      return row?.status === 'completed';
    }, 'the trip to complete under the real worker');
    // What `dw sagas show --json` prints, read from the worker's database.
    const row = await getSaga(workerEnv.knex, trip.tripId);
    const fromWorker = row && sagaView(row, await listStepRows(workerEnv.knex, trip.tripId));

    expect(fromHarness?.status).toBe('completed');
    expect(fromHarness?.steps?.find((s) => s.name === 'book-flight')?.attempts).toBe(2);
    expect(withoutTimes(fromHarness)).toEqual(withoutTimes(fromWorker));
  });
});
