import { closeSync, openSync, readSync } from 'node:fs';
import { InvalidArgumentError, Option } from 'commander';
import { orderingKeyProblem } from '../shared/ordering.js';
import { queueTypes } from '../shared/queue-type.js';
import { clip, printable, shown } from './render.js';

/** Commander argument parser for whole numbers within a range. */
export function integer(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (value: string): number => {
    if (!/^\d+$/.test(value)) throw new InvalidArgumentError(`expected a whole number, got ${shown(value)}`);
    const n = Number(value);
    if (n < min || n > max)
      throw new InvalidArgumentError(`expected a number from ${min} to ${max}, got ${shown(value)}`);
    return n;
  };
}

/** Largest `--data @file` read: the file could be /dev/zero or a log that grows while it is read. */
export const MAX_DATA_FILE_BYTES = 16 * 1024 * 1024;

/** Reads at most `MAX_DATA_FILE_BYTES` of `path`; a longer file is refused, never read to its end. */
function readCapped(path: string): string {
  const fd = openSync(path, 'r');
  try {
    const buffer = Buffer.alloc(MAX_DATA_FILE_BYTES + 1);
    let length = 0;
    for (;;) {
      const n = readSync(fd, buffer, length, buffer.length - length, null);
      if (n === 0) break;
      length += n;
      if (length > MAX_DATA_FILE_BYTES) {
        throw new InvalidArgumentError(
          `${printable(clip(path, 200))} is larger than ${MAX_DATA_FILE_BYTES / 1024 / 1024} MiB; publish a smaller payload`,
        );
      }
    }
    return buffer.toString('utf8', 0, length);
  } finally {
    closeSync(fd);
  }
}

/** `--data '<json>'` or `--data @file.json`. */
export function jsonArgument(value: string): unknown {
  let text = value;
  if (value.startsWith('@')) {
    try {
      text = readCapped(value.slice(1));
    } catch (error) {
      if (error instanceof InvalidArgumentError) throw error;
      throw new InvalidArgumentError(
        `cannot read ${printable(clip(value.slice(1), 200))}: ${(error as Error).message}`,
      );
    }
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new InvalidArgumentError(`not valid JSON: ${(error as Error).message}`);
  }
  try {
    // Publishing serialises it again; nesting deeper than the stack fails there, so say it here.
    JSON.stringify(parsed);
  } catch {
    throw new InvalidArgumentError('the JSON is nested too deeply to publish');
  }
  return parsed;
}

/**
 * `--id` and `--correlation-id`: AMQP carries them as short strings (at most 255 bytes), and a
 * control character in an id ends up in logs and terminals.
 */
export function messageIdArgument(value: string): string {
  if (value === '') throw new InvalidArgumentError('expected a non-empty id');
  if (Buffer.byteLength(value) > 255)
    throw new InvalidArgumentError(`expected at most 255 bytes, got ${Buffer.byteLength(value)}`);
  if (/[\p{Cc}\p{Cs}\u200e\u200f\u202a-\u202e\u2066-\u2069]/u.test(value))
    throw new InvalidArgumentError(`expected an id without control characters, got ${shown(value)}`);
  return value;
}

/** Prints one JSON document on stdout (the only thing `--json` commands print there). */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** `--queue-type`: DW_QUEUE_TYPE for one command (dw migrate, dw worker). */
export function queueTypeOption(): Option {
  return new Option(
    '--queue-type <type>',
    'RabbitMQ type of the work and retry queues (default: DW_QUEUE_TYPE, else an existing queue keeps its type, else quorum)',
  ).choices(queueTypes);
}

/** `--key`: an ordering key as shared/ordering.ts accepts it (non-empty, at most 1024 bytes, storable). */
export function orderingKeyArgument(value: string): string {
  const problem = orderingKeyProblem(value);
  if (problem) throw new InvalidArgumentError(`${problem}, got ${shown(value)}`);
  return value;
}
