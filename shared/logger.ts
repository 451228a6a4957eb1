import { pino } from 'pino';
import { logTraceFields } from './tracing.js';

export type Logger = pino.Logger;

/**
 * Structured JSON logs. Long-running processes log to stdout (twelve-factor); one-shot CLI commands
 * log to stderr so that `--json` output on stdout stays one clean document.
 */
export function createLogger(options: { level?: string; name?: string; destination?: 1 | 2 } = {}): Logger {
  return pino(
    {
      level: options.level ?? process.env.LOG_LEVEL ?? 'info',
      base: { pid: process.pid, ...(options.name ? { component: options.name } : {}) },
      timestamp: pino.stdTimeFunctions.isoTime,
      // trace_id and span_id of the active span, when tracing is on.
      mixin: logTraceFields,
    },
    pino.destination({ fd: options.destination ?? 1, sync: true }),
  );
}

/** A logger that drops everything: the default for library use and tests. */
export const silentLogger: Logger = pino({ level: 'silent' });
