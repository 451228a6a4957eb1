import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { resolveRelayOptions } from '../../relay/options.js';
import { defineApp } from '../../shared/app.js';
import { MAX_TIMER_MS, relayDefaults, workerDefaults } from '../../shared/defaults.js';
import { InvalidOptionError } from '../../shared/errors.js';
import { resolveWorkerOptions, type WorkerOptions } from '../../worker/options.js';

const app = defineApp({ name: 'opts' });
const config = {
  databaseUrl: 'postgres://localhost/x',
  amqpUrl: 'amqp://localhost',
  redisUrl: 'redis://localhost',
  exchange: 'ex',
  bullmqPrefix: 'bull',
};

type Rule = { min: number; max: number };
const count = (min = 1, max = Number.MAX_SAFE_INTEGER): Rule => ({ min, max });
const duration = (min = 0, max = Number.MAX_SAFE_INTEGER): Rule => ({ min, max });
const timer = (min = 0): Rule => ({ min, max: MAX_TIMER_MS });

const workerRules: Record<string, Rule> = {
  concurrency: count(),
  batchSize: count(1, 1000),
  prefetch: count(1, 65_535),
  maxMessageBytes: count(),
  // At most the quorum delivery limit less a margin: the crash-loop guard must act first.
  maxDeliveries: count(1, 90),
  sagaConcurrency: count(),
  sagaBatchSize: count(1, 1000),
  poolMax: count(),
  shutdownGraceMs: timer(),
  sagaSweepIntervalMs: timer(),
  housekeepingIntervalMs: timer(),
  sagaStaleAfterMs: duration(),
  sagaEagerLeaseMs: duration(),
  dedupWindowMs: duration(),
  outboxRetentionMs: duration(),
};

const relayRules: Record<string, Rule> = {
  batchSize: count(1, 10_000),
  concurrency: count(),
  pollIntervalMs: timer(1),
  shutdownGraceMs: timer(),
};

/** Values no option takes: not numbers, not whole, not finite, or outside [min, max]. */
function invalid(rule: Rule): fc.Arbitrary<unknown> {
  return fc.oneof(
    fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, null, '10', true, {}),
    fc.double({ noNaN: true, noInteger: true, min: -1e12, max: 1e12 }),
    fc.integer({ min: Number.MIN_SAFE_INTEGER, max: rule.min - 1 }),
    ...(rule.max < Number.MAX_SAFE_INTEGER
      ? [fc.integer({ min: rule.max + 1, max: Number.MAX_SAFE_INTEGER })]
      : []),
  );
}

function rejection(run: () => unknown): InvalidOptionError | undefined {
  try {
    run();
  } catch (error) {
    if (error instanceof InvalidOptionError) return error;
    throw error;
  }
  return undefined;
}

describe('resolveWorkerOptions', () => {
  it('applies the defaults of shared/defaults.ts', () => {
    const o = resolveWorkerOptions({ app, config });
    expect(o).toMatchObject({
      concurrency: workerDefaults.concurrency,
      batchSize: workerDefaults.batchSize,
      prefetch: 2 * workerDefaults.concurrency * workerDefaults.batchSize,
      queue: 'ex.opts',
      maxMessageBytes: 1024 * 1024,
      maxDeliveries: 5,
      shutdownGraceMs: 30_000,
      sagaConcurrency: 10,
      sagaBatchSize: 10,
      sagaSweepIntervalMs: 30_000,
      sagaStaleAfterMs: 60_000,
      sagaEagerLeaseMs: 10_000,
      housekeepingIntervalMs: 60_000,
      dedupWindowMs: 7 * 24 * 3600 * 1000,
      outboxRetentionMs: 3600 * 1000,
      poolMax: 10 + 2 * 10 + 4,
    });
  });

  it.each(Object.entries(workerRules))(
    'refuses any invalid %s, naming it, and takes any valid one',
    (name, rule) => {
      fc.assert(
        fc.property(invalid(rule), (value) => {
          const error = rejection(() =>
            resolveWorkerOptions({ app, config, [name]: value } as WorkerOptions),
          );
          expect(error?.option).toBe(name);
          expect(error?.code).toBe('DW_INVALID_OPTION');
          expect(error?.message).toMatch(new RegExp(`^option ${name} must be a whole number`));
        }),
      );
      fc.assert(
        fc.property(fc.integer({ min: rule.min, max: Math.min(rule.max, 1e12) }), (value) => {
          const resolved = resolveWorkerOptions({ app, config, [name]: value } as WorkerOptions);
          expect((resolved as unknown as Record<string, unknown>)[name]).toBe(value);
        }),
      );
    },
  );

  it('takes quorum or classic as queueType (else config.queueType, else resolved at start)', () => {
    for (const queueType of ['', 'Quorum', 'stream', 1]) {
      expect(
        rejection(() => resolveWorkerOptions({ app, config, queueType } as unknown as WorkerOptions))?.option,
      ).toBe('queueType');
    }
    expect(resolveWorkerOptions({ app, config, queueType: 'classic' }).queueType).toBe('classic');
    expect(resolveWorkerOptions({ app, config: { ...config, queueType: 'classic' } }).queueType).toBe(
      'classic',
    );
    expect(resolveWorkerOptions({ app, config }).queueType).toBeUndefined();
  });

  it('refuses a queue name RabbitMQ would not take', () => {
    for (const queue of ['', 'amq.x', 'q'.repeat(256), 7]) {
      expect(rejection(() => resolveWorkerOptions({ app, config, queue } as WorkerOptions))?.option).toBe(
        'queue',
      );
    }
    expect(resolveWorkerOptions({ app, config, queue: 'custom' }).queue).toBe('custom');
  });
});

