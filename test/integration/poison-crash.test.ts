import { fileURLToPath } from 'node:url';
import amqp, { type ChannelModel } from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exampleMigrations } from '../../examples/app/migrations.js';
import { waitUntil } from '../../shared/wait.js';
import { publishRaw } from '../support/amqp.js';
import { cliEnv as dwEnv, startDw } from '../support/cli.js';
import { count, createTestEnv, type TestEnv, urls } from '../support/services.js';

const crashLoopApp = fileURLToPath(new URL('../support/apps/crash-loop-app.mjs', import.meta.url));

let env: TestEnv;
let connection: ChannelModel;

beforeAll(async () => {
  env = await createTestEnv(exampleMigrations);
  connection = await amqp.connect(urls.amqp);
});

afterAll(async () => {
  await connection?.close();
  await env?.teardown();
});

/** Ready messages and consumers of a queue (unacked deliveries are not "ready"). */
async function queueState(name: string): Promise<{ messages: number; consumers: number }> {
  const channel = await connection.createChannel();
  channel.on('error', () => {});
  try {
    const q = await channel.checkQueue(name);
    return { messages: q.messageCount, consumers: q.consumerCount };
  } catch {
    return { messages: 0, consumers: 0 };
  } finally {
    await channel.close().catch(() => {});
  }
}

describe('crashes around the dead letters (worker as a real process)', () => {
  it('a crash between the dead-letter write and the ack neither loses the message nor stores it twice', async () => {
    const queue = `${env.config.exchange}.example`;
    const crashing = startDw(
      ['worker'],
      dwEnv(env.config, { DW_CRASH_POINTS: 'worker:after-dead-letter-before-ack' }),
    );
    await waitUntil(async () => (await queueState(queue)).consumers === 1, 'the worker to consume');
    await publishRaw(env.config.exchange, [
      { routingKey: 'SendInvoice', body: { invoiceId: [] }, properties: { messageId: 'bad-invoice' } },
    ]);
    expect(await crashing.exited).toMatchObject({ signal: 'SIGKILL' });
    expect(await count(env.knex, 'dw_dead_letters', { message_id: 'bad-invoice' })).toBe(1);
    // Not acked: the broker still holds it.
    await waitUntil(async () => (await queueState(queue)).messages === 1, 'the message back in the queue');

    // Restart until a clean stop leaves the queue empty: a delivery that arrives just as SIGTERM
    // does is requeued unstarted (correctly), so one round may not be enough.
    for (let round = 0; ; round++) {
      expect(round).toBeLessThan(5);
      const worker = startDw(['worker'], dwEnv(env.config));
      await waitUntil(async () => {
        const state = await queueState(queue);
        return state.consumers === 1 && state.messages === 0;
      }, 'the redelivery');
      worker.child.kill('SIGTERM');
      expect(await worker.exited).toEqual({ code: 0, signal: null });
      if ((await queueState(queue)).messages === 0) break;
    }
    const entries = await env.knex('dw_dead_letters').where({ message_id: 'bad-invoice' });
    expect(entries).toHaveLength(1);
    expect(entries[0]).toMatchObject({ reason: 'invalid-payload', attempts: 1 });
  });

  it('a message that kills the worker each time is dead-lettered by its delivery count', async () => {
    const queue = `${env.config.exchange}.test`;
    const workerEnv = dwEnv(env.config, { DW_APP: crashLoopApp });
    let published = false;
    let starts = 0;
    for (;;) {
      const worker = startDw(['worker'], workerEnv);
      starts++;
      if (!published) {
        // Later starts die as soon as they consume, too fast to observe: only the first is awaited.
        await waitUntil(async () => (await queueState(queue)).consumers === 1, 'the worker to consume');
        await publishRaw(env.config.exchange, [
          { routingKey: 'Crash', body: {}, properties: { messageId: 'killer' } },
        ]);
        published = true;
      }
      let died = false;
      void worker.exited.then(() => {
        died = true;
      });
      const outcome = await waitUntil(async () => {
        if (await env.knex('dw_dead_letters').where({ message_id: 'killer' }).first()) return 'dead-lettered';
        return died ? 'died' : undefined;
      }, 'the worker to die or the message to be dead-lettered');
      if (outcome === 'dead-lettered') {
        worker.child.kill('SIGTERM');
        expect(await worker.exited).toEqual({ code: 0, signal: null });
        break;
      }
      expect(starts).toBeLessThan(10);
    }
    // Default maxDeliveries 5: the first delivery (not recorded: it costs no write) and five
    // recorded redeliveries died; the sixth redelivery is recognised.
    expect(starts).toBe(7);
    const entry = await env.knex('dw_dead_letters').where({ message_id: 'killer' }).first();
    expect(entry.reason).toBe('handler-failed');
    expect(entry.error).toMatchObject({ name: 'PoisonMessageError', code: 'DW_POISON_MESSAGE' });
    expect(entry.error.message).toMatch(
      /^poison message: 5 redeliveries started handling and never finished .*limit 5, WorkerOptions.maxDeliveries/,
    );
    expect((await queueState(queue)).messages).toBe(0);
  });
});
