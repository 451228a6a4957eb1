import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const dwBin = fileURLToPath(new URL('../../bin/dw.js', import.meta.url));

/**
 * A `dw worker` or `dw relay` run as a real child process, as in production, so that its memory is
 * its own and its CPU competes honestly with Postgres, Redis and RabbitMQ on the same machine.
 */
export class DwProcess {
  private readonly tail: string[] = [];
  private readonly exited: Promise<number | null>;
  private peakRssKb = 0;
  private lastCpuSeconds = 0;
  private sampler: NodeJS.Timeout | undefined;

  private constructor(
    readonly name: string,
    private readonly child: ChildProcess,
  ) {
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    this.sampler = setInterval(() => this.sample(), 250);
    this.sampler.unref();
  }

  /** Starts `dw <args>` and resolves once its log says `readyMessage`. */
  static async start(
    name: string,
    args: readonly string[],
    env: NodeJS.ProcessEnv,
    readyMessage: string,
    nodeArgs: readonly string[] = [],
  ): Promise<DwProcess> {
    const child = spawn(process.execPath, [...nodeArgs, dwBin, ...args], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const proc = new DwProcess(name, child);
    // If the bench itself dies, its children must not outlive it.
    const killOnExit = () => child.kill('SIGKILL');
    process.once('exit', killOnExit);
    child.once('exit', () => process.removeListener('exit', killOnExit));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(proc.failure('did not start within 30 s')), 30_000);
      const onLine = (line: string) => {
        proc.remember(line);
        if (line.includes(`"msg":"${readyMessage}"`)) {
          clearTimeout(timer);
          resolve();
        }
      };
      // The child writes its logs synchronously: keep reading, or it would block on a full pipe.
      lines(child.stdout!, onLine);
      lines(child.stderr!, (line) => proc.remember(line));
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(proc.failure(`exited with code ${code} while starting`));
      });
    });
    return proc;
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Peak resident set size in MB (the kernel's high-water mark, VmHWM, and our own samples). */
  peakRssMb(): number {
    this.sample();
    return this.peakRssKb / 1024;
  }

  /**
   * CPU time (user + system) the process has used so far, in seconds; after it exited, the last
   * sample (taken every 250 ms and on stop).
   */
  cpuSeconds(): number {
    this.sample();
    return this.lastCpuSeconds;
  }

  /** Current resident set size in MB. */
  rssMb(): number {
    return (readStatusKb(this.pid, 'VmRSS') ?? 0) / 1024;
  }

  /** SIGTERM (graceful stop), then SIGKILL if it has not exited within `graceMs`. */
  async stop(graceMs = 15_000): Promise<void> {
    this.sample();
    clearInterval(this.sampler);
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  private sample(): void {
    if (this.child.exitCode !== null) return;
    const hwm = readStatusKb(this.pid, 'VmHWM') ?? readStatusKb(this.pid, 'VmRSS') ?? 0;
    this.peakRssKb = Math.max(this.peakRssKb, hwm);
    this.lastCpuSeconds = Math.max(this.lastCpuSeconds, readCpuSeconds(this.pid) ?? 0);
  }

  private remember(line: string): void {
    this.tail.push(line);
    if (this.tail.length > 20) this.tail.shift();
  }

  private failure(what: string): Error {
    return new Error(`dw ${this.name} ${what}; last output:\n${this.tail.join('\n')}`);
  }
}

function readStatusKb(pid: number, field: 'VmHWM' | 'VmRSS'): number | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`: 100 on every Linux we run on). */
const CLOCK_TICKS = 100;

/** utime + stime of /proc/<pid>/stat (fields 14 and 15), in seconds. */
function readCpuSeconds(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return undefined;
  }
}

/**
 * Busy share of all cores between two readings of /proc/stat's `cpu` line: what the whole machine
 * (Postgres, RabbitMQ, Redis, the children, anything else) did meanwhile.
 */
export function machineCpuTimes(): { busy: number; total: number } {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
    const ticks = line.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest times are already in user and nice).
    const total = ticks.slice(0, 8).reduce((sum, t) => sum + t, 0);
    const idle = (ticks[3] ?? 0) + (ticks[4] ?? 0);
    return { busy: total - idle, total };
  } catch {
    return { busy: 0, total: 0 };
  }
}

export function busyPct(from: { busy: number; total: number }, to: { busy: number; total: number }): number {
  const total = to.total - from.total;
  return total > 0 ? ((to.busy - from.busy) / total) * 100 : Number.NaN;
}

function lines(stream: NodeJS.ReadableStream, onLine: (line: string) => void): void {
  let buffered = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    buffered += chunk;
    let newline = buffered.indexOf('\n');
    while (newline >= 0) {
      onLine(buffered.slice(0, newline));
      buffered = buffered.slice(newline + 1);
      newline = buffered.indexOf('\n');
    }
  });
}
