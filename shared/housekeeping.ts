import type { Knex } from 'knex';
import { housekeepingDefaults, workerDefaults } from './defaults.js';
import type { Logger } from './logger.js';
import { sleep } from './time.js';

export interface HousekeepingOptions {
  /** Pause between rounds in ms; 0 turns housekeeping off. */
  intervalMs: number;
  /** Inbox rows older than this are removed. */
  dedupWindowMs: number;
  /**
   * Delivered outbox rows older than this are removed: what the relay can re-deliver after Redis loses its data.
   * @defaultValue 3600000 (1 hour)
   */
  outboxRetentionMs?: number;
  /**
   * Delivery counts untouched for this long are removed.
   * @defaultValue 86400000 (1 day)
   */
  deliveryCountRetentionMs?: number;
  /**
   * Rows per delete statement: small, so no delete holds locks or bloats WAL for long.
   * @defaultValue 1000
   */
  batchSize?: number;
  log: Logger;
}

export interface PruneResult {
  inbox: number;
  outbox: number;
  deliveryCounts: number;
}

// Any constant works: it names "the housekeeper" among the advisory locks of this database.
const HOUSEKEEPING_LOCK = 0x64770001;

/**
 * Prunes old inbox rows, delivered outbox rows and stale delivery counts in small batches, one
 * process at a time: every worker runs it, the advisory lock lets one of them work.
 */
export function startHousekeeping(knex: Knex, options: HousekeepingOptions): { stop(): Promise<void> } {
  if (options.intervalMs <= 0) return { stop: async () => {} };
  const abort = new AbortController();
  const loop = (async () => {
    while (!abort.signal.aborted) {
      try {
        const result = await runHousekeepingOnce(knex, options, abort.signal);
        if (result && result.inbox + result.outbox + result.deliveryCounts > 0) {
          options.log.info(result, 'housekeeping removed old rows');
        }
      } catch (error) {
        options.log.warn({ err: error }, 'housekeeping round failed; trying again next round');
      }
      await sleep(options.intervalMs, abort.signal);
    }
  })();
  return {
    async stop() {
      abort.abort();
      await loop;
    },
  };
}

/**
 * One round; undefined when another process holds the lock. The lock belongs to a transaction that
 * stays open for the round, while the deletes run on the pool as separate short statements, so no
 * delete holds its locks for the whole round.
 */
export async function runHousekeepingOnce(
  knex: Knex,
  options: Omit<HousekeepingOptions, 'intervalMs' | 'log'>,
  signal?: AbortSignal,
): Promise<PruneResult | undefined> {
  const batchSize = options.batchSize ?? housekeepingDefaults.batchSize;
  return knex.transaction(async (trx) => {
    // Transaction-level lock: released at commit even if this process dies mid-round.
    const { rows } = await trx.raw<{ rows: [{ locked: boolean }] }>(
      'select pg_try_advisory_xact_lock(?) as locked',
      [HOUSEKEEPING_LOCK],
    );
    if (!rows[0].locked) return undefined;
    const now = Date.now();
    const result: PruneResult = { inbox: 0, outbox: 0, deliveryCounts: 0 };
    result.inbox = await inBatches(
      () => deleteOldInboxRows(knex, new Date(now - options.dedupWindowMs), batchSize),
      batchSize,
      signal,
    );
    result.outbox = await inBatches(
      () =>
        deleteDeliveredOutboxRows(
          knex,
          new Date(now - (options.outboxRetentionMs ?? workerDefaults.outboxRetentionMs)),
          batchSize,
        ),
      batchSize,
      signal,
    );
    result.deliveryCounts = await inBatches(
      () =>
        deleteStaleDeliveryCounts(
          knex,
          new Date(now - (options.deliveryCountRetentionMs ?? housekeepingDefaults.deliveryCountRetentionMs)),
          batchSize,
        ),
      batchSize,
      signal,
    );
    return result;
  });
}

async function inBatches(
  deleteBatch: () => Promise<number>,
  batchSize: number,
  signal: AbortSignal | undefined,
): Promise<number> {
  let total = 0;
  for (;;) {
    if (signal?.aborted) return total;
    const deleted = await deleteBatch();
    total += deleted;
    if (deleted < batchSize) return total;
  }
}

export async function deleteOldInboxRows(knex: Knex, before: Date, limit: number): Promise<number> {
  // ctid: delete by physical row address, the cheapest way to bound a DELETE in Postgres.
  const result = await knex.raw(
    `delete from dw_inbox where ctid in (
       select ctid from dw_inbox where processed_at < ? limit ?)`,
    [before, limit],
  );
  return result.rowCount ?? 0;
}

export async function deleteDeliveredOutboxRows(knex: Knex, before: Date, limit: number): Promise<number> {
  // Uses the partial index dw_outbox_delivered; pending rows are never touched.
  const result = await knex.raw(
    `delete from dw_outbox where ctid in (
       select ctid from dw_outbox where delivered_at is not null and delivered_at < ? limit ?)`,
    [before, limit],
  );
  return result.rowCount ?? 0;
}

export async function deleteStaleDeliveryCounts(knex: Knex, before: Date, limit: number): Promise<number> {
  // Counts of messages that were finished (or dead-lettered) long ago; a live crash loop touches its row.
  const result = await knex.raw(
    `delete from dw_delivery_counts where ctid in (
       select ctid from dw_delivery_counts where updated_at < ? limit ?)`,
    [before, limit],
  );
  return result.rowCount ?? 0;
}
