import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitUntil } from '../../shared/wait.js';
import { freePort } from '../chaos/support/processes.js';
import { dataNodeArgs, nodeCommand, type RedisNode, redisCli, startRedisServer } from './redis-server.js';

export interface RedisClusterOptions {
  /**
   * Masters; the 16384 slots are spread over them.
   * @defaultValue 3
   */
  masters?: number;
  /**
   * Replicas of each master (a replica is promoted when its master dies).
   * @defaultValue 0
   */
  replicasPerMaster?: number;
}

export interface RedisCluster {
  /** REDIS_URL for REDIS_MODE=cluster: every node, comma-separated. */
  url: string;
  nodes: RedisNode[];
  /** The nodes that are masters now. */
  masters(): Promise<RedisNode[]>;
  /** The master whose slots hold `key` now. */
  masterOf(key: string): Promise<RedisNode>;
  /**
   * Restarts `node` empty (kill, start on the same port without its data, as after a crash without
   * persistence) and waits until the whole cluster reports cluster_state:ok again.
   */
  restartEmpty(node: RedisNode): Promise<void>;
  /** FLUSHALL on every master: the whole cluster loses its data, as after a restart without persistence. */
  flushAll(): Promise<void>;
  /** Kills every node and removes their directory. */
  stop(): Promise<void>;
}

/**
 * A private Redis Cluster on loopback ports: `redis-server --cluster-enabled yes` per node (no
 * persistence), joined with `redis-cli --cluster create`, returned once every node reports
 * `cluster_state:ok` with all slots assigned. `stop()` ends it; a test file that dies leaves no
 * server behind (see redis-server.ts).
 */
/** Every node reports cluster_state:ok, with all slots assigned and every node known. */
async function clusterOk(nodes: RedisNode[]): Promise<void> {
  await waitUntil(
    async () => {
      const infos = await Promise.all(
        nodes.map((n) => nodeCommand(n.url, (c) => c.cluster('INFO')).catch(() => '')),
      );
      return infos.every(
        (info) =>
          info.includes('cluster_state:ok') &&
          info.includes('cluster_slots_assigned:16384') &&
          info.includes(`cluster_known_nodes:${nodes.length}`),
      );
    },
    'the private Redis Cluster to report cluster_state:ok on every node',
    { timeoutMs: 60_000, intervalMs: 100 },
  );
}

export async function startRedisCluster(options: RedisClusterOptions = {}): Promise<RedisCluster> {
  const masters = options.masters ?? 3;
  const replicas = options.replicasPerMaster ?? 0;
  const dir = await mkdtemp(join(tmpdir(), 'dw-redis-cluster-'));
  const nodes: RedisNode[] = [];
  const stop = async () => {
    await Promise.all(nodes.map((n) => n.kill()));
    await rm(dir, { recursive: true, force: true });
  };
  try {
    for (let i = 0; i < masters * (1 + replicas); i++) {
      nodes.push(
        await startRedisServer(dir, async (port) => [
          ...dataNodeArgs(port, dir),
          '--cluster-enabled',
          'yes',
          // The bus port defaults to port + 10000, which may be taken or past 65535.
          '--cluster-port',
          String(await freePort()),
          '--cluster-config-file',
          join(dir, `nodes-${port}.conf`),
          '--cluster-node-timeout',
          '2000',
        ]),
      );
    }
    await redisCli([
      '--cluster',
      'create',
      ...nodes.map((n) => `${n.host}:${n.port}`),
      '--cluster-replicas',
      String(replicas),
      '--cluster-yes',
    ]);
    await clusterOk(nodes);
  } catch (error) {
    await stop();
    throw error;
  }
  const masterNodes = async () => {
    const roles = await Promise.all(
      nodes.map(async (n) =>
        n.alive ? await nodeCommand(n.url, (c) => c.role()).catch(() => undefined) : undefined,
      ),
    );
    return nodes.filter((_, i) => (roles[i] as unknown[] | undefined)?.[0] === 'master');
  };
  return {
    url: nodes.map((n) => n.url).join(','),
    nodes,
    masters: masterNodes,
    async masterOf(key) {
      const seed = nodes.find((n) => n.alive) ?? nodes[0]!;
      const slot = Number(await nodeCommand(seed.url, (c) => c.cluster('KEYSLOT', key)));
      for (const node of await masterNodes()) {
        const ranges = await nodeCommand(node.url, (c) => c.cluster('SLOTS'));
        const own = ranges.find(
          ([from, to, master]) => slot >= from && slot <= to && master?.[1] === node.port,
        );
        if (own) return node;
      }
      throw new Error(`no master holds slot ${slot}`);
    },
    async restartEmpty(node) {
      await node.restart();
      await clusterOk(nodes);
    },
    async flushAll() {
      for (const node of await masterNodes()) await nodeCommand(node.url, (c) => c.flushall());
    },
    stop,
  };
}
