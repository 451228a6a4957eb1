import { Command, CommanderError, type OutputConfiguration } from 'commander';
import { ConfigError, DurableWorkerError } from '../shared/errors.js';
import { registerDashboard } from './dashboard.js';
import { registerDlq } from './dlq.js';
import { registerMigrate } from './migrate.js';
import { registerProcesses } from './processes.js';
import { registerPublish } from './publish.js';
import { errorLine, printable } from './render.js';
import { registerSagas } from './sagas.js';
import { registerStatus } from './status.js';

/**
 * The `dw` command tree. Commander's own errors (unknown option, bad option value) are not printed
 * by commander: they surface as a CommanderError, so `reportError` prints every error in the same
 * one-line `dw: …` form.
 */
export function createProgram(output: Pick<OutputConfiguration, 'writeOut' | 'writeErr'> = {}): Command {
  const program = new Command('dw')
    .description('durable-worker: reliable message handling and sagas on RabbitMQ, Postgres and Redis')
    .exitOverride();
  // Set before the commands are added: subcommands copy the output configuration when created.
  program.configureOutput({
    writeErr: (text) => process.stderr.write(text),
    ...output,
    outputError: () => {},
  });
  registerMigrate(program);
  registerPublish(program);
  registerProcesses(program);
  registerSagas(program);
  registerDlq(program);
  registerStatus(program);
  registerDashboard(program);
  return program;
}

/** What an error thrown by `createProgram().parseAsync` prints on stderr, and the exit code. */
export function reportError(error: unknown): { exitCode: number; stderr: string; unexpected: boolean } {
  if (error instanceof CommanderError) {
    // Help and --version exit 0; a group without a subcommand printed its help already (exit 1).
    const printed = ['commander.helpDisplayed', 'commander.help', 'commander.version'].includes(error.code);
    return {
      exitCode: error.exitCode === 0 ? 0 : 1,
      stderr: printed ? '' : errorLine(error.message),
      unexpected: false,
    };
  }
  if (error instanceof ConfigError) {
    // The one multi-line error: a line per problem, so all of them can be fixed in one go.
    return {
      exitCode: 1,
      stderr: `dw: ${printable(error.message, { multiline: true })}\n`,
      unexpected: false,
    };
  }
  const message = error instanceof Error ? error.message : String(error);
  // Errors of durable-worker say how to fix them; anything else is a bug worth its stack (DW_DEBUG).
  return { exitCode: 1, stderr: errorLine(message), unexpected: !(error instanceof DurableWorkerError) };
}
