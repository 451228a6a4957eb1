import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import amqp from 'amqplib';
import { Redis } from 'ioredis';
import pg from 'pg';
import { declareTopology, type Topology } from '../../../shared/topology.js';
import { waitUntil } from '../../../shared/wait.js';
import { urls } from '../../support/services.js';
import { freePort } from './processes.js';

const run = promisify(execFile);

/**
 * Terminates every session of the scenario's own database except the test's (application_name
 * `dw-test`): the worker's pool, the relay's pool and its LISTEN connection. Other databases on the
 * shared server are not touched. Returns how many sessions it ended.
 */
export async function terminateDatabaseSessions(database: string): Promise<number> {
  const client = new pg.Client({ connectionString: `${urls.postgres}/postgres` });
  await client.connect();
  try {
    // Only our database, never the test's own pool.
    const result = await client.query(
      `select pg_terminate_backend(pid) as ok from pg_stat_activity
        where datname = $1 and pid <> pg_backend_pid() and application_name <> 'dw-test'`,
      [database],
    );
    return result.rowCount ?? 0;
  } finally {
    await client.end();
  }
}

/** Local TCP ports of the given processes' connections to RabbitMQ (from `ss`), with their process. */
async function amqpPortOwners(pids: readonly number[]): Promise<Map<number, number>> {
  const { stdout } = await run('ss', ['-tnpH', 'state', 'established', '( dport = :5672 )']);
  const owners = new Map<number, number>();
  for (const line of stdout.split('\n')) {
    const pid = Number(/pid=(\d+)/.exec(line)?.[1]);
    if (!pids.includes(pid)) continue;
    const local = line.trim().split(/\s+/)[2] ?? '';
    owners.set(Number(local.slice(local.lastIndexOf(':') + 1)), pid);
  }
  return owners;
}

async function amqpPortsOf(pids: readonly number[]): Promise<Set<number>> {
  return new Set((await amqpPortOwners(pids)).keys());
}

/** Rows of a `rabbitmqctl list_*` command (header and informational lines left out). */
async function rabbitmqRows(...args: string[]): Promise<string[][]> {
  const { stdout } = await run('rabbitmqctl', [...args, '-q']);
  return stdout
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter((row) => row[0] !== undefined && row[0] !== '' && row.some((cell) => cell.startsWith('<')));
}

/**
 * For each of the given processes, how many of `queues` it is the active consumer of (single
 * active consumer: the one the broker delivers to), as RabbitMQ reports it: consumer → channel →
 * connection → client port → process.
 */
export async function activeConsumersOf(
  queues: readonly string[],
  pids: readonly number[],
): Promise<Map<number, number>> {
  const wanted = new Set(queues);
  const consumers = (await rabbitmqRows('list_consumers', 'queue_name', 'channel_pid', 'active')).filter(
    ([queue, , active]) => wanted.has(queue ?? '') && active === 'true',
  );
  const channels = new Map(
    (await rabbitmqRows('list_channels', 'pid', 'connection')).map(([channel, conn]) => [channel, conn]),
  );
  const ports = new Map(
    (await rabbitmqRows('list_connections', 'pid', 'peer_port')).map(([conn, port]) => [conn, Number(port)]),
  );
  const owners = await amqpPortOwners(pids);
  const held = new Map<number, number>(pids.map((pid) => [pid, 0]));
  for (const [, channel] of consumers) {
    const pid = owners.get(ports.get(channels.get(channel ?? '') ?? '') ?? -1);
    if (pid !== undefined) held.set(pid, (held.get(pid) ?? 0) + 1);
  }
  return held;
}

/**
 * One `rabbitmqctl list_queues` column (`type`, `messages_unacknowledged`, …) for each of the given
 * queues that exists.
 */
export async function queueColumn(queues: readonly string[], column: string): Promise<Map<string, string>> {
  const { stdout } = await run('rabbitmqctl', ['list_queues', 'name', column, '-q']);
  const wanted = new Set(queues);
  const values = new Map<string, string>();
  for (const line of stdout.split('\n')) {
    const [name, value] = line.trim().split(/\s+/);
    if (name && value !== undefined && wanted.has(name)) values.set(name, value);
  }
  return values;
}

