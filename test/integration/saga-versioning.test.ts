import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { exampleMigrations } from '../../examples/app/migrations.js';
import { replayDeadLetter } from '../../ops/dead-letter-replay.js';
import { sagaVersionStatus } from '../../ops/status.js';
import { Relay } from '../../relay/relay.js';
import { defineApp, defineHandler } from '../../shared/app.js';
import { SagaDefinitionChangedError } from '../../shared/errors.js';
import { type Logger, silentLogger } from '../../shared/logger.js';
import { defineSaga, type SagaDefinition, type StepContext } from '../../shared/saga/definition.js';
import { sagaQueue } from '../../shared/saga/jobs.js';
import { insertSaga, recordStepCompleted } from '../../shared/saga/store.js';
import { waitUntil } from '../../shared/wait.js';
import { SagaStepRunner } from '../../worker/saga/step-runner.js';
import { sweepOnce } from '../../worker/saga/sweep.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { cliEnv, runCli } from '../support/cli.js';
import { sagaFinished, signedLedger } from '../support/saga-app.js';
import { createTestEnv, type TestEnv, urls } from '../support/services.js';

/**
 * Saga evolution: `trip` v1 runs a, b, c, d; v2 inserts m after a and drops c. Instances started
 * on v1 must finish (or compensate) on v1 whichever workers serve them afterwards.
 */
interface TripState {
  failAt?: string;
  /** A step whose compensation fails until the test fixes it (undoFixed). */
  failUndo?: string;
  [key: string]: unknown;
}
type Ctx = StepContext<TripState>;

/** Sagas whose step `at` waits here until the test releases them. */
const held = new Map<
  string,
  { at: string; entered: boolean; release: () => void; released: Promise<void> }
>();

function hold(sagaId: string, at: string) {
  let release = () => {};
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  held.set(sagaId, { at, entered: false, release, released });
}

const step = (name: string) => async (ctx: Ctx) => {
  const gate = held.get(ctx.sagaId);
  if (gate?.at === name) {
    gate.entered = true;
    await gate.released;
  }
  if (ctx.state.failAt === name) throw new Error(`${name} fails`);
  await ctx.trx('trip_ledger').insert({ trip_id: ctx.sagaId, step: name, action: 'execute' });
  return { [name]: true };
};
/** Sagas whose failing compensation was fixed. */
const undoFixed = new Set<string>();
const undo = (name: string) => async (ctx: Ctx) => {
  if (ctx.state.failUndo === name && !undoFixed.has(ctx.sagaId)) throw new Error(`undo ${name} fails`);
  await ctx.trx('trip_ledger').insert({ trip_id: ctx.sagaId, step: name, action: 'compensate' });
};
const retry = { attempts: 1 };
const pair = (name: string) => ({ run: step(name), compensate: undo(name) });

const v1 = defineSaga<TripState>('trip', { retry })
  .step('a', pair('a'))
  .step('b', pair('b'))
  .step('c', pair('c'))
  .step('d', pair('d'));
const v2 = defineSaga<TripState>('trip', { version: 2, retry })
  .step('a', pair('a'))
  .step('m', pair('m'))
  .step('b', pair('b'))
  .step('d', pair('d'));
/** v1 changed without a new version: c dropped, e added. */
const v1Changed = defineSaga<TripState>('trip', { retry })
  .step('a', pair('a'))
  .step('b', pair('b'))
  .step('d', pair('d'))
  .step('e', pair('e'));

const StartTrip = z.object({ id: z.string(), state: z.record(z.string(), z.unknown()) });

/** The same endpoint (one work queue) with the given saga versions; the handler names the first. */
function tripApp(sagas: SagaDefinition<TripState>[]) {
  return defineApp({
    name: 'versioning',
    handlers: [
      defineHandler('StartTrip', StartTrip, async (message, ctx) => {
        await ctx.startSaga(sagas[0]!, message.state as TripState, { id: message.id });
      }),
    ],
    sagas,
  });
}

let env: TestEnv;
let relay: Relay;
const workers = new Set<Worker>();

