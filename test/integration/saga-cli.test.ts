import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  insertSaga,
  recordStepCompleted,
  recordStepFailure,
  transitionSaga,
} from '../../shared/saga/store.js';
import { cliEnv, runCli } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/services.js';

let env: TestEnv;

const run = (args: string[]) => runCli(args, cliEnv(env.config));

beforeAll(async () => {
  env = await createTestEnv();
  // A compensated saga and a running one, recorded as the step runner would.
  await env.knex.transaction(async (trx) => {
    await insertSaga(trx, { id: 'trip-1', name: 'book-trip', state: { amount: 5 }, correlationId: 'c-1' });
    await insertSaga(trx, { id: 'trip-2', name: 'book-trip', state: {}, correlationId: 'c-2' });
    await recordStepCompleted(trx, {
      sagaId: 'trip-1',
      step: 'debit',
      stage: 0,
      phase: 'execute',
      attempts: 1,
    });
    await recordStepFailure(trx, {
      sagaId: 'trip-1',
      step: 'flight',
      stage: 1,
      phase: 'execute',
      attempts: 3,
      error: { message: 'no seats' },
      final: true,
    });
    await transitionSaga(trx, 'trip-1', 'running', 'compensating', { message: 'step flight: no seats' });
    await recordStepCompleted(trx, {
      sagaId: 'trip-1',
      step: 'debit',
      stage: 0,
      phase: 'compensate',
      attempts: 1,
    });
    await transitionSaga(trx, 'trip-1', 'compensating', 'compensated');
  });
});

afterAll(async () => {
  await env?.teardown();
});

describe('dw sagas', () => {
  it('list --json prints one array of sagas without steps; --status filters', async () => {
    const all = await run(['sagas', 'list', '--json']);
    expect(all.code).toBe(0);
    const sagas = JSON.parse(all.stdout);
    expect(sagas.map((s: { id: string }) => s.id).sort()).toEqual(['trip-1', 'trip-2']);
    expect(sagas[0]).not.toHaveProperty('steps');
    expect(sagas.find((s: { id: string }) => s.id === 'trip-1')).toMatchObject({
      name: 'book-trip',
      status: 'compensated',
      correlationId: 'c-1',
      state: { amount: 5 },
    });
    const running = JSON.parse((await run(['sagas', 'list', '--status', 'running', '--json'])).stdout);
    expect(running.map((s: { id: string }) => s.id)).toEqual(['trip-2']);
    expect(JSON.parse((await run(['sagas', 'list', '--limit', '1', '--json'])).stdout)).toHaveLength(1);
  });

  it('show --json has the step log in the order it happened', async () => {
    const shown = await run(['sagas', 'show', 'trip-1', '--json']);
    expect(shown.code).toBe(0);
    const saga = JSON.parse(shown.stdout);
    expect(
      saga.steps.map((s: { name: string; phase: string; status: string }) => [s.name, s.phase, s.status]),
    ).toEqual([
      ['debit', 'execute', 'completed'],
      ['flight', 'execute', 'failed'],
      ['debit', 'compensate', 'completed'],
    ]);
    expect(saga.steps[1]).toMatchObject({ attempts: 3, error: { message: 'no seats' } });
  });

  it('show prints a readable timeline; list a table', async () => {
    const shown = await run(['sagas', 'show', 'trip-1']);
    expect(shown.stdout).toContain('saga trip-1 (book-trip): compensated');
    expect(shown.stdout).toMatch(/x .*run\s+flight\s+failed\s+3 attempts\s+no seats/);
    expect(shown.stdout).toMatch(/- .*undo\s+debit\s+completed/);
    const listed = await run(['sagas', 'list']);
    expect(listed.stdout).toMatch(/trip-1\s+book-trip\s+compensated/);
  });

  it('errors go to stderr with exit code 1', async () => {
    const missing = await run(['sagas', 'show', 'nope']);
    expect(missing.code).toBe(1);
    expect(missing.stdout).toBe('');
    expect(missing.stderr.trim()).toBe('dw: no saga with id "nope" (dw sagas list shows the ids)');
    const bad = await run(['sagas', 'list', '--status', 'sleeping']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('--status must be one of');
  });
});
