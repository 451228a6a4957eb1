import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import amqp, { type ChannelModel, type ConsumeMessage } from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ResilientAmqpConnection } from '../../shared/amqp.js';
import { defineApp, defineHandler } from '../../shared/app.js';
import { queueDefaults, retryQueueName, workerDefaults, workQueueName } from '../../shared/defaults.js';
import { readIncoming } from '../../shared/envelope.js';
import { QueueTypeMismatchError } from '../../shared/errors.js';
import { silentLogger } from '../../shared/logger.js';
import { partitionQueueName } from '../../shared/ordering.js';
import {
  consumedQueueOptions,
  declareConsumedQueue,
  deliveryLimitQueueName,
  existingQueueType,
} from '../../shared/queue-type.js';
import { waitUntil } from '../../shared/wait.js';
import { MessageProcessor } from '../../worker/message-processor.js';
import { RetryQueues } from '../../worker/retry-queues.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { cliEnv, runCli } from '../support/cli.js';
import { count, createTestEnv, type TestEnv, urls } from '../support/services.js';

// Issue 14, item 1: quorum queues, the default for new installations.

const run = promisify(execFile);

let failOnce = new Set<number>();
const app = defineApp({
  name: 'test',
  handlers: [
    defineHandler(
      'Note',
      z.object({ n: z.number() }),
      async (message, ctx) => {
        if (failOnce.delete(message.n)) throw new Error('fails once, retried after a delay');
        await ctx.trx('quorum_notes').insert({ n: message.n });
      },
      { retry: { immediateRetries: 0, delayed: { count: 2, initialMs: 50 } } },
    ),
  ],
  migrations: [
    {
      name: 'quorum_001',
      up: (knex) => knex.schema.createTable('quorum_notes', (t) => t.integer('n').notNullable()),
      down: (knex) => knex.schema.dropTable('quorum_notes'),
    },
  ],
});

let env: TestEnv;
/** The database `dw migrate` runs on (it applies the bundled example app's migrations). */
let cliDatabase: TestEnv;
let connection: ChannelModel;
const queue = () => workQueueName(env.config.exchange, app.name);

beforeAll(async () => {
  env = await createTestEnv(app.migrations);
  // This file is about the default: no DW_QUEUE_TYPE (the test support pins classic otherwise).
  env.config.queueType = undefined;
  cliDatabase = await createTestEnv();
  cliDatabase.config.queueType = undefined;
  connection = await amqp.connect(urls.amqp);
  // Any write to the classic queues' crash-loop accounting fails: quorum queues must not need it.
  await env.knex.raw(`
    create function dw_test_no_delivery_counts() returns trigger language plpgsql as $$
      begin raise exception 'dw_delivery_counts written on a quorum queue'; end $$`);
  await env.knex.raw(`
    create trigger no_delivery_counts before insert or update on dw_delivery_counts
      for each row execute function dw_test_no_delivery_counts()`);
});

afterAll(async () => {
  await connection?.close();
  await cliDatabase?.teardown();
  await env?.teardown();
});

/** What RabbitMQ says about a queue: its type and arguments (rabbitmqctl, as an operator would look). */
async function describeQueue(name: string): Promise<{ type: string; arguments: Record<string, unknown> }> {
  const { stdout } = await run('rabbitmqctl', [
    'list_queues',
    '-q',
    '--formatter',
    'json',
    'name',
    'type',
    'arguments',
  ]);
  const rows = JSON.parse(stdout) as Array<{
    name: string;
    type: string;
    arguments: [string, string, unknown][];
  }>;
  const row = rows.find((r) => r.name === name);
  if (!row) throw new Error(`no queue ${name}`);
  return { type: row.type, arguments: Object.fromEntries(row.arguments.map(([k, , v]) => [k, v])) };
}

/** Runs `fn` on a channel of its own (a refused declaration closes it). */
async function onChannel<T>(fn: (channel: amqp.Channel) => Promise<T>): Promise<T> {
  const channel = await connection.createChannel();
  channel.on('error', () => {});
  try {
    return await fn(channel);
  } finally {
    await channel.close().catch(() => {});
  }
}

/** The CLI on this file's exchange and queues, with a database of its own. */
const dwEnv = (extra: Record<string, string> = {}) =>
  cliEnv({ ...env.config, databaseUrl: cliDatabase.config.databaseUrl }, extra);

async function deleteQueues(...names: string[]): Promise<void> {
  for (const name of names) await onChannel((channel) => channel.deleteQueue(name));
}

