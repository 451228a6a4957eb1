import { describe, test } from 'vitest';
import { assertClean } from './support/run.js';
import { chaosScope } from './support/scope.js';

const chaos = chaosScope();

describe('Redis safety', () => {
  test('worker and relay warn at start when Redis may evict keys (maxmemory-policy not noeviction)', async () => {
    const redis = await chaos.privateRedis({ evictionPolicy: 'allkeys-lru' });
    const run = await chaos.run('Redis eviction policy warning', { redisUrl: redis.url });
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
    const redis = await chaos.privateRedis();
    const { run } = await chaos.startPair('Redis restored from an older snapshot', {
      redisUrl: redis.url,
      relayArgs: ['--batch-size', '20'],
    });
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
    const redis = await chaos.privateRedis();
    const { run } = await chaos.startPair('Redis FLUSHDB under load', {
      redisUrl: redis.url,
      relayArgs: ['--batch-size', '20'],
    });
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
