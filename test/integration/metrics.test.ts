import { randomUUID } from 'node:crypto';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { exampleMigrations } from '../../examples/app/migrations.js';
import { Relay } from '../../relay/relay.js';
import { defineApp, defineHandler } from '../../shared/app.js';
import { workQueueName } from '../../shared/defaults.js';
import { silentLogger } from '../../shared/logger.js';
import { startHealthServer } from '../../shared/process-lifecycle.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { sagaFinished, sequential } from '../support/saga-app.js';
import { count, createTestEnv, type TestEnv } from '../support/services.js';

const app = defineApp({
  // `test`: the test env's teardown deletes this work queue and its retry queues.
  name: 'test',
  handlers: [
    defineHandler('Ping', z.object({ n: z.number() }), async (message, ctx) => {
      ctx.send('metrics_out', 'Pong', message);
    }),
    defineHandler(
      'Fail',
      z.object({}),
      async () => {
        throw new Error('fails every time, on purpose');
      },
      { retry: { immediateRetries: 1, delayed: { count: 1, initialMs: 1000, jitter: 0 } } },
    ),
    defineHandler('StartSequential', z.object({ id: z.string() }), async (message, ctx) => {
      await ctx.startSaga(sequential, {}, { id: message.id });
    }),
  ],
  sagas: [sequential],
});

let env: TestEnv;
let worker: Worker;
let relay: Relay;
let server: Server;

beforeAll(async () => {
  env = await createTestEnv(exampleMigrations);
  worker = await Worker.start({ app, config: env.config, sagaSweepIntervalMs: 0 });
  relay = await Relay.start({ config: env.config });
  server = await startHealthServer(worker, 0, silentLogger);
});

afterAll(async () => {
  await new Promise((resolve) => server?.close(resolve));
  await relay?.stop();
  await worker?.stop();
  await env?.teardown();
});

type Sample = { name: string; labels: Record<string, string>; value: number };

function parse(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match) continue;
    const labels: Record<string, string> = {};
    for (const l of (match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    samples.push({ name: match[1]!, labels, value: Number(match[3]) });
  }
  return samples;
}

function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  return samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    ?.value;
}

async function scrape(): Promise<Sample[]> {
  const response = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`);
  expect(response.status).toBe(200);
  return parse(await response.text());
}

describe('/metrics', () => {
  it('serves each metric with sane values after a known load', async () => {
    const queue = workQueueName(env.config.exchange, app.name);
    const sagaId = randomUUID();
    const published = Math.floor(Date.now() / 1000);
    await publishRaw(env.config.exchange, [
      ...[1, 2, 3, 4, 5].map((n) => ({
        routingKey: 'Ping',
        body: { n },
        properties: { messageId: randomUUID(), type: 'Ping', timestamp: published },
      })),
      { routingKey: 'Fail', body: {}, properties: { messageId: randomUUID(), type: 'Fail' } },
      { routingKey: 'Ping', body: 'not json', properties: { messageId: randomUUID(), type: 'Ping' } },
      {
        routingKey: 'StartSequential',
        body: { id: sagaId },
        properties: { messageId: randomUUID(), type: 'StartSequential' },
      },
    ]);
    expect((await sagaFinished(env.knex, sagaId)).status).toBe('completed');
    await waitUntil(
      async () => (await count(env.knex, 'dw_dead_letters')) === 2 || undefined,
      'two dead letters',
    );
    await waitUntil(
      async () => (await count(env.knex, 'dw_outbox', { delivered_at: null })) === 0 || undefined,
      'the relay to drain the outbox',
    );
    // One row the relay cannot take yet (held back for an hour), written two minutes ago: the lag.
    await env.knex.raw(
      `insert into dw_outbox (message_id, destination_kind, destination, routing_key, type, payload, headers,
         created_at, available_at)
       values (?, 'amqp', 'elsewhere', 'X', 'X', '{}', '{}', now() - interval '120 seconds', now() + interval '1 hour')`,
      [randomUUID()],
    );

    const samples = await scrape();
    const m = (name: string, labels?: Record<string, string>) => value(samples, name, labels);
    // The message timestamp has whole seconds; the load took far less than 10 minutes.
    expect(m('dw_message_critical_time_seconds_count', { type: 'Ping' })).toBe(5);
    const critical = m('dw_message_critical_time_seconds_sum', { type: 'Ping' })!;
    expect(critical).toBeGreaterThanOrEqual(0);
    expect(critical / 5).toBeLessThan(600);
    expect(m('dw_message_processing_seconds_count', { type: 'Ping' })).toBe(5);
    expect(m('dw_message_processing_seconds_count', { type: 'StartSequential' })).toBe(1);
    expect(m('dw_message_processing_seconds_sum', { type: 'Ping' })).toBeGreaterThan(0);

    expect(m('dw_outbox_pending', { kind: 'bullmq' })).toBe(0);
    expect(m('dw_outbox_pending', { kind: 'amqp' })).toBe(1);
    expect(m('dw_outbox_oldest_pending_age_seconds', { kind: 'amqp' })).toBeGreaterThanOrEqual(119);
    expect(m('dw_outbox_oldest_pending_age_seconds', { kind: 'bullmq' })).toBe(0);

    expect(m('dw_dead_letters', { reason: 'handler-failed', type: 'Fail' })).toBe(1);
    expect(m('dw_dead_letters', { reason: 'invalid-json', type: 'Ping' })).toBe(1);
    expect(m('dw_sagas', { name: 'sequential', status: 'completed' })).toBe(1);
    expect(m('dw_work_queue_messages', { queue, state: 'ready' })).toBe(0);
    expect(m('dw_work_queue_messages', { queue, state: 'unacked' })).toBe(0);

    expect(m('dw_retries_total', { tier: 'immediate' })).toBe(1);
    expect(m('dw_retries_total', { tier: '1000ms' })).toBe(1);
    expect(m('dw_relay_batch_size_count')).toBeGreaterThanOrEqual(1);
    // Relayed: 5 Pong jobs and the 4 saga_test_events of the saga's steps, at least.
    expect(m('dw_relay_batch_size_sum')).toBeGreaterThanOrEqual(9);
    expect(m('dw_relay_batch_duration_seconds_count')).toBe(m('dw_relay_batch_size_count'));

    // The existing names are kept.
    expect(m('dw_messages_total', { outcome: 'handled' })).toBe(6);
    expect(m('dw_messages_total', { outcome: 'dead-lettered' })).toBe(2);
    expect(m('dw_handler_duration_seconds_count')).toBe(6);
    expect(m('dw_saga_steps_total', { phase: 'execute', outcome: 'completed' })).toBe(4);
  });
});
