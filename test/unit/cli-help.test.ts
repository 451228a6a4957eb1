import { describe, expect, it } from 'vitest';
import { cliDefaults, formatDuration, relayDefaults, workerDefaults } from '../../shared/defaults.js';
import { runCli } from '../support/cli.js';

/** The help of `dw <args> --help` (built by the globalSetup), on one line per option. */
async function help(...args: string[]): Promise<string> {
  const result = await runCli([...args, '--help'], { PATH: process.env.PATH });
  expect(result.code).toBe(0);
  return result.stdout.replace(/\n {10,}/g, ' ');
}

describe('CLI help shows the defaults of shared/defaults.ts', () => {
  it('dw worker', async () => {
    const text = await help('worker');
    expect(text).toMatch(new RegExp(`--concurrency <n> .*\\(default: ${workerDefaults.concurrency}\\)`));
    expect(text).toMatch(new RegExp(`--batch-size <n> .*\\(default: ${workerDefaults.batchSize}\\)`));
    expect(text).toMatch(
      new RegExp(
        `--prefetch <n> .*\\(default: ${workerDefaults.prefetchPerConcurrency} x concurrency x batch size\\)`,
      ),
    );
    expect(text).toMatch(
      new RegExp(`--saga-concurrency <n> .*\\(default: ${workerDefaults.sagaConcurrency}\\)`),
    );
    expect(text).toMatch(
      new RegExp(`--saga-batch-size <n> .*\\(default: ${workerDefaults.sagaBatchSize}\\)`),
    );
    expect(text).toMatch(
      new RegExp(`--shutdown-grace <ms> .*\\(default: ${workerDefaults.shutdownGraceMs}\\)`),
    );
  });

  it('dw relay', async () => {
    const text = await help('relay');
    expect(text).toMatch(new RegExp(`--batch-size <n> .*\\(default: ${relayDefaults.batchSize}\\)`));
    expect(text).toMatch(new RegExp(`--concurrency <n> .*\\(default: ${relayDefaults.concurrency}\\)`));
    expect(text).toMatch(new RegExp(`--poll-interval <ms> .*\\(default: ${relayDefaults.pollIntervalMs}\\)`));
  });

  it('dw dlq replay, dw dlq list and dw sagas list', async () => {
    expect(formatDuration(workerDefaults.dedupWindowMs)).toBe('7d');
    expect(await help('dlq', 'replay')).toMatch(
      new RegExp(
        `--dedup-window <duration> .*\\(default: ${formatDuration(workerDefaults.dedupWindowMs)}\\)`,
      ),
    );
    expect(await help('dlq', 'list')).toMatch(
      new RegExp(`--limit <n> .*\\(default: ${cliDefaults.listLimit}\\)`),
    );
    expect(await help('sagas', 'list')).toMatch(
      new RegExp(`--limit <n> .*\\(default: ${cliDefaults.listLimit}\\)`),
    );
  });
});
