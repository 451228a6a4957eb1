import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { claimOutboxBatch, insertOutboxMessages, markOutboxFailed } from '../../shared/outbox.js';
import { createTestEnv, type TestEnv } from '../support/services.js';

let env: TestEnv;

beforeAll(async () => {
  env = await createTestEnv();
});

afterAll(async () => {
  await env?.teardown();
});

describe('markOutboxFailed', () => {
  it('stores an error text holding NUL and lone surrogates (a delivery error echoing a hostile name)', async () => {
    await insertOutboxMessages(env.knex, [
      {
        messageId: 'o-1',
        destination: { kind: 'bullmq', queue: 'q' },
        type: 'T',
        payload: {},
        headers: {},
      },
    ]);
    // 1999 characters and then a pair: the cut at 2000 leaves a lone high surrogate as well.
    const error = `Queue name "a\0b\ud800" is invalid ${'x'.repeat(1970)}\ud83d\ude00`;
    await env.knex.transaction(async (trx) => {
      const [row] = await claimOutboxBatch(trx, 10);
      await markOutboxFailed(trx, row!.id, error, 1000);
    });
    const stored = await env.knex('dw_outbox').where({ message_id: 'o-1' }).first();
    expect(stored).toMatchObject({ attempts: 1, delivered_at: null });
    expect(stored.last_error).toMatch(/^Queue name "a\uFFFDb\uFFFD" is invalid x+\uFFFD$/);
  });
});
