import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import amqp from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitUntil } from '../../shared/wait.js';
import { cliEnv, dwBin, runCli } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/services.js';

const probe = fileURLToPath(new URL('../support/apps/otel-probe.cjs', import.meta.url));

let env: TestEnv;
let receiver: Server;
let endpoint: string;
/** OTLP/HTTP JSON export requests the receiver got. */
const exports: Array<{ path: string; body: OtlpTraces }> = [];

interface OtlpTraces {
  resourceSpans: Array<{
    resource: { attributes: Array<{ key: string; value: { stringValue?: string } }> };
    scopeSpans: Array<{
      spans: Array<{
        traceId: string;
        spanId: string;
        parentSpanId?: string;
        name: string;
        kind: number;
        attributes: Array<{ key: string; value: { stringValue?: string } }>;
      }>;
    }>;
  }>;
}

beforeAll(async () => {
  env = await createTestEnv();
  receiver = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => {
      body += d;
    });
    req.on('end', () => {
      if (req.headers['content-type']?.includes('json'))
        exports.push({ path: req.url ?? '', body: JSON.parse(body) });
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  endpoint = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise((resolve) => receiver?.close(resolve));
  await env?.teardown();
});

/** Runs `dw relay` until it logged that it started, then SIGTERM; its output and the probe's count. */
async function runRelay(extra: Record<string, string>): Promise<{ stdout: string; sdkModules: number }> {
  const child = spawn(process.execPath, ['--require', probe, dwBin, 'relay'], {
    env: cliEnv(env.config, { LOG_LEVEL: 'info', ...extra }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => {
    stdout += d;
  });
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    await waitUntil(() => stdout.includes('"relay started"') || undefined, 'the relay to start').catch(
      (error: Error) => {
        throw new Error(`${error.message}\nstdout: ${stdout}\nstderr: ${stderr}`);
      },
    );
  } finally {
    child.kill('SIGTERM');
  }
  expect(await exited).toBe(0);
  const count = /otel-sdk-modules-loaded=(\d+)/.exec(stderr);
  expect(count, stderr).not.toBeNull();
  return { stdout, sdkModules: Number(count![1]) };
}

describe('OpenTelemetry SDK start-up', () => {
  it('loads nothing of the SDK when no OTEL_* variable asks for traces', async () => {
    const { stdout, sdkModules } = await runRelay({});
    expect(sdkModules).toBe(0);
    expect(stdout).not.toContain('OpenTelemetry SDK started');
  });

  it('starts the SDK when OTEL_EXPORTER_OTLP_ENDPOINT is set, named dw-relay unless OTEL_SERVICE_NAME says otherwise', async () => {
    const started = await runRelay({
      OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    });
    expect(started.sdkModules).toBeGreaterThan(0);
    const line = started.stdout.split('\n').find((l) => l.includes('OpenTelemetry SDK started'));
    expect(JSON.parse(line!)).toMatchObject({ serviceName: 'dw-relay', protocol: 'http/json' });

    const named = await runRelay({ OTEL_TRACES_EXPORTER: 'console', OTEL_SERVICE_NAME: 'my-relay' });
    const namedLine = named.stdout.split('\n').find((l) => l.includes('OpenTelemetry SDK started'));
    expect(JSON.parse(namedLine!)).toMatchObject({ serviceName: 'my-relay', exporter: 'console' });
  });

  it('dw publish exports its producer span over OTLP http/json, a child of TRACEPARENT', async () => {
    const connection = await amqp.connect(env.config.amqpUrl);
    try {
      const channel = await connection.createChannel();
      await channel.assertExchange(env.config.exchange, 'topic', { durable: true });
      const queue = `${env.config.exchange}.probe`;
      await channel.assertQueue(queue, { exclusive: true });
      await channel.bindQueue(queue, env.config.exchange, 'Probe');
      const traceId = randomBytes(16).toString('hex');
      const spanId = randomBytes(8).toString('hex');
      const result = await runCli(
        ['publish', 'Probe', '--data', '{}', '--json'],
        cliEnv(env.config, {
          TRACEPARENT: `00-${traceId}-${spanId}-01`,
          OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
          OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
        }),
      );
      expect(result.code, result.stderr).toBe(0);
      const [published] = JSON.parse(result.stdout).published;
      // The command flushed before it ended: the export arrived already.
      const sent = exports.filter((e) => e.path === '/v1/traces');
      const resource = sent.flatMap((e) => e.body.resourceSpans);
      const spans = resource.flatMap((r) => r.scopeSpans.flatMap((s) => s.spans));
      const span = spans.find((s) => s.traceId === traceId);
      expect(span).toMatchObject({ parentSpanId: spanId, name: `publish ${env.config.exchange}` });
      expect(span!.attributes).toContainEqual({
        key: 'messaging.message.id',
        value: { stringValue: published.id },
      });
      expect(resource[0]!.resource.attributes).toContainEqual({
        key: 'service.name',
        value: { stringValue: 'dw-publish' },
      });
      // The message carries the span's context.
      const message = await waitUntil(
        async () => (await channel.get(queue, { noAck: true })) || undefined,
        'the message',
      );
      expect(String(message.properties.headers?.traceparent)).toBe(`00-${traceId}-${span!.spanId}-01`);
    } finally {
      await connection.close();
    }
  });
});