/** Warnings the workers logged, as parsed JSON lines. */
const warnings: Array<{ msg: string; saga?: string; version?: number }> = [];
const logger: Logger = pino({ level: 'warn' }, { write: (line: string) => warnings.push(JSON.parse(line)) });

async function startWorker(sagas: SagaDefinition<TripState>[]): Promise<Worker> {
  const worker = await Worker.start({
    app: tripApp(sagas),
    config: env.config,
    sagaSweepIntervalMs: 0,
    logger,
  });
  workers.add(worker);
  return worker;
}

async function stopWorker(worker: Worker): Promise<void> {
  await worker.stop();
  workers.delete(worker);
}

async function startTrips(starts: Array<{ id: string; state?: TripState }>): Promise<void> {
  await publishRaw(
    env.config.exchange,
    starts.map((s) => ({
      routingKey: 'StartTrip',
      body: { id: s.id, state: s.state ?? {} },
      properties: { messageId: randomUUID(), type: 'StartTrip', contentType: 'application/json' },
    })),
  );
}

/**
 * Starts trips on a worker that has only v1, holds each in its step `at`, then stops that worker
 * (which lets the held steps commit, and takes no further job).
 */
async function inFlightOnV1(starts: Array<{ id: string; at: string; state?: TripState }>): Promise<void> {
  for (const s of starts) hold(s.id, s.at);
  const old = await startWorker([v1]);
  await startTrips(starts);
  await waitUntil(
    () => starts.every((s) => held.get(s.id)!.entered),
    'the v1 trips to reach their held step',
  );
  // Stopping first: the old worker takes no further job; it lets its running step a finish.
  const stopping = stopWorker(old);
  for (const s of starts) held.get(s.id)!.release();
  await stopping;
  const steps = ['a', 'b', 'c', 'd'];
  for (const s of starts) {
    expect(await ledger(s.id)).toEqual(steps.slice(0, steps.indexOf(s.at) + 1).map((n) => `+${n}`));
  }
}

const ledger = (id: string) => signedLedger(env.knex, id);
const run = (args: string[]) => runCli(args, cliEnv(env.config));

beforeAll(async () => {
  env = await createTestEnv(exampleMigrations);
  relay = await Relay.start({ config: env.config });
});

afterAll(async () => {
  for (const worker of workers) await worker.stop();
  await relay?.stop();
  await env?.teardown();
});

