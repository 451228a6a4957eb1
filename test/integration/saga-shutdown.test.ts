import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exampleMigrations } from '../../examples/app/migrations.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { PrivateRedis } from '../chaos/support/faults.js';
import { sagaTestApp } from '../support/saga-app.js';
import { createTestEnv, type TestEnv } from '../support/services.js';

// A graceful stop must end within its grace time even when the worker's Redis stopped answering
// in the middle of a saga sweep. The Redis is a private server, frozen with SIGSTOP.

let env: TestEnv;
let redis: PrivateRedis | undefined;
beforeAll(async () => {
  env = await createTestEnv(exampleMigrations);
  redis = await PrivateRedis.start();
});
afterAll(async () => {
  redis?.resume();
  await redis?.stop();
  await env?.teardown();
});

// pg_try_advisory_xact_lock key of the sweep (worker/saga/sweep.ts).
const sweepLockKey = 0x6477_7377;

describe('graceful stop with Redis not answering', () => {
  it('returns within the grace time while a saga sweep waits on a frozen Redis', {
    timeout: 60_000,
  }, async () => {
    const graceMs = 1000;
    const worker = await Worker.start({
      app: sagaTestApp,
      config: { ...env.config, redisUrl: redis!.url },
      sagaSweepIntervalMs: 100,
      sagaStaleAfterMs: 1,
      shutdownGraceMs: graceMs,
    });
    let stopping: Promise<boolean> | undefined;
    try {
      redis!.pause();
      // A saga left running with no job: the sweep asks Redis whether its step job is alive.
      await env.knex('dw_sagas').insert({
        id: 'stuck-1',
        name: 'sequential',
        status: 'running',
        state: JSON.stringify({}),
        correlation_id: 'stuck-1',
      });
      // The sweep holds its advisory lock while it waits on Redis.
      await waitUntil(async () => {
        const { rows } = await env.knex.raw(
          "select 1 from pg_locks where locktype = 'advisory' and objid = ? and granted",
          [sweepLockKey],
        );
        return rows.length > 0;
      }, 'a sweep to wait on the frozen Redis');
      const started = Date.now();
      stopping = worker.stop();
      const ended = await Promise.race([
        stopping.then(() => true),
        new Promise<false>((r) => setTimeout(() => r(false), graceMs + 15_000)),
      ]);
      // The bound is generous for a loaded machine: without it the stop never ends.
      expect({ ended, withinBound: Date.now() - started < graceMs + 15_000 }).toEqual({
        ended: true,
        withinBound: true,
      });
    } finally {
      redis!.resume();
      await (stopping ?? worker.stop());
    }
  });
});
