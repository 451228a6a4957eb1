import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { waitUntil } from '../../../shared/wait.js';
import { type Exit, spawnDw } from '../../support/cli.js';

export type Kind = 'worker' | 'relay';

export type { Exit };

/** A free TCP port for a child's `/healthz` (the kernel picks it; we release it just before use). */
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (!address || typeof address === 'string') throw new Error('no port');
  return address.port;
}

/**
 * One real `dw worker` or `dw relay` child process. Its log lines are kept (the last few hundred,
 * shown when a scenario fails) and its warnings and errors counted, to catch log storms.
 */
export class DwProcess {
  readonly child: ChildProcess;
  readonly exited: Promise<Exit>;
  exit: Exit | undefined;
  warnings = 0;
  /** Warning and error lines by message, to tell a storm from the expected few lines. */
  readonly warningKinds = new Map<string, number>();
  /** Log lines of any level by message (first 80 characters), to tell that a path was taken. */
  readonly messageKinds = new Map<string, number>();
  crashPointHits = 0;
  /** Crash points that killed this process, by name. */
  readonly crashPoints: string[] = [];
  private readonly lines: string[] = [];
  private readonly watchers: Array<{ text: string; resolve: () => void }> = [];

  constructor(
    readonly name: string,
    readonly kind: Kind,
    readonly healthPort: number,
    env: NodeJS.ProcessEnv,
    args: string[] = [],
  ) {
    const { child, exited } = spawnDw(
      [kind, ...args],
      { ...process.env, ...env, DW_HEALTH_PORT: String(healthPort) },
      ['ignore', 'pipe', 'pipe'],
    );
    this.child = child;
    this.exited = exited;
    // Set in the exit event itself, so that `running` is false before anyone awaiting `exited` runs.
    child.once('exit', (code, signal) => {
      this.exit = { code, signal };
    });
    for (const stream of [this.child.stdout, this.child.stderr]) {
      let partial = '';
      stream?.setEncoding('utf8');
      stream?.on('data', (chunk: string) => {
        const parts = (partial + chunk).split('\n');
        partial = parts.pop() ?? '';
        for (const line of parts) this.onLine(line);
      });
    }
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return this.exit === undefined;
  }

  private onLine(line: string): void {
    if (!line.trim()) return;
    if (line.startsWith('crash point ')) {
      this.crashPointHits++;
      this.crashPoints.push(line.slice('crash point '.length).replace(/: SIGKILL$/, ''));
    }
    const level = /"level":(\d+)/.exec(line)?.[1];
    const msg = /"msg":"([^"]{0,80})/.exec(line)?.[1] ?? line.slice(0, 80);
    this.messageKinds.set(msg, (this.messageKinds.get(msg) ?? 0) + 1);
    if (level && Number(level) >= 40) {
      this.warnings++;
      this.warningKinds.set(msg, (this.warningKinds.get(msg) ?? 0) + 1);
    }
    this.lines.push(line);
    if (this.lines.length > 300) this.lines.shift();
    for (const w of this.watchers.filter((w) => line.includes(w.text))) {
      this.watchers.splice(this.watchers.indexOf(w), 1);
      w.resolve();
    }
  }

  /** Resolves when the process logs (or logged) a line containing `text`; fails if it exits first. */
  async waitForLog(text: string, timeoutMs = 30_000): Promise<void> {
    if (this.lines.some((line) => line.includes(text))) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      new Promise<void>((resolve) => this.watchers.push({ text, resolve })),
      this.exited.then((exit) => {
        throw new Error(`${this.name} exited (${JSON.stringify(exit)}) before logging "${text}"`);
      }),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`${this.name} did not log "${text}" within ${timeoutMs} ms`)),
          timeoutMs,
        );
      }),
    ]).finally(() => clearTimeout(timer));
  }

  tail(n = 40): string {
    return this.lines.slice(-n).join('\n');
  }

  /** GET /healthz: the dependencies map, or undefined while the process does not answer. */
  async health(): Promise<{ ok: boolean; dependencies: Record<string, boolean> } | undefined> {
    try {
      const res = await fetch(`http://127.0.0.1:${this.healthPort}/healthz`, {
        signal: AbortSignal.timeout(2000),
      });
      const body = (await res.json()) as { dependencies: Record<string, boolean> };
      return { ok: res.status === 200, dependencies: body.dependencies };
    } catch {
      return undefined;
    }
  }

  /** Waits until `/healthz` says every dependency is reachable; fails early if the process died. */
  async waitHealthy(timeoutMs = 30_000): Promise<void> {
    await waitUntil(
      async () => {
        if (this.exit)
          throw new Error(
            `${this.name} exited (${JSON.stringify(this.exit)}) before it was healthy:\n${this.tail()}`,
          );
        return (await this.health())?.ok;
      },
      `${this.name} /healthz to report every dependency up`,
      { timeoutMs, intervalMs: 100 },
    );
  }

  signal(signal: NodeJS.Signals): void {
    if (this.running) this.child.kill(signal);
  }

  async kill(): Promise<Exit> {
    this.signal('SIGKILL');
    return this.exited;
  }
}