describe('quorum queues', () => {
  it('are what a new installation gets: the work queue with its delivery limit, retry queues dead-lettering at least once', async () => {
    failOnce = new Set([1]);
    const worker = await Worker.start({ app, config: env.config, knex: env.knex, housekeepingIntervalMs: 0 });
    try {
      await publishRaw(env.config.exchange, [
        { routingKey: 'Note', body: { n: 1 }, properties: { messageId: 'retried', type: 'Note' } },
      ]);
      await waitUntil(
        async () => (await count(env.knex, 'quorum_notes', { n: 1 })) === 1,
        'the retried note',
      );
    } finally {
      await worker.stop(5000);
    }
    expect(await describeQueue(queue())).toEqual({
      type: 'quorum',
      arguments: {
        'x-queue-type': 'quorum',
        'x-delivery-limit': queueDefaults.quorumDeliveryLimit,
        'x-dead-letter-exchange': '',
        'x-dead-letter-routing-key': deliveryLimitQueueName(queue()),
        'x-dead-letter-strategy': 'at-least-once',
        'x-overflow': 'reject-publish',
      },
    });
    expect(await describeQueue(deliveryLimitQueueName(queue()))).toEqual({
      type: 'quorum',
      arguments: { 'x-queue-type': 'quorum' },
    });
    expect(await describeQueue(retryQueueName(queue(), 50))).toEqual({
      type: 'quorum',
      arguments: {
        'x-queue-type': 'quorum',
        'x-dead-letter-exchange': '',
        'x-dead-letter-routing-key': queue(),
        'x-dead-letter-strategy': 'at-least-once',
        'x-overflow': 'reject-publish',
      },
    });
    // The delivery limit is far above the crash-loop guard's, so the guard acts first.
    expect(queueDefaults.quorumDeliveryLimit).toBeGreaterThan(workerDefaults.maxDeliveries + 10);
  });

  it('dead-letters a crash loop by the broker delivery count, without writing dw_delivery_counts', async () => {
    const name = queue();
    const maxDeliveries = 3;
    // The worker holding the message dies (its channel closes without an ack) `deaths` times.
    const die = async (messageId: string, deaths: number) => {
      for (let i = 0; i < deaths; i++) {
        await onChannel(async (channel) => {
          const msg = await channel.get(name, { noAck: false });
          expect(msg ? msg.properties.messageId : undefined).toBe(messageId);
        });
      }
    };
    // The first delivery and maxDeliveries - 1 redeliveries died: one fewer than poison.
    await publishRaw(env.config.exchange, [
      { routingKey: 'Note', body: { n: 2 }, properties: { messageId: 'survivor', type: 'Note' } },
    ]);
    await die('survivor', maxDeliveries);
    const survivor = await takeMessage(name, 'survivor');
    expect(survivor.redelivered).toBe(true);
    expect(Number(survivor.headers['x-delivery-count'])).toBe(maxDeliveries);
    expect(await processorFor(maxDeliveries).process(survivor)).toBe('handled');

    // One more: maxDeliveries redeliveries died, the next one is recognised.
    await publishRaw(env.config.exchange, [
      { routingKey: 'Note', body: { n: 3 }, properties: { messageId: 'killer', type: 'Note' } },
    ]);
    await die('killer', maxDeliveries + 1);
    const killer = await takeMessage(name, 'killer');
    expect(Number(killer.headers['x-delivery-count'])).toBe(maxDeliveries + 1);
    expect(await processorFor(maxDeliveries).process(killer)).toBe('dead-lettered');
    const entry = await env.knex('dw_dead_letters').where({ message_id: 'killer' }).first();
    expect(entry.reason).toBe('handler-failed');
    expect(entry.error).toMatchObject({ name: 'PoisonMessageError', code: 'DW_POISON_MESSAGE' });
    expect(entry.error.message).toMatch(/^poison message: 3 redeliveries started handling .*limit 3/);
    expect(await count(env.knex, 'quorum_notes', { n: 2 })).toBe(1);
    expect(await count(env.knex, 'quorum_notes', { n: 3 })).toBe(0);
    // The trigger refused every write: none was tried.
    expect(await count(env.knex, 'dw_delivery_counts')).toBe(0);
  });

  it('a message at the broker delivery limit is parked in <queue>.delivery-limit, never dropped', async () => {
    const name = `${env.config.exchange}.limit`;
    try {
      await onChannel((channel) => declareConsumedQueue(channel, name, 'quorum', { explicit: true }));
      await onChannel(async (channel) => {
        channel.sendToQueue(name, Buffer.from('{}'), { messageId: 'limited', persistent: true });
      });
      // Returned unacked until the broker's limit is passed (no crash-loop guard here).
      for (let returns = 0; returns <= queueDefaults.quorumDeliveryLimit; returns++) {
        await onChannel(async (channel) => {
          const msg = await channel.get(name, { noAck: false });
          expect(msg ? msg.properties.messageId : undefined).toBe('limited');
        });
      }
      const parked = await waitUntil(
        () =>
          onChannel(
            async (channel) =>
              (await channel.get(deliveryLimitQueueName(name), { noAck: true })) || undefined,
          ),
        'the message in the delivery-limit queue',
      );
      expect(parked.properties.messageId).toBe('limited');
      expect((await onChannel((channel) => channel.checkQueue(name))).messageCount).toBe(0);
    } finally {
      await deleteQueues(name, deliveryLimitQueueName(name));
    }
  });

  it('ignores a delivery count a publisher sets on a first delivery', async () => {
    const worker = await Worker.start({ app, config: env.config, knex: env.knex, housekeepingIntervalMs: 0 });
    try {
      await publishRaw(env.config.exchange, [
        {
          routingKey: 'Note',
          body: { n: 4 },
          properties: { messageId: 'forged', type: 'Note', headers: { 'x-delivery-count': 1_000_000 } },
        },
      ]);
      await waitUntil(async () => (await count(env.knex, 'quorum_notes', { n: 4 })) === 1, 'the note');
    } finally {
      await worker.stop(5000);
    }
    expect(await count(env.knex, 'dw_dead_letters', { message_id: 'forged' })).toBe(0);
  });

  it('a retry copy survives its work queue being gone when it expires (at-least-once dead-lettering)', async () => {
    const workQueue = `${env.config.exchange}.survive`;
    const retryQueue = retryQueueName(workQueue, 100);
    // RabbitMQ retries an unconfirmed at-least-once dead-lettering after this timeout (180 s by
    // default); shortened while this test's retry queue is declared, then restored.
    const confirmTimeout = (ms: number) =>
      run('rabbitmqctl', [
        'eval',
        `application:set_env(rabbit, dead_letter_worker_publisher_confirm_timeout, ${ms}).`,
      ]);
    const amqpConnection = new ResilientAmqpConnection(urls.amqp);
    await amqpConnection.start();
    try {
      await confirmTimeout(1000);
      const retries = new RetryQueues(amqpConnection, workQueue, {
        requested: 'quorum',
        workQueue: 'quorum',
      });
      await retries.schedule(100, 100, Buffer.from('{"n":5}'), { messageId: 'copy', type: 'Note' });
      await waitUntil(
        async () => (await onChannel((channel) => channel.checkQueue(retryQueue))).messageCount === 0,
        'the copy to expire (with nowhere to go)',
      );
      await onChannel((channel) => channel.assertQueue(workQueue, consumedQueueOptions('quorum', workQueue)));
      const got = await waitUntil(
        () => onChannel(async (channel) => (await channel.get(workQueue, { noAck: true })) || undefined),
        'the copy to reach the work queue once it exists',
        { timeoutMs: 30_000 },
      );
      expect(got.properties.messageId).toBe('copy');
      expect(got.content.toString()).toBe('{"n":5}');
    } finally {
      await confirmTimeout(180_000);
      await amqpConnection.close();
      await deleteQueues(workQueue, retryQueue);
    }
  });
});

