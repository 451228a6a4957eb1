import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { app } from '../../examples/app/index.js';
import { type Dashboard, startDashboard } from '../../ops/dashboard/server.js';
import { Relay } from '../../relay/relay.js';
import { storeDeadLetter } from '../../shared/dead-letters.js';
import { workQueueName } from '../../shared/defaults.js';
import { waitUntil } from '../../shared/wait.js';
import { Worker } from '../../worker/worker.js';
import { publishRaw } from '../support/amqp.js';
import { count, createTestEnv, type TestEnv } from '../support/services.js';

/**
 * The dashboard in a real browser: Debian's Chromium (/usr/bin/chromium, installed by .ci/run when
 * missing) driven by playwright-core. A missing browser fails the file: it is part of the suite.
 * With DW_DASHBOARD_SCREENSHOTS=<dir> set, each page is also saved as <dir>/dashboard-<page>.png.
 */
const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const screenshotDir = process.env.DW_DASHBOARD_SCREENSHOTS;

let env: TestEnv;
let worker: Worker;
let relay: Relay;
let dashboard: Dashboard & { url: string };
let browser: Browser;
let page: Page;
let queue: string;
let hostileId: number;
const tripId = randomUUID();

async function shot(name: string): Promise<void> {
  if (!screenshotDir) return;
  mkdirSync(screenshotDir, { recursive: true });
  await page.screenshot({ path: resolve(screenshotDir, `dashboard-${name}.png`), fullPage: true });
}

async function invoiceFailure(invoiceId: string, message: string, extra: Record<string, unknown> = {}) {
  const payload = { invoiceId, ...extra };
  return storeDeadLetter(env.knex, {
    source: 'amqp',
    queue,
    messageId: `m-${invoiceId}`,
    type: 'SendInvoice',
    reason: 'handler-failed',
    error: {
      name: 'InvoiceServiceDownError',
      message,
      stack: `InvoiceServiceDownError: ${message}\n    at sendInvoice (send-invoice.ts:29)`,
    },
    attempts: 5,
    payload,
    body: Buffer.from(JSON.stringify(payload)),
    headers: { 'x-dw-attempt': 5 },
    properties: { correlationId: `c-${invoiceId}` },
  });
}

beforeAll(async () => {
  env = await createTestEnv(app.migrations);
  queue = workQueueName(env.config.exchange, app.name);
  worker = await Worker.start({ app, config: env.config, knex: env.knex, housekeepingIntervalMs: 0 });
  relay = await Relay.start({ config: env.config, knex: env.knex });
  for (const n of [101, 202, 303]) {
    await invoiceFailure(`inv-${n}`, `invoice inv-${n}: the invoicing service timed out after ${n * 7} ms`);
  }
  await storeDeadLetter(env.knex, {
    source: 'amqp',
    queue,
    messageId: 'm-bad-json',
    type: 'JoinMeeting',
    reason: 'invalid-json',
    error: { message: 'Unexpected token o in JSON at position 1' },
    attempts: 1,
    body: Buffer.from('not json'),
  });
  hostileId = await invoiceFailure('hostile', 'invoice <img src=x onerror="window.__pwned=2">: <b>down</b>', {
    note: '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=3">',
  });
  await publishRaw(env.config.exchange, [
    {
      routingKey: 'BookTrip',
      body: { tripId, customerId: 'c-42', amount: 120, failAt: 'book-hotel', failTimes: 1 },
      properties: { messageId: `trip-${tripId}`, correlationId: `corr-${tripId}` },
    },
  ]);
  await waitUntil(
    async () => (await env.knex('dw_sagas').where({ id: tripId }).first('status'))?.status === 'completed',
    'the BookTrip saga completed',
    { timeoutMs: 60_000 },
  );
  dashboard = await startDashboard({ config: env.config, app, knex: env.knex, host: '127.0.0.1', port: 0 });
  // Fails, not skips, when Chromium is missing: CI installs it.
  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
});

afterAll(async () => {
  await browser?.close();
  await dashboard?.close();
  await relay?.stop(5000);
  await worker?.stop(5000);
  await env?.teardown();
});