/**
 * Has the broker close the AMQP connections of the given processes (and only theirs: found by the
 * client port), as a broker restart or a network cut would from the client's point of view.
 */
export async function closeAmqpConnectionsOf(pids: readonly number[]): Promise<number> {
  const ports = await amqpPortsOf(pids);
  if (ports.size === 0) return 0;
  const { stdout } = await run('rabbitmqctl', ['list_connections', 'pid', 'peer_port', '-q']);
  let closed = 0;
  for (const line of stdout.split('\n')) {
    const [pid, port] = line.trim().split(/\s+/);
    if (!pid?.startsWith('<') || !ports.has(Number(port))) continue;
    await run('rabbitmqctl', ['close_connection', pid, 'chaos: connection closed by the test']);
    closed++;
  }
  return closed;
}

/**
 * Deletes the scenario's own work queue (the broker cancels its consumers and drops the messages
 * in it) and declares it again with its bindings at once, as an operator recreating it would.
 */
export async function deleteAndRedeclareQueue(topology: Topology): Promise<number> {
  const connection = await amqp.connect(urls.amqp);
  try {
    const channel = await connection.createChannel();
    const { messageCount } = await channel.deleteQueue(topology.queue);
    await declareTopology(channel, topology);
    return messageCount;
  } finally {
    await connection.close();
  }
}

/**
 * Runs `fn` with RabbitMQ's `consumer_timeout` at `timeoutMs` for the channels opened meanwhile
 * (the broker reads it when a channel opens), then restores it. The channel tick (how often a
 * channel checks the timeout, 60 s by default) stays at `tickMs` until the returned restore runs:
 * a shorter tick only makes the checks more frequent for everyone.
 */
export async function shortConsumerTimeout(
  timeoutMs: number,
  tickMs: number,
  fn: () => Promise<void>,
): Promise<() => Promise<void>> {
  const env = (key: string, value: number) =>
    run('rabbitmqctl', ['eval', `application:set_env(rabbit, ${key}, ${value}).`]);
  const [defaultTimeout, defaultTick] = [1_800_000, 60_000];
  await env('channel_tick_interval', tickMs);
  try {
    await env('consumer_timeout', timeoutMs);
    try {
      await fn();
    } finally {
      await env('consumer_timeout', defaultTimeout);
    }
  } catch (error) {
    await env('channel_tick_interval', defaultTick);
    throw error;
  }
  return async () => {
    await env('channel_tick_interval', defaultTick);
  };
}

/**
 * A private redis-server on a free port, without persistence: `restart()` kills it (SIGKILL) and
 * starts a new one on the same port, which comes back empty, exactly like a Redis restart that lost
 * its data. Only the scenario's processes use it.
 */
export class PrivateRedis {
  private process: ChildProcess | undefined;

  private constructor(
    readonly port: number,
    private readonly evictionPolicy: string,
    /** Its own directory: an RDB file found there at boot is loaded. */
    private readonly dir: string,
  ) {}

  static async start({ evictionPolicy = 'noeviction' } = {}): Promise<PrivateRedis> {
    const dir = await mkdtemp(join(tmpdir(), 'dw-redis-'));
    const redis = new PrivateRedis(await freePort(), evictionPolicy, dir);
    await redis.boot();
    return redis;
  }

  private command<T>(fn: (client: Redis) => Promise<T>): Promise<T> {
    const client = new Redis(this.url, { maxRetriesPerRequest: 1 });
    client.on('error', () => {});
    return fn(client).finally(() => client.disconnect());
  }

  /** FLUSHDB, as an operator would: every client stays connected. */
  async flush(): Promise<void> {
    await this.command((c) => c.flushdb());
  }

  /** Writes an RDB snapshot now and keeps a copy: what `restartFromSnapshot` comes back to. */
  async snapshot(): Promise<void> {
    await this.command((c) => c.save());
    await copyFile(join(this.dir, 'dump.rdb'), join(this.dir, 'older.rdb'));
  }

