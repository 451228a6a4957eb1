import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { storeDeadLetter } from '../../shared/dead-letters.js';
import { insertSaga, recordStepFailure, transitionSaga } from '../../shared/saga/store.js';
import { cliEnv, runCli } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/services.js';

/**
 * Ids, types, errors and payloads come from whoever published the message. The text output of the
 * CLI shows their control characters as escapes instead of handing them to the terminal.
 */
let env: TestEnv;
let entryId: number;
const run = (...args: string[]) => runCli(args, cliEnv(env.config));

// Clear screen, carriage return, a recolouring SGR, an OSC title change, and a right-to-left override.
const CLEAR = '\x1b[2J';
const hostile = `ok${CLEAR}\rFAKE\x1b[31m\x1b]0;owned\x07\u202eevil`;
// What a terminal would obey: C0/C1 controls other than newline, and bidi controls.
// biome-ignore lint/suspicious/noControlCharactersInRegex: finding controls is the point
const terminalControl = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/;

beforeAll(async () => {
  env = await createTestEnv();
  entryId = await storeDeadLetter(env.knex, {
    source: 'amqp',
    queue: `q${CLEAR}`,
    messageId: `m${hostile}`,
    type: `T${hostile}`,
    reason: 'handler-failed',
    error: { message: `boom ${hostile}`, stack: `Error: boom${CLEAR}\n    at handler (x.js:1:1)\r` },
    attempts: 1,
    payload: { note: `p${hostile}`, [`k${hostile}`]: 1 },
    headers: { [`h${hostile}`]: `v${hostile}` },
  });
  await storeDeadLetter(env.knex, {
    source: 'amqp',
    queue: 'q',
    messageId: 'm-raw',
    type: null,
    reason: 'invalid-json',
    error: { message: 'not JSON' },
    attempts: 1,
    body: Buffer.from(`{raw ${hostile}`),
  });
  await env.knex.transaction(async (trx) => {
    await insertSaga(trx, {
      id: `s${hostile}`,
      name: `n${hostile}`,
      state: {},
      correlationId: `c${hostile}`,
    });
    await recordStepFailure(trx, {
      sagaId: `s${hostile}`,
      step: `step${hostile}`,
      stage: 0,
      phase: 'execute',
      attempts: 1,
      error: { message: `step failed ${hostile}` },
      final: true,
    });
    await transitionSaga(trx, `s${hostile}`, 'running', 'failed', { message: `last ${hostile}` });
  });
});

afterAll(async () => {
  await env?.teardown();
});

function expectEscaped(result: { code: number | null; stdout: string; stderr: string }): void {
  expect(result.stderr).toBe('');
  expect(result.code).toBe(0);
  expect(result.stdout).not.toMatch(terminalControl);
  // Shown, not dropped: the reader can still see what the sender put there.
  expect(result.stdout).toContain('\\x1b[2J');
  expect(result.stdout).toContain('\\u202e');
}

describe('text output with hostile ids, types, errors and payloads', () => {
  it('dw dlq show escapes controls and bidi overrides in every field', async () => {
    const result = await run('dlq', 'show', String(entryId));
    expectEscaped(result);
    expect(result.stdout).toContain('\\x0dFAKE');
    // The stack keeps its lines.
    expect(result.stdout).toMatch(/\n\s+at handler \(x\.js:1:1\)\\x0d\n/);
  });

  it('dw dlq show escapes a raw (non-JSON) body', async () => {
    const list = JSON.parse((await run('dlq', 'list', '--json')).stdout) as Array<{
      id: number;
      messageId: string;
    }>;
    const raw = list.find((e) => e.messageId === 'm-raw')!;
    expectEscaped(await run('dlq', 'show', String(raw.id)));
  });

  it('dw dlq list escapes them in the table', async () => {
    expectEscaped(await run('dlq', 'list'));
  });

  it('dw sagas list and show escape them', async () => {
    expectEscaped(await run('sagas', 'list'));
    expectEscaped(await run('sagas', 'show', `s${hostile}`));
  });

  it('--json output stays valid JSON holding the original text', async () => {
    const shown = await run('dlq', 'show', String(entryId), '--json');
    expect(shown.code).toBe(0);
    expect(JSON.parse(shown.stdout)).toMatchObject({
      type: `T${hostile}`,
      error: { message: `boom ${hostile}` },
    });
    const sagas = await run('sagas', 'list', '--json');
    expect(JSON.parse(sagas.stdout)).toMatchObject([{ id: `s${hostile}`, name: `n${hostile}` }]);
  });
});
