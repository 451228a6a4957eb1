// A test app for `dw worker --app` (test/integration/saga-batching.test.ts): `StartBatch` starts
// many three-step sagas in one handler transaction, so their first steps (and the next ones) are
// ready together and run in batches. Each step's effect is a batch_ledger row holding the id of
// the transaction it committed in. State `failOnce` names a step whose first attempt throws.
import { z } from 'zod';
import { defineApp, defineHandler, defineSaga } from '../../../dist/index.js';

const effect = (action) => async (ctx) => {
  if (action === 'execute' && ctx.state.failOnce === ctx.step && ctx.attempt === 1)
    throw new Error(`${ctx.step}: first attempt fails`);
  await ctx.trx.raw(
    'insert into batch_ledger (saga_id, step, action, txid) values (?, ?, ?, txid_current())',
    [ctx.sagaId, ctx.step, action],
  );
};

export const batched = defineSaga('batched', { retry: { attempts: 3, backoffMs: 5 } })
  .step('reserve', [effect('execute'), effect('compensate')])
  .step('charge', [effect('execute'), effect('compensate')])
  .step('confirm', effect('execute'));

export default defineApp({
  name: 'batching',
  handlers: [
    defineHandler(
      'StartBatch',
      z.object({ sagas: z.array(z.object({ id: z.string(), state: z.record(z.string(), z.unknown()) })) }),
      async (message, ctx) => {
        for (const saga of message.sagas) await ctx.startSaga(batched, saga.state, { id: saga.id });
      },
    ),
  ],
  sagas: [batched],
});