describe('saga versioning', () => {
  it('in-flight v1 instances finish on v1 next to v2, a removed step is still compensated, new ones run v2', async () => {
    const ok = `v1-ok-${randomUUID()}`;
    const failing = `v1-fail-${randomUUID()}`;
    // ok stops after a (v2 inserted m after it); failing after c (v2 removed it), and fails in d.
    await inFlightOnV1([
      { id: ok, at: 'a' },
      { id: failing, at: 'c', state: { failAt: 'd' } },
    ]);

    // The new release registers both versions.
    const current = await startWorker([v1, v2]);
    expect((await sagaFinished(env.knex, ok)).status).toBe('completed');
    expect(await ledger(ok)).toEqual(['+a', '+b', '+c', '+d']);
    // c exists only in v1: it is compensated all the same.
    expect((await sagaFinished(env.knex, failing)).status).toBe('compensated');
    expect(await ledger(failing)).toEqual(['+a', '+b', '+c', '-c', '-b', '-a']);

    const fresh = `v2-${randomUUID()}`;
    await startTrips([{ id: fresh }]);
    expect((await sagaFinished(env.knex, fresh)).status).toBe('completed');
    expect(await ledger(fresh)).toEqual(['+a', '+m', '+b', '+d']);

    const rows = await env.knex('dw_sagas').whereIn('id', [ok, failing, fresh]).orderBy('created_at');
    expect(
      Object.fromEntries(rows.map((r) => [r.id, [r.definition_version, r.definition_fingerprint]])),
    ).toEqual({
      [ok]: [1, v1.fingerprint],
      [failing]: [1, v1.fingerprint],
      [fresh]: [2, v2.fingerprint],
    });
    const definitions = await env.knex('dw_saga_definitions').where({ name: 'trip' }).orderBy('version');
    expect(definitions.map((d) => [d.version, d.fingerprint])).toEqual([
      [1, v1.fingerprint],
      [2, v2.fingerprint],
    ]);

    const shown = await run(['sagas', 'show', fresh, '--json']);
    expect(JSON.parse(shown.stdout)).toMatchObject({ id: fresh, version: 2, fingerprint: v2.fingerprint });
    const listed = await run(['sagas', 'list', '--name', 'trip', '--version', '1', '--json']);
    expect(
      JSON.parse(listed.stdout)
        .map((s: { id: string }) => s.id)
        .sort(),
    ).toEqual([failing, ok].sort());
    expect(JSON.parse(listed.stdout).every((s: { version: number }) => s.version === 1)).toBe(true);
    const badVersion = await run(['sagas', 'list', '--version', 'two']);
    expect(badVersion.code).toBe(1);
    expect(badVersion.stderr).toMatch(/^dw: .*--version/);
    await stopWorker(current);
  });

  it('refuses to start a worker whose v1 has other stages than the recorded v1', async () => {
    const error = await startWorker([v1Changed]).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(SagaDefinitionChangedError);
    const changed = error as SagaDefinitionChangedError;
    expect(changed.code).toBe('DW_SAGA_DEFINITION_CHANGED');
    expect(changed.message).toContain('saga trip version 1');
    expect(changed.changes).toEqual([
      'step "c" removed',
      'step "e" added',
      'step "d" moved from stage 4 to 3',
    ]);
    // Nothing was recorded over the first layout.
    const row = await env.knex('dw_saga_definitions').where({ name: 'trip', version: 1 }).first();
    expect(row.fingerprint).toBe(v1.fingerprint);
  });

  it('a worker without an instance version leaves it untouched and says so; one that has it finishes it', async () => {
    const id = `v1-orphan-${randomUUID()}`;
    await inFlightOnV1([{ id, at: 'a' }]);

    const newOnly = await startWorker([v2]);
    const noted = await waitUntil(async () => {
      const row = await env.knex('dw_sagas').where({ id }).first();
      return row.unserved_at ? row : undefined;
    }, 'the v2-only worker to note the v1 instance');
    await stopWorker(newOnly);
    expect(noted.status).toBe('running');
    expect(await ledger(id)).toEqual(['+a']);
    expect(await env.knex('dw_saga_steps').where({ saga_id: id }).pluck('step')).toEqual(['a']);
    expect(warnings.filter((w) => w.saga === 'trip' && w.version === 1)).toHaveLength(1);
    expect(warnings.find((w) => w.saga === 'trip')?.msg).toContain('saga trip version 1 is not in this app');

    const timeline = await run(['sagas', 'show', id]);
    expect(timeline.stdout).toContain('  version 1 (stages ');
    expect(timeline.stdout).toMatch(
      /note: \S+ a worker of app versioning without version 1 of saga trip \(it has 2\) left it untouched/,
    );
    const json = JSON.parse((await run(['sagas', 'show', id, '--json'])).stdout);
    expect(json.unserved.note).toContain('without version 1');

    const versions = await sagaVersionStatus(env.knex, tripApp([v2]));
    expect(versions.find((v) => v.version === 1)).toMatchObject({
      name: 'trip',
      inFlight: 1,
      inApp: false,
      newest: false,
    });
    expect(versions.find((v) => v.version === 1)?.lastUnservedAt).not.toBeNull();
    expect(versions.find((v) => v.version === 2)).toMatchObject({ inApp: true, newest: true, inFlight: 0 });
    // The same through the CLI, for an operator running the v2-only release.
    const appModule = './test/support/apps/trip-v2-app.mjs';
    const status = JSON.parse((await run(['status', '--json', '--app', appModule])).stdout);
    expect(status.sagaVersions).toContainEqual(
      expect.objectContaining({
        name: 'trip',
        version: 1,
        inFlight: 1,
        inApp: false,
        fingerprint: v1.fingerprint,
      }),
    );
    const text = (await run(['status', '--app', appModule])).stdout;
    expect(text).toMatch(
      /^ {2}trip v1 +1 in flight {2}not in this app: its workers leave these instances untouched/m,
    );
    expect(text).toMatch(/^ {2}trip v2 +0 in flight {2}newest/m);

    // The job went back to BullMQ, delayed: a worker with v1 gets it when it is due.
    const both = await startWorker([v1, v2]);
    expect((await sagaFinished(env.knex, id)).status).toBe('completed');
    expect(await ledger(id)).toEqual(['+a', '+b', '+c', '+d']);
    const after = await sagaVersionStatus(env.knex, tripApp([v1, v2]));
    expect(after.find((v) => v.version === 1)).toMatchObject({ inFlight: 0, inApp: true, newest: false });
    await stopWorker(both);
  });

  it('a job and a sweep of an instance started before versions existed go by its recorded version 1', async () => {
    // As the worker left it before the upgrade: no version on the row's insert, a step job without one.
    const id = `legacy-${randomUUID()}`;
    await env.knex.transaction(async (trx) => {
      await insertSaga(trx, { id, name: 'trip', state: {}, correlationId: id });
      await recordStepCompleted(trx, { sagaId: id, step: 'a', stage: 0, phase: 'execute', attempts: 1 });
    });
    await env.knex('trip_ledger').insert({ trip_id: id, step: 'a', action: 'execute' });
    const legacyJob = { kind: 'step', sagaId: id, saga: 'trip', phase: 'execute', step: 'b' } as const;

    const abort = new AbortController();
    const v2Runner = new SagaStepRunner({
      app: tripApp([v2]),
      knex: env.knex,
      log: silentLogger,
      signal: abort.signal,
    });
    expect(await v2Runner.runStep(legacyJob)).toBe('unknown-version');
    expect(await ledger(id)).toEqual(['+a']);

    const queue = new Queue(sagaQueue, { connection: { url: urls.redis }, prefix: env.config.bullmqPrefix });
    queue.on('error', () => {});
    try {
      const sweep = (sagas: SagaDefinition<TripState>[]) =>
        sweepOnce({ app: tripApp(sagas), knex: env.knex, queue, staleAfterMs: 0, log: silentLogger });
      const jobsOf = async () =>
        (await env.knex('dw_outbox').whereRaw("payload->>'sagaId' = ?", [id])).map((r) => r.payload);
      // A v2-only worker's sweep does not resume it (nor count it against its batch).
      expect(await sweep([v2])).toBe(0);
      expect(await jobsOf()).toEqual([]);
      expect(await sweep([v1, v2])).toBe(1);
      expect(await jobsOf()).toEqual([expect.objectContaining({ step: 'b', version: 1 })]);
    } finally {
      await queue.close();
    }
    const both = await startWorker([v1, v2]);
    expect((await sagaFinished(env.knex, id)).status).toBe('completed');
    expect(await ledger(id)).toEqual(['+a', '+b', '+c', '+d']);
    await stopWorker(both);
  });

  it('dw dlq replay resumes the compensations of a failed v1 instance on v1, a step v2 removed included', async () => {
    const id = `v1-replay-${randomUUID()}`;
    // c (only in v1) cannot be undone at first: the saga ends failed with c still done.
    await inFlightOnV1([{ id, at: 'c', state: { failAt: 'd', failUndo: 'c' } }]);
    const both = await startWorker([v1, v2]);
    expect((await sagaFinished(env.knex, id)).status).toBe('failed');
    expect(await ledger(id)).toEqual(['+a', '+b', '+c']);
    const entry = await env
      .knex('dw_dead_letters')
      .where({ saga_id: id, reason: 'compensation-failed' })
      .first();

    undoFixed.add(id);
    const app = tripApp([v1, v2]);
    const result = await replayDeadLetter(
      env.knex,
      () => Promise.reject(new Error('a saga replay publishes nothing to RabbitMQ')),
      entry.id,
      {
        dryRun: false,
        dedupWindowMs: 86_400_000,
        sagaDefinition: async (name, version) => app.sagaDefinition(name, version),
      },
    );
    expect(result.outcome).toBe('replayed');
    expect((await sagaFinished(env.knex, id)).status).toBe('compensated');
    expect(await ledger(id)).toEqual(['+a', '+b', '+c', '-c', '-b', '-a']);
    await stopWorker(both);
  });
});
