import { afterEach, describe, test } from 'vitest';
import { PrivateRedis } from './support/faults.js';
import { assertClean, ChaosRun } from './support/run.js';

let run: ChaosRun | undefined;
let redis: PrivateRedis | undefined;
afterEach(async () => {
  await run?.teardown();
  await redis?.stop();
  run = undefined;
  redis = undefined;
});

describe('Redis safety', () => {
  test('worker and relay warn at start when Redis may evict keys (maxmemory-policy not noeviction)', async () => {
    redis = await PrivateRedis.start({ evictionPolicy: 'allkeys-lru' });
    run = await ChaosRun.create('Redis eviction policy warning', { redisUrl: redis.url });
    const relay = await run.spawn('relay', 'relay');
    const worker = await run.spawn('worker', 'worker');
    // The processes still run: the warning says what to change, it does not refuse to start.
    await Promise.all([
      relay.current!.waitForLog('"policy":"allkeys-lru"'),
      worker.current!.waitForLog('"policy":"allkeys-lru"'),
      relay.waitHealthy(),
      worker.waitHealthy(),
    ]);
    run.startLoad(50, { trips: 10 });
    assertClean(run, await run.settle());
  });
});

describe('partial Redis loss under load', () => {
  test('Redis restarted from an older RDB snapshot: the jobs delivered since are delivered again', async () => {
    redis = await PrivateRedis.start();
    run = await ChaosRun.create('Redis restored from an older snapshot', { redisUrl: redis.url });
    const worker = await run.spawn('worker', 'worker');
    const relay = await run.spawn('relay', 'relay', { args: ['--batch-size', '20'] });
    await Promise.all([worker.waitHealthy(), relay.waitHealthy()]);
    const load = run.startLoad(600, { trips: 40 });
    await run.progress(run.random.int(80, 160));
    await redis.snapshot();
    run.fault('redis snapshot taken');
    await run.progress(run.random.int(150, 250));
    await redis.restartFromSnapshot();
    run.fault('redis restarted from the older snapshot');
    await load.done;
    const counters = await run.settle(150_000);
    const exits = await run.stopAll();
    assertClean(run, counters, { exits });
  });

  test('FLUSHDB under load, every client still connected', async () => {
    redis = await PrivateRedis.start();
    run = await ChaosRun.create('Redis FLUSHDB under load', { redisUrl: redis.url });
    const worker = await run.spawn('worker', 'worker');
    const relay = await run.spawn('relay', 'relay', { args: ['--batch-size', '20'] });
    await Promise.all([worker.waitHealthy(), relay.waitHealthy()]);
    const load = run.startLoad(600, { trips: 40 });
    for (let i = 0; i < 2; i++) {
      await run.progress(run.random.int(100, 200));
      await redis.flush();
      run.fault('FLUSHDB');
    }
    await load.done;
    const counters = await run.settle(150_000);
    const exits = await run.stopAll();
    assertClean(run, counters, { exits });
  });
});
