import { randomUUID } from 'node:crypto';
import { type WaitOptions, waitUntil } from '../shared/wait.js';
import type { BenchEnv } from './env.js';
import { BenchPublisher } from './publish.js';
import { benchWait, countRows } from './wait.js';

/** Waits until every saga of `ids` is completed. */
export async function sagasCompleted(
  env: BenchEnv,
  ids: string[],
  what: string,
  options: WaitOptions = benchWait,
): Promise<void> {
  await waitUntil(
    async () =>
      (await countRows(
        env.knex,
        "select count(*)::int as n from dw_sagas where status = 'completed' and id = any(?)",
        [ids],
      )) === ids.length,
    what,
    options,
  );
}

/**
 * True when the worker runs sagas end to end: one BenchSaga published, its saga completed within
 * `timeoutMs`. False (and the saga figures are left out) on a build whose saga runner is missing.
 */
export async function sagasWork(env: BenchEnv, timeoutMs = 15_000): Promise<boolean> {
  const publisher = await BenchPublisher.open(env.services.amqpUrl, env.exchange, env.queueType);
  const id = randomUUID();
  try {
    await publisher.publishAll([{ id, type: 'BenchSaga', payload: { seq: -1, sentAt: Date.now() } }]);
  } finally {
    await publisher.close();
  }
  try {
    await sagasCompleted(env, [id], 'the probe saga', { timeoutMs, intervalMs: 50 });
    return true;
  } catch {
    return false;
  }
}

/**
 * End to end: `count` BenchSaga messages published at once; the clock runs from the first publish
 * to the moment every one of their sagas is completed (worker and relay running).
 */
export async function measureSagas(env: BenchEnv, count: number): Promise<number> {
  const ids = Array.from({ length: count }, () => randomUUID());
  const publisher = await BenchPublisher.open(env.services.amqpUrl, env.exchange, env.queueType);
  const start = performance.now();
  try {
    await publisher.publishAll(
      ids.map((id, seq) => ({ id, type: 'BenchSaga', payload: { seq, sentAt: Date.now() } })),
    );
  } finally {
    await publisher.close();
  }
  await sagasCompleted(env, ids, `${count} sagas to complete`, { intervalMs: 50, timeoutMs: 180_000 });
  const done = performance.now();
  return (count * 1000) / (done - start);
}
