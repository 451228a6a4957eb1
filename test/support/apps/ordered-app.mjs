// A test app for `dw worker --app` (test/integration/ordering.test.ts): `Seq` records the order in
// which each key's messages are handled; `Fanout` publishes a key's messages through the outbox.
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { defineApp, defineHandler, NonRetryableError } from '../../../dist/index.js';

const Seq = z.object({
  key: z.string(),
  seq: z.number().int(),
  /** Attempts that fail before one succeeds. */
  failTimes: z.number().int().optional(),
  /** Never succeeds: dead-lettered at once. */
  poison: z.boolean().optional(),
});

export default defineApp({
  name: 'test',
  handlers: [
    defineHandler(
      'Seq',
      Seq,
      async (m, ctx) => {
        if (m.poison) throw new NonRetryableError(`${m.key}/${m.seq}: poison`);
        if (ctx.envelope.attempt <= (m.failTimes ?? 0)) {
          throw new Error(`${m.key}/${m.seq}: attempt ${ctx.envelope.attempt} fails`);
        }
        // What this key had committed when this message started: its predecessor, if in order.
        const { rows } = await ctx.trx.raw('select max(seq) as prev from ordered_seen where key = ?', [
          m.key,
        ]);
        const started = new Date();
        // Long enough for handlers of other keys to overlap with this one.
        await sleep(15);
        await ctx.trx('ordered_seen').insert({
          key: m.key,
          seq: m.seq,
          prev: rows[0].prev,
          attempt: ctx.envelope.attempt,
          pid: process.pid,
          started_at: started,
          finished_at: ctx.trx.raw('clock_timestamp()'),
        });
      },
      { retry: { immediateRetries: 1, delayed: { count: 2, initialMs: 400, factor: 1, jitter: 0 } } },
    ),
    defineHandler('Fanout', z.object({ key: z.string(), count: z.number().int() }), (m, ctx) => {
      for (let seq = 1; seq <= m.count; seq++)
        ctx.publish('Seq', { key: m.key, seq }, { orderingKey: m.key });
    }),
  ],
});
