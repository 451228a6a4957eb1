import { createProgram, reportError } from './program.js';

try {
  await createProgram().parseAsync(process.argv);
} catch (error) {
  const { exitCode, stderr, unexpected } = reportError(error);
  process.exitCode = exitCode;
  process.stderr.write(stderr);
  if (unexpected && process.env.DW_DEBUG) process.stderr.write(`${(error as Error)?.stack}\n`);
}
