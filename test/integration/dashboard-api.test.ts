import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { app } from '../../examples/app/index.js';
import { createDashboard, type Dashboard } from '../../index.js';
import { startDashboard } from '../../ops/dashboard/server.js';
import { storeDeadLetter } from '../../shared/dead-letters.js';
import { workQueueName } from '../../shared/defaults.js';
import { UsageError } from '../../shared/errors.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { cliEnv, dwBin, runCli } from '../support/cli.js';
import { count, createTestEnv, type TestEnv } from '../support/services.js';

let env: TestEnv;
let worker: Worker;
let open: Dashboard;
let locked: Dashboard;
let queue: string;
const token = `tok-${randomUUID()}`;

/** A session for the open (loopback, no token) dashboard: its CSRF cookie and token. */
let csrf: string;
const local = { host: '127.0.0.1:3000' };

async function storeInvoiceFailure(invoiceId: string, message: string): Promise<number> {
  const payload = { invoiceId };
  return storeDeadLetter(env.knex, {
    source: 'amqp',
    queue,
    messageId: `m-${invoiceId}`,
    type: 'SendInvoice',
    reason: 'handler-failed',
    error: {
      name: 'InvoiceServiceDownError',
      message,
      stack: `InvoiceServiceDownError: ${message}\n    at send`,
    },
    attempts: 5,
    payload,
    body: Buffer.from(JSON.stringify(payload)),
    headers: { 'x-dw-attempt': 5 },
    properties: { correlationId: `c-${invoiceId}` },
  });
}

function post(dashboard: Dashboard, url: string, payload: unknown, headers: Record<string, string> = {}) {
  return dashboard.server.inject({
    method: 'POST',
    url,
    payload: payload as object,
    headers: { ...local, cookie: `dw_csrf=${csrf}`, 'x-csrf-token': csrf, ...headers },
  });
}

function get(dashboard: Dashboard, url: string, headers: Record<string, string> = {}) {
  return dashboard.server.inject({ method: 'GET', url, headers: { ...local, ...headers } });
}

beforeAll(async () => {
  env = await createTestEnv(app.migrations);
  queue = workQueueName(env.config.exchange, app.name);
  worker = await Worker.start({ app, config: env.config, knex: env.knex, housekeepingIntervalMs: 0 });
  open = await createDashboard({ config: env.config, app, knex: env.knex });
  locked = await createDashboard({ config: env.config, app, knex: env.knex, token, tokenUser: 'alice' });
  const session = await get(open, '/api/session');
  csrf = session.json().csrf;
  expect(session.headers['set-cookie']).toMatch(/^dw_csrf=[0-9a-f]{64}; Path=\/; HttpOnly; SameSite=Strict/);
});

afterAll(async () => {
  await open?.close();
  await locked?.close();
  await worker?.stop(5000);
  await env?.teardown();
});

