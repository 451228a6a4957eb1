import { describe, expect, test } from 'vitest';
import { workerDefaults } from '../../shared/defaults.js';
import { partitionQueueName } from '../../shared/ordering.js';
import { randomName } from '../support/services.js';
import { activeConsumersOf, queueColumn } from './support/faults.js';
import type { Supervisor } from './support/processes.js';
import { assertClean } from './support/run.js';
import { chaosScope } from './support/scope.js';

const chaos = chaosScope();

/** One round of faults, as the report line shows it. */
interface Kill {
  round: number;
  worker: string | undefined;
  /** Partition queues the broker delivered to the killed worker (single active consumer). */
  partitionsHeld: number;
  /** Keyed deliveries handed out and not acked when it was killed (only the active consumer has any). */
  keyedUnacked: number;
  keyedHandled: number;
  keyedTotal: number;
  relay: string | undefined;
}

/**
 * Issue 14, "many processes": the deployment a team that outgrew one box runs. Three `dw worker`
 * and two `dw relay` processes share quorum queues (DW_QUEUE_TYPE=quorum) and a private 3-master
 * Redis Cluster (REDIS_MODE=cluster, a hash-tagged BULLMQ_PREFIX). Under a load of JoinMeeting
 * messages, BookTrip sagas and JoinMeeting messages keyed by meeting, the worker holding the
 * ordered partitions (and in two rounds a relay) is SIGKILLed with keyed transactions open, and
 * restarted by its supervisor. Then: nothing lost, nothing doubled, every message settled, exact
 * saga ledgers, and every meeting's participants inserted in the order their messages were published.
 */
describe('scale-out: many processes on quorum queues and a Redis Cluster', () => {
  test('3 workers and 2 relays, workers and relays SIGKILLed under load, ordered keys stay in order', async () => {
    const cluster = await chaos.redisCluster({ masters: 3 });
    const run = await chaos.run('scale-out: 3 workers, 2 relays, quorum queues, Redis Cluster', {
      redisMode: 'cluster',
      redisUrl: cluster.url,
      bullmqPrefix: `{${randomName('chaos-')}}`,
      queueType: 'quorum',
      ordered: true,
    });
    const { queue } = run.topology;
    const partitions = Array.from({ length: workerDefaults.orderedPartitions }, (_, i) =>
      partitionQueueName(queue, i),
    );

    // worker0 first: it becomes the active consumer of every partition (single active consumer
    // goes to the first subscriber); the broker moves them to a waiting worker when it dies.
    const workers: Supervisor[] = [await run.spawn('worker', 'worker0')];
    await workers[0]!.waitHealthy(60_000);
    workers.push(await run.spawn('worker', 'worker1'), await run.spawn('worker', 'worker2'));
    const relays = await Promise.all(
      [0, 1].map((i) => run.spawn('relay', `relay${i}`, { args: ['--batch-size', '50'] })),
    );
    await Promise.all([...workers, ...relays].map((p) => p.waitHealthy(60_000)));

    // The work queue and its partitions are quorum queues, as DW_QUEUE_TYPE asked.
    const types = await queueColumn([queue, ...partitions], 'type');
    expect(Object.fromEntries(types)).toEqual(
      Object.fromEntries([queue, ...partitions].map((name) => [name, 'quorum'])),
    );

    const load = run.startLoad(600, { trips: 30, keyed: { meetings: 12, usersPerMeeting: 30 } });
    const total = load.messages.size;
    const kills: Kill[] = [];
    const rounds = [
      { at: 0.15, relay: false },
      { at: 0.4, relay: true },
      { at: 0.65, relay: true },
    ];
    for (const [round, { at, relay }] of rounds.entries()) {
      await run.progress(
        Math.max(1, Math.round(total * at) - (await run.handled())),
        `${at * 100} % of the messages handled`,
      );
      // Hold every JoinMeeting transaction (keyed ones included) in flight, find the worker the
      // broker delivers the partitions to, and kill it with those transactions open.
      const release = await run.holdHandlers();
      try {
        const keyedHandled = await run.keyedHandled();
        const held = await activeConsumersOf(
          partitions,
          workers.map((w) => w.current?.pid ?? -1),
        );
        const heldBy = (w: Supervisor) => held.get(w.current?.pid ?? -1) ?? 0;
        const victim = workers.reduce((best, w) => (heldBy(w) > heldBy(best) ? w : best));
        const unacked = await queueColumn(partitions, 'messages_unacknowledged');
        const relayVictim = relay ? relays[round % relays.length] : undefined;
        const kill: Kill = {
          round,
          worker: victim.current?.name,
          partitionsHeld: heldBy(victim),
          keyedUnacked: [...unacked.values()].reduce((n, v) => n + Number(v), 0),
          keyedHandled,
          keyedTotal: run.keyedTotal,
          relay: relayVictim?.current?.name,
        };
        kills.push(kill);
        run.fault(
          `SIGKILL ${kill.worker} (active on ${kill.partitionsHeld} partitions, ${kill.keyedUnacked} keyed deliveries unacked)${relay ? ` and ${kill.relay}` : ''}`,
        );
        await Promise.all([victim.killAndRestart(), relayVictim?.killAndRestart()]);
      } finally {
        await release();
      }
    }
    await load.done;
    const counters = await run.settle(240_000);
    const violations = await run.orderViolations();
    const exits = await run.stopAll();
    assertClean(run, counters, {
      exits,
      kills,
      // Where the first two meetings out of order part from their publish order.
      outOfOrder: violations.slice(0, 2).map(({ key, published, handled }) => {
        const at = published.findIndex((user, i) => handled[i] !== user);
        return { key, at, published: published.slice(at, at + 3), handled: handled.slice(at, at + 3) };
      }),
    });
    expect(counters.keysOutOfOrder).toBe(0);
    // The faults hit what they were meant to: the worker holding keyed deliveries (its handlers
    // held by the lock) while keyed messages were still to come; each victim was restarted.
    for (const kill of kills) {
      expect(kill.partitionsHeld).toBeGreaterThan(0);
      expect(kill.keyedUnacked).toBeGreaterThan(0);
      expect(kill.keyedHandled).toBeLessThan(kill.keyedTotal);
    }
    expect(workers.reduce((n, w) => n + w.deaths.length, 0)).toBe(rounds.length);
    expect(relays.reduce((n, r) => n + r.deaths.length, 0)).toBe(rounds.filter((r) => r.relay).length);
    expect(exits.every((e) => e.code === 0)).toBe(true);
  }, 420_000);
});
