import type { Knex } from 'knex';
import type { WaitOptions } from '../shared/wait.js';

/**
 * How the bench polls (with shared/wait.ts waitUntil): a whole run may take minutes, and the
 * moment a wait ends is a measurement, so it asks often.
 */
export const benchWait = { timeoutMs: 120_000, intervalMs: 20 } as const satisfies WaitOptions;

export async function countRows(
  knex: Knex,
  sql: string,
  bindings: readonly Knex.RawBinding[] = [],
): Promise<number> {
  const { rows } = await knex.raw<{ rows: [{ n: number }] }>(sql, bindings);
  return Number(rows[0].n);
}