describe('dw dashboard', () => {
  it('refuses a non-loopback host without DW_DASHBOARD_TOKEN: one line, exit 1', async () => {
    for (const host of ['0.0.0.0', '::', '192.168.1.10']) {
      const result = await runCli(['dashboard', '--host', host, '--port', '0'], cliEnv(env.config));
      expect(result.code, host).toBe(1);
      expect(result.stdout).toBe('');
      expect(result.stderr).toMatch(
        /^dw: refusing to serve the dashboard on .* without DW_DASHBOARD_TOKEN.*\n$/,
      );
    }
    const hostile = await runCli(['dashboard', '--host', 'a b\u001b[31m'], cliEnv(env.config));
    expect(hostile.code).toBe(1);
    expect(hostile.stderr.split('\n')).toHaveLength(2);
    expect(hostile.stderr).not.toContain('\u001b');
  });

  it('serves over real HTTP with the token on any host, and stops on SIGTERM', async () => {
    const child = spawn(process.execPath, [dwBin, 'dashboard', '--host', '0.0.0.0', '--port', '0'], {
      env: cliEnv(env.config, { DW_DASHBOARD_TOKEN: token }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    try {
      const url = await waitUntil(
        () => /dashboard on (http:\/\/\S+\/)/.exec(stdout)?.[1],
        'the dashboard URL',
      );
      const base = url.replace('0.0.0.0', '127.0.0.1');
      expect((await fetch(`${base}api/session`)).status).toBe(401);
      const ok = await fetch(`${base}api/session`, { headers: { authorization: `Bearer ${token}` } });
      expect(ok.status).toBe(200);
      expect(ok.headers.get('content-security-policy')).toContain("default-src 'self'");
      expect(stdout).toContain('(token required)');
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  });
});

describe('dashboard security', () => {
  it('refuses to bind a non-loopback host without a token, before opening anything', async () => {
    await expect(startDashboard({ config: env.config, host: '0.0.0.0', port: 0 })).rejects.toThrow(
      UsageError,
    );
    await expect(startDashboard({ config: env.config, host: '0.0.0.0', port: 0 })).rejects.toThrow(
      /refusing to serve the dashboard on 0\.0\.0\.0 without DW_DASHBOARD_TOKEN/,
    );
  });

  it('without a token answers only requests addressed to localhost (no DNS rebinding)', async () => {
    expect((await get(open, '/api/session', { host: 'evil.example:3000' })).statusCode).toBe(403);
    expect((await get(open, '/api/session', { host: 'localhost:3000' })).statusCode).toBe(200);
    expect((await get(open, '/api/session', { host: '[::1]:3000' })).statusCode).toBe(200);
  });

  it('with a token: bearer header or login cookie, nothing else', async () => {
    expect((await get(locked, '/api/overview')).statusCode).toBe(401);
    expect((await get(locked, '/api/overview', { authorization: 'Bearer wrong' })).statusCode).toBe(401);
    expect((await get(locked, '/api/overview', { authorization: `Bearer ${token}x` })).statusCode).toBe(401);
    expect((await get(locked, '/api/dead-letters', { authorization: `Bearer ${token}` })).statusCode).toBe(
      200,
    );
    expect((await get(locked, '/queues/')).statusCode).toBe(401);
    const page = await get(locked, '/');
    expect(page.statusCode).toBe(303);
    expect(page.headers.location).toBe('/login');

    const login = await get(locked, '/login');
    const loginCsrf = /dw_csrf=([0-9a-f]{64})/.exec(String(login.headers['set-cookie']))?.[1] as string;
    expect(login.body).toContain(`value="${loginCsrf}"`);
    const form = (t: string, c: string) =>
      locked.server.inject({
        method: 'POST',
        url: '/login',
        headers: { 'content-type': 'application/x-www-form-urlencoded', cookie: `dw_csrf=${loginCsrf}` },
        payload: new URLSearchParams({ token: t, csrf: c }).toString(),
      });
    expect((await form('wrong', loginCsrf)).statusCode).toBe(401);
    expect((await form(token, 'f'.repeat(64))).statusCode).toBe(403);
    const ok = await form(token, loginCsrf);
    expect(ok.statusCode).toBe(303);
    const sessionCookie = String(ok.headers['set-cookie']);
    expect(sessionCookie).toMatch(/^dw_session=[0-9a-f]{64}; Path=\/; HttpOnly; SameSite=Strict/);
    expect(sessionCookie).not.toContain(token);
    const cookie = sessionCookie.split(';')[0] as string;
    const me = await get(locked, '/api/session', { cookie });
    expect(me.statusCode).toBe(200);
    expect(me.json().actor).toMatch(/^alice /);
  });

  it('every POST needs the CSRF token, in the header, matching the cookie', async () => {
    const body = { selection: { ids: [1] }, dryRun: true };
    const bare = await open.server.inject({
      method: 'POST',
      url: '/api/dead-letters/replay',
      payload: body,
      headers: local,
    });
    expect(bare.statusCode).toBe(403);
    expect(bare.json().error).toMatch(/CSRF/);
    expect(
      (await post(open, '/api/dead-letters/replay', body, { 'x-csrf-token': 'a'.repeat(64) })).statusCode,
    ).toBe(403);
    expect((await post(open, '/api/dead-letters/purge', body, { 'x-csrf-token': '' })).statusCode).toBe(403);
    expect((await post(open, '/api/dead-letters/replay', body)).statusCode).toBe(200);
    // bearer clients too
    const bearer = await locked.server.inject({
      method: 'POST',
      url: '/api/dead-letters/replay',
      payload: body,
      headers: { authorization: `Bearer ${token}` },
    });
    expect(bearer.statusCode).toBe(403);
    // the queue board is read-only
    expect((await post(open, '/queues/api/queues/dw-sagas/retry/failed', {})).statusCode).toBe(403);
  });

  it('serves pages with a CSP that forbids inline scripts, and the script as a file', async () => {
    const page = await get(open, '/');
    expect(page.statusCode).toBe(200);
    expect(page.headers['content-security-policy']).toContain("default-src 'self'");
    expect(page.headers['content-security-policy']).toContain("script-src 'self'");
    expect(page.headers['content-security-policy']).not.toContain('unsafe-inline');
    expect(page.body).toContain('<script type="module" src="assets/app.js"></script>');
    expect(page.body).not.toMatch(/<script>[^<]/);
    const js = await get(open, '/assets/app.js');
    expect(js.headers['content-type']).toMatch(/javascript/);
    expect(js.body).not.toContain('innerHTML');
  });

  it('validates every input with one-line errors and no stack traces', async () => {
    for (const url of [
      '/api/dead-letters?reason=nope',
      '/api/dead-letters?limit=abc',
      '/api/dead-letters?limit=100000',
      '/api/dead-letters?unknown=1',
      '/api/dead-letters?from=yesterday',
      `/api/dead-letters?text=${encodeURIComponent('a\u0000b')}`,
      '/api/dead-letters?group=../../etc',
      '/api/dead-letters/abc',
      '/api/dead-letters/0',
      '/api/sagas?status=bogus',
      '/api/sagas?minAgeS=-1',
    ]) {
      const res = await get(open, url);
      expect(res.statusCode, url).toBe(400);
      expect(res.json().error, url).toMatch(/^invalid /);
      expect(res.body, url).not.toMatch(/\n\s+at /);
    }
    for (const body of [
      {},
      { selection: {}, dryRun: true },
      { selection: { ids: ['1'] }, dryRun: true },
      { selection: { ids: [1] }, dryRun: 'yes' },
      { selection: { ids: [1] }, dryRun: true, extra: 1 },
      { selection: { ids: Array.from({ length: 1001 }, (_, i) => i + 1) }, dryRun: true },
      { selection: { filter: { reason: "x' or 1=1 --" } }, dryRun: true },
      { selection: { filter: { type: '\ud800' } }, dryRun: true },
      { selection: { filter: { text: 'a\u0000b' } }, dryRun: true },
    ]) {
      const res = await post(open, '/api/dead-letters/replay', body);
      expect(res.statusCode, JSON.stringify(body).slice(0, 80)).toBe(400);
    }
    const broken = await open.server.inject({
      method: 'POST',
      url: '/api/dead-letters/replay',
      payload: '{"selection":',
      headers: {
        ...local,
        'content-type': 'application/json',
        cookie: `dw_csrf=${csrf}`,
        'x-csrf-token': csrf,
      },
    });
    expect(broken.statusCode).toBe(400);
    expect(broken.body).not.toMatch(/\n\s+at /);
    // filter values are bound, not spliced: a quote is just text
    const quoted = await get(open, `/api/dead-letters?type=${encodeURIComponent("x' or '1'='1")}`);
    expect(quoted.statusCode).toBe(200);
    expect(quoted.json().total).toBe(0);
    expect((await get(open, '/api/dead-letters/999999')).statusCode).toBe(404);
  });
});

describe('dashboard under hostile input', () => {
  it('answers any query string with 200 or 400, never 500 or a stack', async () => {
    for (const raw of [
      'type=%ff%fe',
      'type=%00',
      'text=%ED%A0%80',
      'type=a&type=b',
      'limit=1e3',
      'from=0000-01-01',
      'group=%27',
    ]) {
      const res = await get(open, `/api/dead-letters?${raw}`);
      expect([200, 400], raw).toContain(res.statusCode);
      expect(res.body, raw).not.toMatch(/\n\s+at /);
    }
    const key = fc.constantFrom(
      'type',
      'reason',
      'queue',
      'text',
      'from',
      'to',
      'group',
      'sagaId',
      'limit',
      'offset',
      'x',
    );
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(key, fc.string({ unit: 'binary', maxLength: 60 })), { maxLength: 4 }),
        async (pairs) => {
          const qs = new URLSearchParams(pairs).toString();
          for (const path of ['/api/dead-letters', '/api/dead-letters/groups', '/api/sagas']) {
            const res = await get(open, `${path}?${qs}`);
            expect([200, 400], `${path}?${qs}`).toContain(res.statusCode);
            expect(res.body).not.toMatch(/\n\s+at /);
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  it('answers any JSON body with 400 (or a dry run, or 409 without one), never 500', async () => {
    await fc.assert(
      fc.asyncProperty(fc.jsonValue({ maxDepth: 4 }), async (body) => {
        for (const url of ['/api/dead-letters/replay', '/api/dead-letters/purge']) {
          const res = await post(open, url, JSON.stringify(body), { 'content-type': 'application/json' });
          expect([200, 400, 409], `${url} ${JSON.stringify(body).slice(0, 100)}`).toContain(res.statusCode);
          expect(res.body).not.toMatch(/\n\s+at /);
        }
      }),
      { numRuns: 60 },
    );
  });
});

describe('dashboard dead letters', () => {
  const ids: Record<string, number> = {};

  beforeAll(async () => {
    // One failure with varying ids and numbers, three times; another failure twice.
    ids.a = await storeInvoiceFailure('a1', `invoice "a1" timed out after 3001 ms (request ${randomUUID()})`);
    ids.b = await storeInvoiceFailure('b2', `invoice "b2" timed out after 2999 ms (request ${randomUUID()})`);
    ids.c = await storeInvoiceFailure('c3', `invoice "c3" timed out after 17 ms (request ${randomUUID()})`);
    ids.d = await storeInvoiceFailure('d4', 'invoice 44: the invoicing service is down (host 0x7f3a9c)');
    ids.e = await storeInvoiceFailure('e5', 'invoice 55: the invoicing service is down (host 0x1b)');
  });

  it('groups by type, reason and normalised message, with counts and first/last seen', async () => {
    const res = await get(open, '/api/dead-letters/groups?type=SendInvoice');
    expect(res.statusCode).toBe(200);
    const { groups, total } = res.json();
    expect(total).toBe(2);
    expect(groups[0]).toMatchObject({
      type: 'SendInvoice',
      reason: 'handler-failed',
      count: 3,
      message: 'invoice "…" timed out after <n> ms (request <uuid>)',
      queues: [queue],
    });
    expect(groups[1]).toMatchObject({
      count: 2,
      message: 'invoice <n>: the invoicing service is down (host <id>)',
    });
    expect(Date.parse(groups[0].firstSeen)).toBeLessThanOrEqual(Date.parse(groups[0].lastSeen));
    const members = (await get(open, `/api/dead-letters?group=${groups[0].key}`)).json();
    expect(members.items.map((i: { id: number }) => i.id).sort()).toEqual([ids.a, ids.b, ids.c].sort());
  });

  it('filters by text, reason, queue and time, and pages', async () => {
    const q = async (qs: string) => (await get(open, `/api/dead-letters?${qs}`)).json();
    expect((await q('text=TIMED%20OUT')).total).toBe(3);
    expect((await q('text=send')).total).toBe(5); // in the stack
    expect((await q('reason=invalid-json')).total).toBe(0);
    expect((await q(`queue=${encodeURIComponent(queue)}`)).total).toBe(5);
    expect((await q('from=2999-01-01T00:00Z')).total).toBe(0);
    expect((await q(`to=${encodeURIComponent(new Date(Date.now() + 60_000).toISOString())}`)).total).toBe(5);
    const first = await q('limit=2');
    const third = await q('limit=2&offset=4');
    expect(first).toMatchObject({ total: 5, limit: 2, offset: 0 });
    expect(first.items).toHaveLength(2);
    expect(third.items).toHaveLength(1);
    expect(third.total).toBe(5);
  });

  it('shows one dead letter with payload, headers, properties and error stack', async () => {
    const detail = (await get(open, `/api/dead-letters/${ids.d}`)).json();
    expect(detail).toMatchObject({
      id: ids.d,
      messageId: 'm-d4',
      payload: { invoiceId: 'd4' },
      headers: { 'x-dw-attempt': 5 },
      properties: { correlationId: 'c-d4' },
      attempts: 5,
      history: [],
    });
    expect(detail.error.stack).toContain('at send');
  });

  it('replays only after a dry run, which lists what is in the inbox already; the worker handles the rest', async () => {
    const group = (await get(open, '/api/dead-letters/groups?type=SendInvoice')).json().groups[0].key;
    const selection = { filter: { group } };
    // A real replay without its dry run is refused.
    const blind = await post(open, '/api/dead-letters/replay', { selection, dryRun: false });
    expect(blind.statusCode).toBe(409);
    expect(blind.json().error).toMatch(/dry run first/);
    expect(
      (await post(open, '/api/dead-letters/replay', { selection, dryRun: false, preview: randomUUID() }))
        .statusCode,
    ).toBe(409);
    // c3 was handled meanwhile (its id is in the inbox): the preview says so and it is skipped.
    await env.knex('dw_inbox').insert({ consumer: queue, message_id: 'm-c3' });
    const dry = await post(open, '/api/dead-letters/replay', { selection, dryRun: true });
    expect(dry.statusCode).toBe(200);
    const preview = dry.json();
    expect(preview).toMatchObject({
      dryRun: true,
      matching: 3,
      wouldReplay: 2,
      alreadyProcessed: [ids.c],
      beyondDedupWindow: [],
    });
    expect(await count(env.knex, 'dw_dead_letters')).toBe(5); // a dry run changes nothing
    const real = await post(open, '/api/dead-letters/replay', {
      selection,
      dryRun: false,
      preview: preview.preview,
    });
    expect(real.statusCode).toBe(200);
    expect(real.json()).toMatchObject({ dryRun: false, replayed: 2, alreadyProcessed: [ids.c] });
    await waitUntil(
      async () => (await count(env.knex, 'invoices_sent')) === 2,
      'the replayed invoices handled',
    );
    expect(
      (await env.knex('invoices_sent').select('invoice_id').orderBy('invoice_id')).map((r) => r.invoice_id),
    ).toEqual(['a1', 'b2']);
    // the preview is spent
    expect(
      (await post(open, '/api/dead-letters/replay', { selection, dryRun: false, preview: preview.preview }))
        .statusCode,
    ).toBe(409);
    // recorded, and shown in the entry's history
    const auditLog = (await get(open, '/api/audit')).json();
    expect(auditLog.items[0]).toMatchObject({
      action: 'replay',
      actor: expect.stringMatching(/^local /),
      selection,
    });
    expect(auditLog.items[0].preview).toMatchObject({ wouldReplay: 2 });
    expect(auditLog.items[0].entries).toEqual(
      expect.arrayContaining([
        { id: ids.a, messageId: 'm-a1', outcome: 'replayed' },
        { id: ids.c, messageId: 'm-c3', outcome: 'already-processed' },
      ]),
    );
    const c = (await get(open, `/api/dead-letters/${ids.c}`)).json();
    expect(c.history[0]).toMatchObject({ action: 'replay' });
  });

  it('purges with a typed confirmation of the previewed count, and records it', async () => {
    const selection = { ids: [ids.d, ids.e] };
    const dry = (await post(open, '/api/dead-letters/purge', { selection, dryRun: true })).json();
    expect(dry).toMatchObject({ wouldPurge: 2, confirm: 'purge 2' });
    const wrong = await post(open, '/api/dead-letters/purge', {
      selection,
      dryRun: false,
      preview: dry.preview,
      confirm: 'yes',
    });
    expect(wrong.statusCode).toBe(400);
    expect(wrong.json().error).toContain('type "purge 2"');
    expect(await count(env.knex, 'dw_dead_letters')).toBe(3);
    const done = await post(open, '/api/dead-letters/purge', {
      selection,
      dryRun: false,
      preview: dry.preview,
      confirm: 'purge 2',
    });
    expect(done.json()).toMatchObject({ purged: 2 });
    expect(await count(env.knex, 'dw_dead_letters')).toBe(1);
    const last = (await get(open, '/api/audit?limit=1')).json().items[0];
    expect(last).toMatchObject({ action: 'purge', result: { purged: 2 } });
    expect(last.entries.map((e: { messageId: string }) => e.messageId).sort()).toEqual(['m-d4', 'm-e5']);
  });

  it('the overview shows the pipeline, including the worker from its heartbeat', async () => {
    const o = (await get(open, '/api/overview')).json();
    expect(o.errors).toEqual([]);
    expect(o.outbox).toMatchObject({ pending: expect.any(Number) });
    expect(o.deadLetters).toMatchObject({ total: 1, byReason: { 'handler-failed': 1 } });
    expect(o.processes).toEqual(
      expect.arrayContaining([expect.objectContaining({ kind: 'worker', pid: process.pid, alive: true })]),
    );
    expect(o.queues.rabbitmq.map((q: { name: string }) => q.name)).toContain(queue);
    expect(o.queues.bullmq.map((q: { name: string }) => q.name)).toContain('dw-sagas');
    // a process that stopped beating 31 s ago is shown as gone
    await env.knex('dw_processes').insert({
      id: 'crashed',
      kind: 'relay',
      host: 'h',
      pid: 1,
      version: '0',
      started_at: new Date(Date.now() - 60_000),
      last_seen_at: env.knex.raw("now() - interval '31 seconds'"),
    });
    const again = (await get(open, '/api/overview')).json();
    expect(again.processes).toEqual(
      expect.arrayContaining([expect.objectContaining({ id: 'crashed', alive: false })]),
    );
    const board = await get(open, '/queues/api/queues');
    expect(board.statusCode).toBe(200);
    expect(board.body).toContain('dw-sagas');
  });
});
