import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runHousekeepingOnce, startHousekeeping } from '../../shared/housekeeping.js';
import { silentLogger } from '../../shared/logger.js';
import { waitUntil } from '../../shared/wait.js';
import { count, createTestEnv, type TestEnv } from '../support/services.js';

let env: TestEnv;

beforeAll(async () => {
  env = await createTestEnv();
});

afterAll(async () => {
  await env?.teardown();
});

const DAY = 86_400_000;
const ago = (ms: number) => new Date(Date.now() - ms);

async function seed(): Promise<void> {
  // 2500 old inbox rows (more than two batches) and 10 recent ones.
  await env.knex.raw(
    `insert into dw_inbox (consumer, message_id, processed_at)
     select 'q', 'old-' || i, now() - interval '8 days' from generate_series(1, 2500) i`,
  );
  await env.knex.raw(
    `insert into dw_inbox (consumer, message_id, processed_at)
     select 'q', 'new-' || i, now() - interval '1 day' from generate_series(1, 10) i`,
  );
  const outbox = (id: string, deliveredAt: Date | null, createdAt: Date) => ({
    message_id: id,
    destination_kind: 'bullmq',
    destination: 'q',
    type: 'T',
    payload: '{}',
    created_at: createdAt,
    delivered_at: deliveredAt,
  });
  await env.knex('dw_outbox').insert([
    outbox('delivered-old', ago(2 * 3600_000), ago(2 * 3600_000)),
    outbox('delivered-recent', ago(60_000), ago(60_000)),
    // Pending for days (a destination down): never pruned.
    outbox('pending-old', null, ago(3 * DAY)),
  ]);
  await env.knex('dw_delivery_counts').insert([
    { consumer: 'q', message_id: 'stale', count: 2, updated_at: ago(2 * DAY) },
    { consumer: 'q', message_id: 'live', count: 2, updated_at: ago(60_000) },
  ]);
}

describe('housekeeping', () => {
  it('removes inbox rows past the dedup window, old delivered outbox rows and stale counts, in batches', async () => {
    await seed();
    const result = await runHousekeepingOnce(env.knex, { dedupWindowMs: 7 * DAY, batchSize: 1000 });
    expect(result).toEqual({ inbox: 2500, outbox: 1, deliveryCounts: 1 });
    expect(await count(env.knex, 'dw_inbox')).toBe(10);
    expect(await env.knex('dw_outbox').orderBy('message_id').pluck('message_id')).toEqual([
      'delivered-recent',
      'pending-old',
    ]);
    expect(await env.knex('dw_delivery_counts').pluck('message_id')).toEqual(['live']);
  });

  it('runs in one process at a time (advisory lock)', async () => {
    await env.knex.raw(
      `insert into dw_inbox (consumer, message_id, processed_at) values ('q', 'x', now() - interval '9 days')`,
    );
    const other = await env.knex.transaction();
    try {
      // Another process holding the housekeeping lock: this round does nothing.
      const { rows } = await other.raw('select pg_try_advisory_xact_lock(?) as locked', [0x64770001]);
      expect(rows[0].locked).toBe(true);
      expect(await runHousekeepingOnce(env.knex, { dedupWindowMs: 7 * DAY })).toBeUndefined();
      expect(await count(env.knex, 'dw_inbox', { message_id: 'x' })).toBe(1);
    } finally {
      await other.rollback();
    }
    expect(await runHousekeepingOnce(env.knex, { dedupWindowMs: 7 * DAY })).toMatchObject({ inbox: 1 });
  });

  it('the loop prunes on its own and stops cleanly', async () => {
    await env.knex.raw(
      `insert into dw_inbox (consumer, message_id, processed_at) values ('q', 'y', now() - interval '2 hours')`,
    );
    const housekeeping = startHousekeeping(env.knex, {
      intervalMs: 50,
      dedupWindowMs: 3600_000,
      log: silentLogger,
    });
    try {
      await waitUntil(
        async () => (await count(env.knex, 'dw_inbox', { message_id: 'y' })) === 0,
        'the loop to prune',
      );
    } finally {
      await housekeeping.stop();
    }
  });
});
