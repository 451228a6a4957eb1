/**
 * `npm run demo`: checks the services, migrates, starts a worker and a relay as real processes,
 * runs each example, prints what happened, and stops both processes cleanly.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import amqp from 'amqplib';
import {
  assertExchange,
  assertRedisReachable,
  type Config,
  createKnex,
  describeCause,
  loadConfig,
  publishMessages,
  redactUrl,
} from '../index.js';
import { bookTripDemo } from './demo/book-trip.js';
import { type DemoContext, dwBin, runDw } from './demo/context.js';
import { joinMeetingDemo } from './demo/join-meeting.js';
import { sendInvoiceDemo } from './demo/send-invoice.js';

const say = (line: string) => process.stdout.write(`${line}\n`);

async function checkServices(config: Config): Promise<void> {
  const problems: string[] = [];
  const knex = createKnex(config.databaseUrl.replace(/\/[^/]*$/, '/postgres'), { poolMax: 1 });
  await knex
    .raw('select 1')
    .catch((e) => problems.push(`PostgreSQL at ${redactUrl(config.databaseUrl)}: ${describeCause(e)}`));
  await knex.destroy();
  await assertRedisReachable(config).catch((e) => problems.push((e as Error).message));
  await amqp
    .connect(config.amqpUrl)
    .then((c) => c.close())
    .catch((e) => problems.push(`RabbitMQ at ${redactUrl(config.amqpUrl)}: ${describeCause(e)}`));
  if (problems.length) {
    process.stderr.write(
      `demo: these services do not answer:\n${problems.map((p) => `  - ${p}`).join('\n')}\n` +
        'Start them with `docker compose up -d` (or point DATABASE_URL, AMQP_URL, REDIS_URL at yours).\n',
    );
    process.exit(1);
  }
}

function startProcess(name: string, args: string[]): ChildProcess {
  const child = spawn(process.execPath, [dwBin, ...args], {
    // The demo prints what happened itself (failures included, on purpose); LOG_LEVEL=info shows the logs.
    env: { ...process.env, LOG_LEVEL: process.env.LOG_LEVEL ?? 'fatal' },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  child.on('exit', (code, signal) => {
    if (!stopping) {
      process.stderr.write(`demo: the ${name} exited unexpectedly (code ${code}, signal ${signal})\n`);
      process.exit(1);
    }
  });
  return child;
}

function stopProcess(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    child.once('exit', (code) => resolve(code));
    child.kill('SIGTERM');
  });
}

let stopping = false;

async function main(): Promise<void> {
  const config = loadConfig();
  say('durable-worker demo');
  say(
    `  database ${redactUrl(config.databaseUrl)}, broker ${redactUrl(config.amqpUrl)}, redis ${config.redisUrl}`,
  );
  await checkServices(config);
  say((await runDw(['migrate'])).trim());

  const worker = startProcess('worker', ['worker']);
  const relay = startProcess('relay', ['relay']);
  const knex = createKnex(config.databaseUrl, { poolMax: 2 });
  const connection = await amqp.connect(config.amqpUrl);
  const channel = await connection.createConfirmChannel();
  await assertExchange(channel, config.exchange);
  const ctx: DemoContext = {
    config,
    knex,
    say,
    dw: (args) => runDw(args),
    publish: async (messages) => {
      const { unroutable } = await publishMessages(channel, config.exchange, messages, { mandatory: true });
      if (unroutable) throw new Error(`${unroutable} message(s) reached no queue`);
    },
  };
  try {
    await joinMeetingDemo(ctx);
    await bookTripDemo(ctx);
    await sendInvoiceDemo(ctx);
  } finally {
    stopping = true;
    await connection.close();
    await knex.destroy();
    const [w, r] = await Promise.all([stopProcess(worker), stopProcess(relay)]);
    say(`\nstopped the worker (exit ${w}) and the relay (exit ${r})`);
  }
}

main().catch((error) => {
  process.stderr.write(`demo failed: ${(error as Error).message}\n`);
  process.exit(1);
});
