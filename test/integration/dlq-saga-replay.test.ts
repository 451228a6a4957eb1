import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exampleMigrations } from '../../examples/app/migrations.js';
import { replayDeadLetter } from '../../ops/dead-letter-replay.js';
import { Relay } from '../../relay/relay.js';
import { Worker } from '../../worker/worker.js';
import { sagaFinished, sagaTestApp, startSagas } from '../support/saga-app.js';
import { createTestEnv, type TestEnv } from '../support/services.js';

let env: TestEnv;
let worker: Worker;
let relay: Relay;

beforeAll(async () => {
  env = await createTestEnv(exampleMigrations);
  worker = await Worker.start({ app: sagaTestApp, config: env.config, sagaSweepIntervalMs: 0 });
  relay = await Relay.start({ config: env.config });
});

afterAll(async () => {
  await relay?.stop();
  await worker?.stop();
  await env?.teardown();
});

const finished = (id: string) => sagaFinished(env.knex, id);

const noChannel = () => Promise.reject(new Error('a saga replay publishes nothing to RabbitMQ'));
// As `dw dlq replay` does: the app's saga definitions plan the compensations the replay resumes.
const options = {
  dryRun: false,
  dedupWindowMs: 7 * 86_400_000,
  sagaDefinition: async (name: string) => sagaTestApp.sagas.get(name),
};

describe('replaying saga dead letters', () => {
  it('step-failed is a record only; compensation-failed resumes the saga and leaves the list', async () => {
    const [id] = await startSagas(env.config.exchange, [
      { saga: 'sequential', state: { fail: { s3: -1 }, failCompensation: { s1: -1 } } },
    ]);
    expect((await finished(id!)).status).toBe('failed');
    const [stepFailed, compensationFailed] = await env
      .knex('dw_dead_letters')
      .where({ saga_id: id })
      .orderBy('id');
    expect(stepFailed.reason).toBe('step-failed');
    expect(compensationFailed.reason).toBe('compensation-failed');

    expect(await replayDeadLetter(env.knex, noChannel, stepFailed.id, options)).toMatchObject({
      outcome: 'not-replayable',
    });
    expect(
      await replayDeadLetter(env.knex, noChannel, compensationFailed.id, { ...options, dryRun: true }),
    ).toMatchObject({ outcome: 'would-replay' });

    await env
      .knex('dw_sagas')
      .where({ id })
      .update({ state: JSON.stringify({ fail: { s3: -1 } }) });
    expect(await replayDeadLetter(env.knex, noChannel, compensationFailed.id, options)).toMatchObject({
      outcome: 'replayed',
    });
    expect((await finished(id!)).status).toBe('compensated');
    expect(await env.knex('dw_dead_letters').where({ saga_id: id }).pluck('reason')).toEqual(['step-failed']);
  });
});
