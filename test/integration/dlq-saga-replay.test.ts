import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { replayDeadLetter } from '../../ops/dead-letter-replay.js';
import { sagaFinished, sagaTestApp, startSagas } from '../support/saga-app.js';
import { type SagaFixture, startSagaFixture } from '../support/saga-fixture.js';

let fx: SagaFixture;

beforeAll(async () => {
  fx = await startSagaFixture(sagaTestApp);
});

afterAll(() => fx?.stop());

const finished = (id: string) => sagaFinished(fx.env.knex, id);

const noChannel = () => Promise.reject(new Error('a saga replay publishes nothing to RabbitMQ'));
// As `dw dlq replay` does: the app's saga definitions plan the compensations the replay resumes.
const options = {
  dryRun: false,
  dedupWindowMs: 7 * 86_400_000,
  sagaDefinition: async (name: string) => sagaTestApp.sagas.get(name),
};

describe('replaying saga dead letters', () => {
  it('step-failed is a record only; compensation-failed resumes the saga and leaves the list', async () => {
    const [id] = await startSagas(fx.env.config.exchange, [
      { saga: 'sequential', state: { fail: { s3: -1 }, failCompensation: { s1: -1 } } },
    ]);
    expect((await finished(id!)).status).toBe('failed');
    const [stepFailed, compensationFailed] = await fx.env
      .knex('dw_dead_letters')
      .where({ saga_id: id })
      .orderBy('id');
    expect(stepFailed.reason).toBe('step-failed');
    expect(compensationFailed.reason).toBe('compensation-failed');

    expect(await replayDeadLetter(fx.env.knex, noChannel, stepFailed.id, options)).toMatchObject({
      outcome: 'not-replayable',
    });
    expect(
      await replayDeadLetter(fx.env.knex, noChannel, compensationFailed.id, { ...options, dryRun: true }),
    ).toMatchObject({ outcome: 'would-replay' });

    await fx.env
      .knex('dw_sagas')
      .where({ id })
      .update({ state: JSON.stringify({ fail: { s3: -1 } }) });
    expect(await replayDeadLetter(fx.env.knex, noChannel, compensationFailed.id, options)).toMatchObject({
      outcome: 'replayed',
    });
    expect((await finished(id!)).status).toBe('compensated');
    expect(await fx.env.knex('dw_dead_letters').where({ saga_id: id }).pluck('reason')).toEqual([
      'step-failed',
    ]);
  });
});
