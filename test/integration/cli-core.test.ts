import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exampleMigrations } from '../../examples/app/migrations.js';
import { coreMigrations } from '../../shared/db/migrate.js';
import { waitUntil } from '../../shared/wait.js';
import { cliEnv, runCli, startDw } from '../support/cli.js';
import { count, createTestEnv, randomName, type TestEnv, urls } from '../support/services.js';

let env: TestEnv;

beforeAll(async () => {
  env = await createTestEnv(exampleMigrations);
});

afterAll(async () => {
  await env?.teardown();
});

describe('dw migrate', () => {
  it('creates a missing database, applies the migrations once, and declares the topology', async () => {
    const database = randomName('dw_test_migrate_');
    const config = { ...env.config, databaseUrl: `${urls.postgres}/${database}` };
    const first = await runCli(['migrate'], cliEnv(config));
    expect(first.stderr).toContain(`created database`);
    // durable-worker's migrations and the app's.
    expect(first.stdout).toContain(
      `applied ${coreMigrations.length + exampleMigrations.length} migration(s)`,
    );
    expect(first.stdout).toContain(
      `declared exchange ${env.config.exchange} and queue ${env.config.exchange}.example`,
    );
    expect(first.code).toBe(0);
    const second = await runCli(['migrate'], cliEnv(config));
    expect(second.stdout).toContain('already up to date');
    expect(second.code).toBe(0);
    await env.knex.raw('drop database ?? with (force)', [database]);
  });
});

describe('dw publish', () => {
  it('publishes with confirms and prints the ids as JSON', async () => {
    const result = await runCli(
      ['publish', 'JoinMeeting', '--data', '{"userId":"u","meetingId":"cli"}', '--count', '3', '--json'],
      cliEnv(env.config),
    );
    expect(result.code).toBe(0);
    const parsed = JSON.parse(result.stdout) as { published: Array<{ id: string; type: string }> };
    expect(parsed.published).toHaveLength(3);
    expect(new Set(parsed.published.map((p) => p.id)).size).toBe(3);
    expect(parsed.published.every((p) => p.type === 'JoinMeeting')).toBe(true);
  });

  it('keeps a given id and correlation id', async () => {
    const result = await runCli(
      ['publish', 'JoinMeeting', '--data', '{"userId":"u","meetingId":"m"}', '--id', 'given-1', '--json'],
      cliEnv(env.config),
    );
    expect(JSON.parse(result.stdout)).toEqual({ published: [{ id: 'given-1', type: 'JoinMeeting' }] });
  });

  it.each([
    [['publish', 'JoinMeeting', '--data', '{bad'], /not valid JSON/],
    [['publish', 'JoinMeeting'], /required option '--data/],
    [['publish', 'JoinMeeting', '--data', '{}', '--count', 'x'], /expected a whole number/],
    [['publish', 'JoinMeeting', '--data', '@/nonexistent.json'], /cannot read \/nonexistent.json/],
    [['publish', 'JoinMeeting', '--data', '{}', '--id', 'a', '--count', '2'], /--id names one message/],
    [['publish', 'NoSuchType', '--data', '{}'], /reached no queue/],
    [['frobnicate'], /unknown command/],
  ])('answers bad input %j with exit 1 and a clear line', async (args, pattern) => {
    const result = await runCli(args as string[], cliEnv(env.config));
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(pattern);
    expect(result.stderr).not.toMatch(/\n\s+at /);
    expect(result.stdout).toBe('');
  });

  it('names an unreachable service with its URL and hides the password', async () => {
    const result = await runCli(
      ['publish', 'JoinMeeting', '--data', '{}'],
      cliEnv(env.config, { AMQP_URL: 'amqp://guest:s3cret@127.0.0.1:1' }),
    );
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1');
    expect(result.stderr).not.toContain('s3cret');
  });

  it('reports every configuration problem, one line each', async () => {
    const result = await runCli(
      ['migrate'],
      cliEnv(env.config, { DATABASE_URL: 'mysql://x', LOG_LEVEL: 'loud' }),
    );
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/DATABASE_URL must start with postgres:\/\//);
    expect(result.stderr).toMatch(/LOG_LEVEL must be one of/);
  });
});

describe('dw worker', () => {
  it('refuses to start on a database that is not migrated, saying what to run', async () => {
    const database = randomName('dw_test_empty_');
    await env.knex.raw('create database ??', [database]);
    const result = await runCli(
      ['worker'],
      cliEnv({ ...env.config, databaseUrl: `${urls.postgres}/${database}` }),
    );
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/run `dw migrate` first/);
    await env.knex.raw('drop database ?? with (force)', [database]);
  });

  it('names PostgreSQL and its URL when it cannot reach it', async () => {
    const result = await runCli(
      ['worker'],
      cliEnv(env.config, { DATABASE_URL: 'postgres://postgres:pw@127.0.0.1:1/x' }),
    );
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('cannot reach PostgreSQL at postgres://postgres:***@127.0.0.1:1/x');
  });

  it('handles messages and stops cleanly on SIGTERM with exit 0', async () => {
    const { child, exited } = startDw(['worker'], cliEnv(env.config));
    try {
      await runCli(
        ['publish', 'JoinMeeting', '--data', '{"userId":"sig","meetingId":"term"}'],
        cliEnv(env.config),
      );
      await waitUntil(
        async () => (await count(env.knex, 'meeting_participants', { user_id: 'sig' })) === 1,
        'the message',
      );
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toEqual({ code: 0, signal: null });
  });
});
