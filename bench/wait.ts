import type { Knex } from 'knex';

/** Polls `check` until it returns true, or throws after `timeoutMs` naming `what`. */
export async function waitUntil(
  check: () => Promise<boolean>,
  what: string,
  { timeoutMs = 120_000, intervalMs = 20 } = {},
): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return performance.now();
    if (Date.now() > deadline) throw new Error(`bench: timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

export async function countRows(
  knex: Knex,
  sql: string,
  bindings: readonly Knex.RawBinding[] = [],
): Promise<number> {
  const { rows } = await knex.raw<{ rows: [{ n: number }] }>(sql, bindings);
  return Number(rows[0].n);
}
