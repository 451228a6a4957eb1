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
