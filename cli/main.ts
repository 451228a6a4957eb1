import { Command, CommanderError } from 'commander';
import { ConfigError, DurableWorkerError } from '../shared/errors.js';
import { registerDlq } from './dlq.js';
import { registerMigrate } from './migrate.js';
import { registerProcesses } from './processes.js';
import { registerPublish } from './publish.js';
import { registerSagas } from './sagas.js';
import { registerStatus } from './status.js';

const program = new Command('dw')
  .description('durable-worker: reliable message handling and sagas on RabbitMQ, Postgres and Redis')
  .exitOverride();
// Commander exits 1 on errors by default; exitOverride lets us keep one format for every error.
program.configureOutput({ writeErr: (text) => process.stderr.write(text) });

registerMigrate(program);
registerPublish(program);
registerProcesses(program);
registerSagas(program);
registerDlq(program);
registerStatus(program);

try {
  await program.parseAsync(process.argv);
} catch (error) {
  process.exitCode = 1;
  if (error instanceof CommanderError) {
    // Commander already printed its message (help and --version exit 0).
    process.exitCode = error.exitCode;
  } else if (error instanceof ConfigError) {
    process.stderr.write(`dw: ${error.message}\n`);
  } else if (error instanceof DurableWorkerError) {
    process.stderr.write(`dw: ${error.message}\n`);
  } else {
    process.stderr.write(`dw: ${(error as Error)?.message ?? String(error)}\n`);
    if (process.env.DW_DEBUG) process.stderr.write(`${(error as Error)?.stack}\n`);
  }
}