describe('resolveRelayOptions', () => {
  it('applies the defaults of shared/defaults.ts', () => {
    expect(resolveRelayOptions({ config })).toMatchObject({
      batchSize: relayDefaults.batchSize,
      concurrency: 4,
      pollIntervalMs: 1000,
      keepCompleted: { age: 24 * 3600, count: 100_000 },
      shutdownGraceMs: 10_000,
    });
  });

  it.each(Object.entries(relayRules))(
    'refuses any invalid %s, naming it, and takes any valid one',
    (name, rule) => {
      fc.assert(
        fc.property(invalid(rule), (value) => {
          const error = rejection(() => resolveRelayOptions({ config, [name]: value }));
          expect(error?.option).toBe(name);
          expect(error?.message).toMatch(new RegExp(`^option ${name} must be a whole number`));
        }),
      );
      fc.assert(
        fc.property(fc.integer({ min: rule.min, max: Math.min(rule.max, 1e12) }), (value) => {
          expect(
            (resolveRelayOptions({ config, [name]: value }) as unknown as Record<string, unknown>)[name],
          ).toBe(value);
        }),
      );
    },
  );

  it('refuses keepCompleted parts that are not whole counts', () => {
    fc.assert(
      fc.property(fc.constantFrom('age', 'count'), invalid(count(0)), (part, value) => {
        const keepCompleted = { age: 10, count: 10, [part]: value } as { age: number; count: number };
        expect(rejection(() => resolveRelayOptions({ config, keepCompleted }))?.option).toBe(
          `keepCompleted.${part}`,
        );
      }),
    );
  });
});

describe('@defaultValue docs', () => {
  // The docs cannot import the constants, so this keeps their numbers in step with shared/defaults.ts.
  function documented(file: string): Record<string, string> {
    const source = readFileSync(new URL(file, import.meta.url), 'utf8');
    const found: Record<string, string> = {};
    for (const match of source.matchAll(
      /@defaultValue ([^\n]*)\n(?:\s*\*[^\n]*\n)*?\s*\*\/\n\s*(\w+)\??:/g,
    )) {
      found[match[2]!] = match[1]!.trim();
    }
    return found;
  }

  it('match the worker defaults', () => {
    const docs = documented('../../worker/options.ts');
    for (const key of [
      'concurrency',
      'orderedPartitions',
      'batchSize',
      'maxMessageBytes',
      'maxDeliveries',
      'shutdownGraceMs',
      'sagaConcurrency',
      'sagaBatchSize',
      'sagaSweepIntervalMs',
      'sagaStaleAfterMs',
      'sagaEagerLeaseMs',
      'housekeepingIntervalMs',
      'outboxRetentionMs',
      'dedupWindowMs',
    ] as const) {
      expect(docs[key]?.split(' ')[0], key).toBe(String(workerDefaults[key]));
    }
  });

  it('match the relay defaults', () => {
    const docs = documented('../../relay/options.ts');
    for (const key of ['batchSize', 'concurrency', 'pollIntervalMs', 'shutdownGraceMs'] as const) {
      expect(docs[key]?.split(' ')[0], key).toBe(String(relayDefaults[key]));
    }
  });
});
