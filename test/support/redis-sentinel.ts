import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitUntil } from '../../shared/wait.js';
import { dataNodeArgs, nodeCommand, type RedisNode, startRedisServer } from './redis-server.js';

export interface RedisSentinelOptions {
  /**
   * Start a replica of the master (needed for a failover).
   * @defaultValue true
   */
  replica?: boolean;
  /**
   * Sentinels (1 to 3); a failover needs a majority of them.
   * @defaultValue 1
   */
  sentinels?: number;
  /**
   * The master's name the sentinels monitor (REDIS_SENTINEL_NAME).
   * @defaultValue `'dw-master'`
   */
  name?: string;
}

export interface RedisSentinelSetup {
  /** REDIS_URL for REDIS_MODE=sentinel: the sentinels, comma-separated. */
  url: string;
  /** REDIS_SENTINEL_NAME. */
  name: string;
  /** The data nodes: the first master, then the replica if any. */
  nodes: RedisNode[];
  sentinels: RedisNode[];
  /** The data node the sentinels name as master now. */
  master(): Promise<RedisNode>;
  /**
   * SENTINEL FAILOVER: the replica becomes master; resolves once every sentinel names it and it
   * takes writes. Needs `replica: true`.
   */
  failover(): Promise<RedisNode>;
  /** Kills sentinels and data nodes and removes their directory. */
  stop(): Promise<void>;
}

/**
 * A private master (plus a replica) watched by 1–3 `redis-server --sentinel` processes, all on
 * loopback ports, returned once every sentinel knows the master (and the replica, in sync).
 */
export async function startRedisSentinel(options: RedisSentinelOptions = {}): Promise<RedisSentinelSetup> {
  const name = options.name ?? 'dw-master';
  const withReplica = options.replica ?? true;
  const count = Math.min(3, Math.max(1, options.sentinels ?? 1));
  const dir = await mkdtemp(join(tmpdir(), 'dw-redis-sentinel-'));
  const nodes: RedisNode[] = [];
  const sentinels: RedisNode[] = [];
  const stop = async () => {
    await Promise.all([...sentinels, ...nodes].map((n) => n.kill()));
    await rm(dir, { recursive: true, force: true });
  };
  const masterAddress = async (sentinel: RedisNode): Promise<number | undefined> => {
    const reply = (await nodeCommand(sentinel.url, (c) =>
      c.call('SENTINEL', 'get-master-addr-by-name', name),
    ).catch(() => null)) as string[] | null;
    return reply?.[1] ? Number(reply[1]) : undefined;
  };
  try {
    const master = await startRedisServer(join(dir, 'master'), (port) =>
      dataNodeArgs(port, join(dir, 'master')),
    );
    nodes.push(master);
    if (withReplica) {
      const replicaDir = join(dir, 'replica');
      nodes.push(
        await startRedisServer(replicaDir, (port) => [
          ...dataNodeArgs(port, replicaDir),
          '--replicaof',
          master.host,
          String(master.port),
        ]),
      );
      await waitUntil(
        () =>
          nodeCommand(nodes[1]!.url, async (c) =>
            (await c.info('replication')).includes('master_link_status:up'),
          ),
        'the replica to sync with the master',
        { timeoutMs: 30_000 },
      );
    }
    const quorum = Math.floor(count / 2) + 1;
    for (let i = 0; i < count; i++) {
      const sentinelDir = join(dir, `sentinel-${i}`);
      sentinels.push(
        await startRedisServer(sentinelDir, async (port) => {
          // A sentinel rewrites its own config file: one per sentinel, in its directory.
          const file = join(sentinelDir, `sentinel-${port}.conf`);
          await writeFile(
            file,
            [
              `port ${port}`,
              'bind 127.0.0.1',
              `dir ${sentinelDir}`,
              `sentinel monitor ${name} ${master.host} ${master.port} ${quorum}`,
              `sentinel down-after-milliseconds ${name} 2000`,
              `sentinel failover-timeout ${name} 10000`,
              `sentinel parallel-syncs ${name} 1`,
              '',
            ].join('\n'),
          );
          return [file, '--sentinel'];
        }),
      );
    }
    await waitUntil(
      async () => {
        for (const sentinel of sentinels) {
          if ((await masterAddress(sentinel)) !== master.port) return false;
          if (withReplica) {
            const replicas = (await nodeCommand(sentinel.url, (c) =>
              c.call('SENTINEL', 'replicas', name),
            ).catch(() => [])) as string[][];
            if (replicas.length === 0) return false;
          }
        }
        return true;
      },
      'every sentinel to know the master (and its replica)',
      { timeoutMs: 60_000, intervalMs: 200 },
    );
  } catch (error) {
    await stop();
    throw error;
  }
  const currentMaster = async (): Promise<RedisNode> => {
    for (const sentinel of sentinels) {
      const port = await masterAddress(sentinel);
      const node = nodes.find((n) => n.port === port);
      if (node) return node;
    }
    throw new Error('no sentinel names a master');
  };
  return {
    url: sentinels.map((s) => s.url).join(','),
    name,
    nodes,
    sentinels,
    master: currentMaster,
    async failover() {
      if (nodes.length < 2)
        throw new Error('failover needs a replica: startRedisSentinel({ replica: true })');
      const before = await currentMaster();
      const target = nodes.find((n) => n !== before)!;
      // Refused (NOGOODSLAVE, INPROG) while the replica is not ready yet: asked again until accepted.
      await waitUntil(
        () =>
          nodeCommand(sentinels[0]!.url, (c) => c.call('SENTINEL', 'failover', name))
            .then(() => true)
            .catch(() => false),
        'a sentinel to accept SENTINEL FAILOVER',
        { timeoutMs: 30_000, intervalMs: 200 },
      );
      await waitUntil(
        async () => {
          for (const sentinel of sentinels) if ((await masterAddress(sentinel)) !== target.port) return false;
          const role = await nodeCommand(target.url, (c) => c.role()).catch(() => undefined);
          return (role as unknown[] | undefined)?.[0] === 'master';
        },
        'the sentinels to promote the replica',
        { timeoutMs: 60_000, intervalMs: 200 },
      );
      return target;
    },
    stop,
  };
}