  /** Kill, then start from the older snapshot: everything written since is gone, the rest is there. */
  async restartFromSnapshot(): Promise<void> {
    await this.kill();
    await copyFile(join(this.dir, 'older.rdb'), join(this.dir, 'dump.rdb'));
    await this.boot();
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  private async boot(): Promise<void> {
    const child = spawn(
      'redis-server',
      [
        '--port',
        String(this.port),
        '--dir',
        this.dir,
        '--bind',
        '127.0.0.1',
        '--save',
        '',
        '--appendonly',
        'no',
        '--maxmemory-policy',
        this.evictionPolicy,
      ],
      { stdio: 'ignore' },
    );
    this.process = child;
    await waitUntil(() => this.ping(), `private redis on port ${this.port} to answer`, { timeoutMs: 15_000 });
  }

  ping(): Promise<boolean> {
    return redisAnswers(this.url);
  }

  async kill(): Promise<void> {
    const child = this.process;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
  }

  /** Freezes the server (SIGSTOP): connections stay open, nothing answers; `resume` thaws it. */
  pause(): void {
    this.process?.kill('SIGSTOP');
  }

  resume(): void {
    this.process?.kill('SIGCONT');
  }

  /** Kill, then start empty on the same port. `downWhile` runs while it is down. */
  async restart(downWhile?: () => Promise<void>): Promise<void> {
    await this.kill();
    await rm(join(this.dir, 'dump.rdb'), { force: true });
    await downWhile?.();
    await this.boot();
  }

  async stop(): Promise<void> {
    await this.kill();
    await rm(this.dir, { recursive: true, force: true });
  }
}

/**
 * Restarts of the shared services, for the suite run alone (CI runs it after the normal suite).
 * Each one always brings the service back (finally) and waits until it answers again.
 */
export const services = {
  async restartRabbitmq(whileDown: () => Promise<void>): Promise<void> {
    await run('rabbitmqctl', ['-q', 'stop_app']);
    try {
      await whileDown();
    } finally {
      await run('rabbitmqctl', ['-q', 'start_app']);
      await run('rabbitmqctl', ['-q', 'await_startup']);
    }
  },

  async restartPostgres(whileDown: () => Promise<void>): Promise<void> {
    const version = (await run('ls', ['/etc/postgresql'])).stdout.trim().split('\n')[0] ?? '';
    const ctl = (action: string, ...extra: string[]) =>
      run('pg_ctlcluster', ['--skip-systemctl-redirect', version, 'main', action, ...extra]);
    await ctl('stop', '-m', 'fast');
    try {
      await whileDown();
    } finally {
      await ctl('start');
      await waitUntil(() => postgresAnswers(), 'PostgreSQL to answer again', {
        timeoutMs: 60_000,
        intervalMs: 200,
      });
    }
  },

  /** The shared Redis, started again with the machine's command line (it comes back empty). */
  async restartRedis(whileDown: () => Promise<void>): Promise<void> {
    await run('redis-cli', ['-h', '127.0.0.1', '-p', '6379', 'shutdown', 'nosave']).catch(() => {});
    try {
      await whileDown();
    } finally {
      await run('redis-server', [
        '--daemonize',
        'yes',
        '--bind',
        '127.0.0.1',
        '-::1',
        '--port',
        '6379',
        '--save',
        '',
        '--appendonly',
        'no',
        '--dir',
        '/var/lib/redis',
        '--logfile',
        '/var/log/redis/ci.log',
      ]);
      await waitUntil(() => redisAnswers(urls.redis), 'Redis to answer again', {
        timeoutMs: 30_000,
        intervalMs: 200,
      });
    }
  },
};

async function postgresAnswers(): Promise<boolean> {
  const client = new pg.Client({ connectionString: `${urls.postgres}/postgres` });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('select 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

async function redisAnswers(url: string): Promise<boolean> {
  const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  probe.on('error', () => {});
  try {
    await probe.connect();
    return (await probe.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    probe.disconnect();
  }
}
