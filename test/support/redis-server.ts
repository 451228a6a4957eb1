import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { waitUntil } from '../../shared/wait.js';
import { freePort } from '../chaos/support/processes.js';

const execFileAsync = promisify(execFile);

/**
 * Every private redis-server this test process started and has not stopped: killed when the
 * process exits (a crashed or timed-out test file), so no server outlives its file.
 */
const running = new Set<ChildProcess>();
let exitHookInstalled = false;

function track(child: ChildProcess): void {
  running.add(child);
  child.once('exit', () => running.delete(child));
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const c of running) c.kill('SIGKILL');
  });
}

function spawnTracked(argv: string[]): ChildProcess {
  const child = spawn('redis-server', argv, { stdio: 'ignore' });
  track(child);
  return child;
}

/** One private redis-server (data node or sentinel) on a loopback port. */
export interface RedisNode {
  readonly host: string;
  readonly port: number;
  readonly url: string;
  /** Ends the server (SIGKILL) and waits for its exit; a second call does nothing. */
  kill(): Promise<void>;
  /**
   * Kills the server and starts it again on the same port with the same arguments: without
   * persistence it comes back empty (a cluster node keeps its slots from its nodes.conf).
   */
  restart(): Promise<void>;
  /** Whether the process is still running. */
  readonly alive: boolean;
}

class ServerProcess implements RedisNode {
  readonly host = '127.0.0.1';
  constructor(
    readonly port: number,
    private child: ChildProcess,
    private readonly argv: string[],
  ) {}

  async restart(): Promise<void> {
    await this.kill();
    this.child = spawnTracked(this.argv);
    await waitUntil(
      async () => this.died() || (await answers(this.url)),
      `redis-server on port ${this.port} again`,
      {
        timeoutMs: 15_000,
      },
    );
    if (!this.alive) throw new Error(`redis-server on port ${this.port} did not start again`);
  }

  get url(): string {
    return `redis://${this.host}:${this.port}`;
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async kill(): Promise<void> {
    if (!this.alive) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill('SIGKILL');
    await exited;
  }

  /** Resolves when the process ended on its own (a port taken under us, a bad argument). */
  readonly died = (): boolean => !this.alive;
}

/**
 * Starts `redis-server <args>` in `dir` on a free loopback port (`args(port)` builds the arguments;
 * a config file may come first), and waits until it answers PING. A port taken between the choice
 * and the bind makes the server exit: then it is tried again on another port.
 */
export async function startRedisServer(
  dir: string,
  args: (port: number) => Promise<string[]> | string[],
): Promise<RedisNode> {
  let lastError: unknown;
  for (let attempt = 1; attempt <= 5; attempt++) {
    const port = await freePort();
    const logfile = join(dir, `${port}.log`);
    await mkdir(dir, { recursive: true });
    const argv = [...(await args(port)), '--logfile', logfile];
    const server = new ServerProcess(port, spawnTracked(argv), argv);
    try {
      await waitUntil(
        async () => server.died() || (await answers(server.url)),
        `redis-server on port ${port}`,
        {
          timeoutMs: 15_000,
        },
      );
      if (server.alive) return server;
      lastError = new Error(`redis-server on port ${port} exited at start (see ${logfile})`);
    } catch (error) {
      lastError = error;
      await server.kill();
    }
  }
  throw lastError;
}

/** Arguments every private data node gets: loopback only, no persistence, no eviction. */
export function dataNodeArgs(port: number, dir: string): string[] {
  return [
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--dir',
    dir,
    '--save',
    '',
    '--appendonly',
    'no',
    '--maxmemory-policy',
    'noeviction',
  ];
}

/** Runs one command on a node with a short-lived connection. */
export async function nodeCommand<T>(url: string, fn: (client: Redis) => Promise<T>): Promise<T> {
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
  client.on('error', () => {});
  try {
    await client.connect();
    return await fn(client);
  } finally {
    client.disconnect();
  }
}

async function answers(url: string): Promise<boolean> {
  return nodeCommand(url, async (c) => (await c.ping()) === 'PONG').catch(() => false);
}

/** `redis-cli <args>`; throws with its output when it fails. */
export async function redisCli(args: string[]): Promise<string> {
  const { stdout } = await execFileAsync('redis-cli', args, { timeout: 60_000 });
  return stdout;
}
