import { afterEach } from 'vitest';
import {
  type RedisCluster,
  type RedisClusterOptions,
  startRedisCluster,
} from '../../support/redis-cluster.js';
import { PrivateRedis } from './faults.js';
import type { Supervisor } from './processes.js';
import { ChaosRun } from './run.js';

export interface ChaosScope {
  /** A new chaos run, torn down after the test. */
  run(scenario: string, options?: Parameters<typeof ChaosRun.create>[1]): Promise<ChaosRun>;
  /** A private redis-server for faults the shared one must not see, stopped after the test. */
  privateRedis(options?: Parameters<typeof PrivateRedis.start>[0]): Promise<PrivateRedis>;
  /** A private Redis Cluster (3 masters by default) on loopback ports, stopped after the test. */
  redisCluster(options?: RedisClusterOptions): Promise<RedisCluster>;
  /** A new run with one worker and one relay (started in that order), both answering /healthz. */
  startPair(
    scenario: string,
    options?: Parameters<typeof ChaosRun.create>[1] & { relayArgs?: string[] },
  ): Promise<{ run: ChaosRun; worker: Supervisor; relay: Supervisor }>;
}

/**
 * Registers, for the calling test file, the afterEach that tears down what each test started (its
 * run: processes, database, queues, keys; its private Redis), also when the test failed halfway.
 */
export function chaosScope(): ChaosScope {
  let current: ChaosRun | undefined;
  let redis: PrivateRedis | undefined;
  let cluster: RedisCluster | undefined;
  afterEach(async () => {
    // The processes first (teardown kills them), then the servers they used; each step runs even
    // when an earlier one failed.
    const [run, server, servers] = [current, redis, cluster];
    current = undefined;
    redis = undefined;
    cluster = undefined;
    const errors: unknown[] = [];
    for (const step of [() => run?.teardown(), () => server?.stop(), () => servers?.stop()])
      await Promise.resolve(step()).catch((error: unknown) => errors.push(error));
    if (errors.length > 0) throw errors[0];
  });
  const run: ChaosScope['run'] = async (scenario, options) => {
    current = await ChaosRun.create(scenario, options);
    return current;
  };
  return {
    run,
    async privateRedis(options) {
      redis = await PrivateRedis.start(options);
      return redis;
    },
    async redisCluster(options) {
      cluster = await startRedisCluster(options);
      return cluster;
    },
    async startPair(scenario, { relayArgs, ...options } = {}) {
      const started = await run(scenario, options);
      const worker = await started.spawn('worker', 'worker');
      const relay = await started.spawn('relay', 'relay', relayArgs ? { args: relayArgs } : {});
      await Promise.all([worker.waitHealthy(), relay.waitHealthy()]);
      return { run: started, worker, relay };
    },
  };
}