export interface SupervisorOptions {
  name: string;
  kind: Kind;
  env: NodeJS.ProcessEnv;
  args?: string[];
  /**
   * Env for the n-th incarnation (0 = first), on top of `env`, given the crash points that killed
   * the earlier ones: e.g. crash points armed only until they fired a few times.
   */
  envFor?: (incarnation: number, crashPoints: Record<string, number>) => NodeJS.ProcessEnv;
}

/**
 * Keeps one worker or relay running, as a process manager would: when the process dies (a crash
 * point, a SIGKILL from the scenario), it starts a new one. Counts the incarnations.
 */
export class Supervisor {
  current: DwProcess | undefined;
  incarnations = 0;
  readonly deaths: Exit[] = [];
  readonly all: DwProcess[] = [];
  private stopped = false;
  private port: number | undefined;

  constructor(private readonly options: SupervisorOptions) {}

  async start(): Promise<DwProcess> {
    this.port ??= await freePort();
    const { name, kind, env, args, envFor } = this.options;
    const proc = new DwProcess(
      `${name}#${this.incarnations}`,
      kind,
      this.port,
      { ...env, ...envFor?.(this.incarnations, this.crashPoints) },
      args,
    );
    this.incarnations++;
    this.current = proc;
    this.all.push(proc);
    void proc.exited.then((exit) => {
      if (this.stopped || this.current !== proc) return;
      this.deaths.push(exit);
      void this.start();
    });
    return proc;
  }

  /** SIGKILLs the current process and waits until its successor answers `/healthz`. */
  async killAndRestart(): Promise<void> {
    const proc = this.current;
    if (!proc) throw new Error(`${this.options.name} is not running`);
    await proc.kill();
    await waitUntil(() => this.current !== proc && this.current, `${this.options.name} to be restarted`);
  }

  /**
   * Runs `stopIt` on the current process (send it signals), waits for it to exit (at most
   * `timeoutMs`, then SIGKILL), starts a successor and returns the exit of the stopped one.
   */
  async stopAndRestart(
    stopIt: (proc: DwProcess) => Promise<void>,
    timeoutMs: number,
  ): Promise<Exit | undefined> {
    const proc = this.current;
    if (!proc) throw new Error(`${this.options.name} is not running`);
    // Not the current process any more: its exit does not trigger the automatic restart.
    this.current = undefined;
    let timer: NodeJS.Timeout | undefined;
    const exit = await Promise.race([
      stopIt(proc).then(() => proc.exited),
      new Promise<undefined>((r) => {
        timer = setTimeout(() => r(undefined), timeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
    if (!exit) await proc.kill();
    await this.start();
    return exit;
  }

  async waitHealthy(timeoutMs = 30_000): Promise<void> {
    await waitUntil(
      async () => {
        const proc = this.current;
        return proc?.running && (await proc.health())?.ok;
      },
      `${this.options.name} /healthz to report every dependency up`,
      { timeoutMs, intervalMs: 100 },
    );
  }

  /** Graceful stop of the current process (SIGTERM); returns its exit. No restart afterwards. */
  async stop(timeoutMs = 30_000): Promise<Exit | undefined> {
    this.stopped = true;
    const proc = this.current;
    if (!proc?.running) return proc?.exit;
    // A process restarted a moment ago may still be in Node's bootstrap, where no handler can
    // catch the signal yet: stop it once it runs.
    await proc.waitHealthy(timeoutMs).catch(() => {});
    proc.signal('SIGTERM');
    const exit = await Promise.race([
      proc.exited,
      new Promise<undefined>((r) => setTimeout(() => r(undefined), timeoutMs)),
    ]);
    if (!exit) await proc.kill();
    return exit;
  }

  /** SIGKILL, no restart: for cleanup after a failure. */
  async destroy(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.all.map((p) => p.kill()));
  }

  get warnings(): number {
    return this.all.reduce((n, p) => n + p.warnings, 0);
  }

  get warningKinds(): Record<string, number> {
    const kinds: Record<string, number> = {};
    for (const p of this.all) for (const [k, n] of p.warningKinds) kinds[k] = (kinds[k] ?? 0) + n;
    return kinds;
  }

  /**
   * Warnings about dependencies (outages, reconnections), leaving out those the load asks for
   * (steps that fail on purpose, invalid messages): what a log storm would be made of.
   */
  get outageWarnings(): number {
    const expected = /^(saga step failed|invalid message|handler failed)/;
    return Object.entries(this.warningKinds)
      .filter(([msg]) => !expected.test(msg))
      .reduce((n, [, count]) => n + count, 0);
  }

  /** Log lines of every incarnation whose message starts with `prefix`. */
  logged(prefix: string): number {
    let n = 0;
    for (const p of this.all)
      for (const [msg, count] of p.messageKinds) if (msg.startsWith(prefix)) n += count;
    return n;
  }

  /** How many times each crash point killed one of the incarnations. */
  get crashPoints(): Record<string, number> {
    const hits: Record<string, number> = {};
    for (const p of this.all) for (const name of p.crashPoints) hits[name] = (hits[name] ?? 0) + 1;
    return hits;
  }

  get crashPointHits(): number {
    return this.all.reduce((n, p) => n + p.crashPointHits, 0);
  }

  tail(n = 30): string {
    return this.all
      .slice(-2)
      .map((p) => `--- ${p.name} (pid ${p.pid}) ---\n${p.tail(n)}`)
      .join('\n');
  }
}