describe('a queue of the other type', () => {
  it('an existing classic queue is kept when no type is asked for, and refused when quorum is', async () => {
    const name = queue();
    const exampleQueue = `${env.config.exchange}.example`;
    // Partition queues of keyed messages follow the work queue's type when they are created: the
    // earlier tests left them quorum.
    const partitions = [name, exampleQueue].flatMap((q) =>
      Array.from({ length: workerDefaults.orderedPartitions }, (_, i) => partitionQueueName(q, i)),
    );
    await deleteQueues(name, exampleQueue, ...partitions, ...partitions.map(deliveryLimitQueueName));
    // As an installation made before quorum queues were the default declared them.
    for (const classic of [name, exampleQueue]) {
      await onChannel((channel) => channel.assertQueue(classic, { durable: true }));
    }
    const retryQueue = retryQueueName(name, 50);
    await deleteQueues(retryQueue);
    await onChannel((channel) =>
      channel.assertQueue(retryQueue, {
        durable: true,
        arguments: { 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': name },
      }),
    );
    await expect(
      Worker.start({ app, config: { ...env.config, queueType: 'quorum' }, knex: env.knex }),
    ).rejects.toSatisfy((error: unknown) => {
      expect(error).toBeInstanceOf(QueueTypeMismatchError);
      const mismatch = error as QueueTypeMismatchError;
      expect(mismatch.code).toBe('DW_QUEUE_TYPE_MISMATCH');
      expect(mismatch.message).toContain(`queue ${name} exists as a classic queue`);
      expect(mismatch.message).toContain('asks for a quorum queue');
      expect(mismatch.message).toContain('DW_QUEUE_TYPE=classic');
      expect(mismatch.message).toContain('README');
      return true;
    });

    // Unset: both the work queue and its existing retry queue keep their type; a retry goes through.
    failOnce = new Set([6]);
    const worker = await Worker.start({ app, config: env.config, knex: env.knex, housekeepingIntervalMs: 0 });
    try {
      await publishRaw(env.config.exchange, [
        { routingKey: 'Note', body: { n: 6 }, properties: { messageId: 'classic', type: 'Note' } },
      ]);
      await waitUntil(async () => (await count(env.knex, 'quorum_notes', { n: 6 })) === 1, 'the note');
    } finally {
      await worker.stop(5000);
    }
    expect((await describeQueue(name)).type).toBe('classic');
    expect((await describeQueue(retryQueue)).type).toBe('classic');
    expect(failOnce.size).toBe(0);
    // dw migrate (the bundled example app's queue) keeps it classic as well.
    const migrated = await runCli(['migrate'], dwEnv());
    expect(migrated.stdout).toContain(
      `declared exchange ${env.config.exchange} and queue ${exampleQueue} (classic)`,
    );
    expect((await describeQueue(exampleQueue)).type).toBe('classic');
  });

  it('an existing quorum queue is refused when classic is asked for: exit 1 with one line', async () => {
    const name = `${env.config.exchange}.example`;
    await deleteQueues(name);
    await onChannel((channel) => channel.assertQueue(name, consumedQueueOptions('quorum', name)));
    for (const args of [['migrate', '--queue-type', 'classic'], ['migrate']]) {
      const result = await runCli(args, dwEnv(args.length === 1 ? { DW_QUEUE_TYPE: 'classic' } : {}));
      expect(result.code).toBe(1);
      expect(result.stderr.trim().split('\n')).toHaveLength(1);
      expect(result.stderr).toContain(`queue ${name} exists as a quorum queue`);
      expect(result.stderr).toContain('asks for a classic queue');
      expect(result.stderr).toContain('DW_QUEUE_TYPE=quorum');
    }
    expect((await describeQueue(name)).type).toBe('quorum');
  });

  it('reads the existing type from the broker refusal', () => {
    const refusal = (current: string) =>
      new Error(
        `Operation failed: QueueDeclare; 406 (PRECONDITION-FAILED) with message "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': received the value 'quorum' of type 'longstr' but current is ${current}"`,
      );
    expect(existingQueueType(refusal('none'))).toBe('classic');
    expect(existingQueueType(refusal("'classic'"))).toBe('classic');
    expect(existingQueueType(refusal("the value 'stream' of type 'longstr'"))).toBe('stream');
    expect(existingQueueType(new Error("inequivalent arg 'x-delivery-limit'"))).toBeUndefined();
  });
});

function processorFor(maxDeliveries: number): MessageProcessor {
  return new MessageProcessor({
    app,
    knex: env.knex,
    queue: queue(),
    exchange: env.config.exchange,
    retryQueues: { schedule: async () => {} },
    maxMessageBytes: 10_000,
    maxDeliveries,
    queueType: 'quorum',
    log: silentLogger,
    signal: new AbortController().signal,
  });
}

/** Takes the next message, `messageId`, off the queue (acked: the test stands in for the consumer). */
async function takeMessage(name: string, messageId: string) {
  return onChannel(async (channel) => {
    const msg = await channel.get(name, { noAck: false });
    if (!msg) throw new Error(`${messageId} is not in ${name}`);
    expect(msg.properties.messageId).toBe(messageId);
    channel.ack(msg);
    return readIncoming(msg as unknown as ConsumeMessage);
  });
}
