import { describe, expect, test } from 'vitest';
import { closeAmqpConnectionsOf, terminateDatabaseSessions } from './support/faults.js';
import { assertClean } from './support/run.js';
import { chaosScope } from './support/scope.js';

const chaos = chaosScope();

describe('everything at once', () => {
  test('two workers and two relays under random kills and outages while an outside client loads messages and sagas', async () => {
    const redis = await chaos.privateRedis();
    const run = await chaos.run('mixed faults, 2 workers + 2 relays', { redisUrl: redis.url });
    const workers = await Promise.all([0, 1].map((i) => run.spawn('worker', `worker${i}`)));
    const relays = await Promise.all([0, 1].map((i) => run.spawn('relay', `relay${i}`)));
    const all = [...workers, ...relays];
    await Promise.all(all.map((p) => p.waitHealthy()));
    const load = run.startLoad(1000, { trips: 100 });
    const pgFault = async () => `terminated ${await terminateDatabaseSessions(run.database)} sessions`;
    const faults: Array<() => Promise<string>> = [
      async () => {
        const w = run.random.pick(workers);
        await w.killAndRestart();
        return `SIGKILL ${w.all[0]?.name}`;
      },
      async () => {
        const r = run.random.pick(relays);
        await r.killAndRestart();
        return `SIGKILL ${r.all[0]?.name}`;
      },
      pgFault,
      async () => {
        const pids = all.map((p) => p.current?.pid ?? 0);
        return `closed ${await closeAmqpConnectionsOf(pids)} AMQP connections`;
      },
      async () => {
        await redis.restart();
        return 'redis restarted empty';
      },
    ];
    for (let i = 0; i < 8; i++) {
      await run.progress(run.random.int(30, 120));
      run.fault(await run.random.pick(faults)());
    }
    await load.done;
    const counters = await run.settle(150_000);
    await Promise.all(all.map((p) => p.waitHealthy(60_000)));
    const exits = await run.stopAll();
    assertClean(run, counters, { exits, faultsInjected: run.faults });
    expect(exits.every((e) => e.code === 0)).toBe(true);
  });
});