describe('dashboard in Chromium', () => {
  it('loads the overview, refreshing, with the live worker and relay', async () => {
    await page.goto(dashboard.url);
    await page.getByRole('heading', { name: /Overview/ }).waitFor();
    await page.getByTestId('process').first().waitFor();
    const kinds = await page.getByTestId('process').allTextContents();
    expect(kinds.some((t) => t.startsWith('worker') && t.includes('alive'))).toBe(true);
    expect(kinds.some((t) => t.startsWith('relay') && t.includes('alive'))).toBe(true);
    await expect.poll(() => page.getByTestId('dead-letters').textContent()).toContain('handler-failed');
    // it refreshes on its own: a new dead letter shows without a reload
    const before = await page.getByTestId('dead-letters').locator('.big').textContent();
    await invoiceFailure('inv-404', 'invoice inv-404: the invoicing service timed out after 2828 ms');
    await expect
      .poll(() => page.getByTestId('dead-letters').locator('.big').textContent(), { timeout: 20_000 })
      .toBe(String(Number(before) + 1));
    await shot('overview');
  });

  it('filters the dead letters, opens a group, dry-runs and replays it; the worker handles them', async () => {
    await page.goto(`${dashboard.url}#/dead-letters`);
    await page.getByTestId('group-row').first().waitFor();
    expect(await page.getByTestId('group-row').count()).toBe(3);
    await shot('dead-letters');
    await page.locator('input[name="text"]').fill('timed out');
    await page.getByTestId('dl-apply').click();
    await expect.poll(() => page.getByTestId('group-row').count()).toBe(1);
    const group = page.getByTestId('group-row').first();
    expect(await group.locator('td').first().textContent()).toBe('4');
    expect(await group.textContent()).toContain(
      'invoice inv-<n>: the invoicing service timed out after <n> ms',
    );
    await group.getByTestId('open-group').click();
    await expect.poll(() => page.getByTestId('dl-row').count()).toBe(4);
    await page.getByTestId('replay-all').click();
    const preview = page.getByTestId('replay-preview');
    await preview.waitFor();
    expect(await page.getByTestId('would-replay').textContent()).toBe('Dry run: 4 would be replayed');
    await shot('replay-preview');
    expect(await count(env.knex, 'invoices_sent')).toBe(0);
    await page.getByTestId('confirm-replay').click();
    await expect.poll(() => page.getByTestId('replay-result').textContent()).toContain('Replayed 4');
    await waitUntil(
      async () => (await count(env.knex, 'invoices_sent')) === 4,
      'the four replayed invoices handled',
    );
    // and the group is empty now
    await page.reload();
    await expect.poll(() => page.getByTestId('page').textContent()).toBe('page 1 of 1 (0 in all)');
    expect(await page.getByTestId('dl-row').count()).toBe(0);
    // the audit shows it
    await page.goto(`${dashboard.url}#/audit`);
    await page.getByTestId('audit-row').first().waitFor();
    expect(await page.getByTestId('audit-row').first().textContent()).toMatch(/local .*replay.*replayed/);
    await shot('audit');
  });

  it("opens a saga's timeline", async () => {
    await page.goto(`${dashboard.url}#/sagas`);
    await page.getByTestId('saga-row').first().waitFor();
    await shot('sagas');
    await page.getByRole('link', { name: tripId }).click();
    await page.getByTestId('timeline').waitFor();
    const steps = await page.getByTestId('timeline-step').allTextContents();
    expect(steps.length).toBeGreaterThanOrEqual(4);
    expect(steps.find((s) => s.includes('book-hotel'))).toMatch(/completed.*2 attempts/);
    expect(await page.textContent('main')).toContain(`corr-${tripId}`);
    await shot('saga');
  });

  it('renders a hostile payload as text, never as markup', async () => {
    await page.goto(`${dashboard.url}#/dead-letters/${hostileId}`);
    const payload = page.getByTestId('payload');
    await payload.waitFor();
    expect(await payload.textContent()).toContain(
      '<script>window.__pwned=1</script><img src=x onerror=\\"window.__pwned=3\\">',
    );
    expect(await page.getByTestId('error-text').textContent()).toContain(
      'invoice <img src=x onerror="window.__pwned=2">: <b>down</b>',
    );
    expect(await page.locator('main img').count()).toBe(0);
    expect(await page.locator('main script').count()).toBe(0);
    expect(await page.locator('main b').count()).toBe(0);
    await shot('dead-letter');
    // and in the list
    await page.goto(`${dashboard.url}#/dead-letters?view=list`);
    await page.getByTestId('dl-row').first().waitFor();
    expect(await page.getByTestId('dl-list').textContent()).toContain(
      '<img src=x onerror="window.__pwned=2">',
    );
    expect(await page.locator('main img').count()).toBe(0);
    expect(await page.evaluate(() => (globalThis as { __pwned?: unknown }).__pwned)).toBeUndefined();
  });

  it('with a token, shows only the login form until the right token is given', async () => {
    const token = randomUUID();
    const locked = await startDashboard({
      config: env.config,
      app,
      knex: env.knex,
      host: '127.0.0.1',
      port: 0,
      token,
    });
    const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
    try {
      const tab = await context.newPage();
      await tab.goto(locked.url);
      expect(new URL(tab.url()).pathname).toBe('/login');
      expect(await tab.locator('main').count()).toBe(0);
      await tab.locator('input[name="token"]').fill('wrong');
      await tab.getByRole('button', { name: 'Log in' }).click();
      await tab.getByText('Wrong token.').waitFor();
      expect((await tab.request.get(`${locked.url}api/dead-letters`)).status()).toBe(401);
      await tab.locator('input[name="token"]').fill(token);
      await tab.getByRole('button', { name: 'Log in' }).click();
      await tab.getByRole('heading', { name: /Overview/ }).waitFor();
      const cookies = await context.cookies();
      const session = cookies.find((c) => c.name === 'dw_session');
      expect(session).toMatchObject({ httpOnly: true, sameSite: 'Strict' });
      expect(session?.value).not.toContain(token);
      expect(await tab.evaluate('document.cookie')).toBe(''); // HttpOnly: no script sees them
    } finally {
      await context.close();
      await locked.close();
    }
  });

  it('shows the BullMQ queues through bull-board', async () => {
    await page.goto(`${dashboard.url}queues/`);
    await page.getByText('dw-sagas').first().waitFor({ timeout: 20_000 });
    await shot('queues');
  });
});
