import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import type { Knex } from 'knex';

/** Plain database operations on dw_processes: the heartbeats of running workers and relays. */

export type ProcessKind = 'worker' | 'relay';

export interface ProcessRow {
  id: string;
  kind: ProcessKind;
  host: string;
  pid: number;
  version: string;
  started_at: Date;
  last_seen_at: Date;
}

/** How often a process refreshes its row; unseen for `processGoneAfterMs`, it counts as gone. */
export const heartbeatIntervalMs = 5000;
export const processGoneAfterMs = 30_000;

export async function upsertProcess(knex: Knex, row: Omit<ProcessRow, 'last_seen_at'>): Promise<void> {
  // Insert on the first beat, refresh last_seen_at on the following ones.
  await knex.raw(
    `insert into dw_processes (id, kind, host, pid, version, started_at, last_seen_at)
     values (?, ?, ?, ?, ?, ?, now())
     on conflict (id) do update set last_seen_at = now()`,
    [row.id, row.kind, row.host, row.pid, row.version, row.started_at],
  );
}

export async function deleteProcess(knex: Knex, id: string): Promise<void> {
  // A clean stop removes its row; a crash leaves it to age into "gone".
  await knex.raw('delete from dw_processes where id = ?', [id]);
}

/** Rows of processes that crashed long ago (a clean stop deletes its own row). */
export async function pruneProcesses(knex: Knex, unseenForMs: number): Promise<void> {
  await knex.raw('delete from dw_processes where last_seen_at < now() - make_interval(secs => ?)', [
    unseenForMs / 1000,
  ]);
}

/** Processes seen within `withinMs`, newest start first, with whether they still beat. */
export async function listProcesses(
  knex: Knex,
  withinMs: number,
): Promise<Array<ProcessRow & { alive: boolean }>> {
  // Liveness is judged by the database clock, the one that wrote last_seen_at.
  const { rows } = await knex.raw<{ rows: Array<ProcessRow & { alive: boolean }> }>(
    `select *, last_seen_at > now() - make_interval(secs => ?) as alive
       from dw_processes
      where last_seen_at > now() - make_interval(secs => ?)
      order by kind, started_at desc`,
    [processGoneAfterMs / 1000, withinMs / 1000],
  );
  return rows;
}

function packageVersion(): string {
  for (const path of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(path, import.meta.url), 'utf8')) as {
        name?: string;
        version?: string;
      };
      if (pkg.name === 'durable-worker' && pkg.version) return pkg.version;
    } catch {
      // not at this depth (sources vs. dist)
    }
  }
  return 'unknown';
}

/**
 * Upserts the process's row now and every `heartbeatIntervalMs`; `stop` deletes it. A failed beat
 * (database down) is skipped: the next one catches up, and the row ageing meanwhile is the truth.
 */
export function startHeartbeat(knex: Knex, kind: ProcessKind): { stop(): Promise<void> } {
  const row = {
    id: randomUUID(),
    kind,
    host: hostname(),
    pid: process.pid,
    version: packageVersion(),
    started_at: new Date(),
  };
  let beating: Promise<void> = pruneProcesses(knex, 7 * 86_400_000)
    .then(() => upsertProcess(knex, row))
    .catch(() => {});
  const timer = setInterval(() => {
    beating = beating.then(() => upsertProcess(knex, row).catch(() => {}));
  }, heartbeatIntervalMs);
  timer.unref();
  return {
    async stop() {
      clearInterval(timer);
      // Bounded: a database that stopped answering must not hold the process's exit.
      let timeout: NodeJS.Timeout | undefined;
      await Promise.race([
        beating.then(() => deleteProcess(knex, row.id)).catch(() => {}),
        new Promise<void>((resolve) => {
          timeout = setTimeout(resolve, 1000);
        }),
      ]);
      clearTimeout(timeout);
    },
  };
}
