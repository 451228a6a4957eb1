import type { Knex } from 'knex';
import { isRetryable } from '../errors.js';
import { databaseHealthy } from './knex.js';

/**
 * Why a transaction failed:
 * - `outage`: the database went away (restart, terminated session, unreachable): wait for it and
 *   run the work again, without spending an attempt of the handler or step;
 * - `transient`: serialization failure or deadlock: run it again at once;
 * - `application`: the code it ran failed; this is an attempt, and the retry policy decides.
 */
export type FailureKind = 'outage' | 'transient' | 'application';

// SQLSTATE classes and codes that mean the session or server is gone, not that a statement was wrong.
const sessionLostCodes = new Set(['57P01', '57P02', '57P03', '53300']);
// What pg and knex say when a pooled connection dies or none can be had.
const sessionLostMessage =
  /Connection terminated|Client was closed|Client has encountered a connection error|not queryable|Knex: Timeout acquiring a connection|terminating connection/i;
// Socket-level codes: the database's, or just as well an HTTP API's that user code called.
const networkCodes = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EHOSTUNREACH',
]);

/** Decides the FailureKind; asks the database only when a network error could be either side's. */
export async function classifyFailure(knex: Knex, error: unknown): Promise<FailureKind> {
  if (!isRetryable(error)) return 'application';
  const code = codeOf(error);
  if (code === '40001' || code === '40P01') return 'transient';
  if (code && (sessionLostCodes.has(code) || code.startsWith('08'))) return 'outage';
  if (error instanceof Error && sessionLostMessage.test(error.message)) return 'outage';
  if (hasNetworkCode(error)) return (await databaseHealthy(knex)) ? 'application' : 'outage';
  return 'application';
}

/**
 * True when PostgreSQL refused the data itself (SQLSTATE class 22 data exception, e.g. NUL or a
 * lone surrogate in jsonb, class 54 program limit, e.g. nesting too deep) or the value was too
 * deeply nested to serialise at all: the same input fails the same way every time, so retrying
 * cannot help and the message is an `invalid-payload` dead letter.
 */
export function refusedByDatabase(error: unknown, depth = 0): boolean {
  if (!error || depth > 4) return false;
  const code = codeOf(error);
  if (code && /^(22|54)[0-9A-Z]{3}$/.test(code)) return true;
  if (error instanceof RangeError && /call stack/i.test(error.message)) return true;
  return refusedByDatabase((error as { cause?: unknown }).cause, depth + 1);
}

function codeOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

function hasNetworkCode(error: unknown, depth = 0): boolean {
  if (!error || depth > 4) return false;
  const code = codeOf(error);
  if (code && networkCodes.has(code)) return true;
  if (error instanceof AggregateError && error.errors.some((e) => hasNetworkCode(e, depth + 1))) return true;
  return hasNetworkCode((error as { cause?: unknown }).cause, depth + 1);
}
