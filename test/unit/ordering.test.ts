import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../shared/config.js';
import { maxOrderingKeyBytes } from '../../shared/defaults.js';
import { InvalidOrderingKeyError } from '../../shared/errors.js';
import {
  assertOrderingKey,
  deliveryOrderingKey,
  orderedExchangeName,
  orderedHashExchangeName,
  orderingKeyProblem,
  partitionQueueName,
} from '../../shared/ordering.js';
import { isStorableText } from '../../shared/storable.js';

const delivery = (headers: Record<string, unknown> | undefined) =>
  ({ properties: { headers } }) as Parameters<typeof deliveryOrderingKey>[0];

describe('ordering keys', () => {
  it('accepts exactly the storable strings of 1 to 1024 UTF-8 bytes, whatever the characters', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 1200 }), (key) => {
        const usable = key.length > 0 && Buffer.byteLength(key) <= maxOrderingKeyBytes && isStorableText(key);
        expect(orderingKeyProblem(key) === null).toBe(usable);
        if (!usable) expect(() => assertOrderingKey(key)).toThrow(InvalidOrderingKeyError);
      }),
    );
  });

  it('refuses what is not a string, and says why in one line', () => {
    for (const key of [undefined, null, 42, {}, Buffer.from('k')]) {
      expect(orderingKeyProblem(key)).toBe('an ordering key must be a string');
    }
    expect(orderingKeyProblem('x'.repeat(2000))).toMatch(/at most 1024 bytes .* 2000$/);
    expect(() => assertOrderingKey('\0')).toThrow(/NUL/);
  });

  it('compares any header value by type and value, and a missing one as no key', () => {
    expect(deliveryOrderingKey(delivery(undefined))).toBeUndefined();
    expect(deliveryOrderingKey(delivery({}))).toBeUndefined();
    expect(deliveryOrderingKey(delivery({ 'x-ordering-key': null }))).toBeUndefined();
    const values: unknown[] = ['42', 42, Buffer.from('42'), '', true, { a: 1 }, [1], 'k'.repeat(100_000)];
    const keys = values.map((v) => deliveryOrderingKey(delivery({ 'x-ordering-key': v })));
    expect(new Set(keys).size).toBe(values.length);
    // The same value always gives the same key.
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'binary' }), fc.uint8Array().map(Buffer.from)), (v) => {
        expect(deliveryOrderingKey(delivery({ 'x-ordering-key': v }))).toBe(
          deliveryOrderingKey(delivery({ 'x-ordering-key': Buffer.isBuffer(v) ? Buffer.from(v) : `${v}` })),
        );
      }),
    );
  });

  it('names the ordered topology after the exchange and the work queue', () => {
    expect(orderedExchangeName('dw.messages')).toBe('dw.messages.ordered');
    expect(orderedHashExchangeName('dw.messages.app')).toBe('dw.messages.app.ordered');
    expect(partitionQueueName('dw.messages.app', 3)).toBe('dw.messages.app.ordered.3');
  });
});

describe('DW_ORDERED_PARTITIONS', () => {
  it('is unset by default, 0 to 256 when set, refused otherwise', () => {
    expect(loadConfig({}).orderedPartitions).toBeUndefined();
    expect(loadConfig({ DW_ORDERED_PARTITIONS: '0' }).orderedPartitions).toBe(0);
    expect(loadConfig({ DW_ORDERED_PARTITIONS: '256' }).orderedPartitions).toBe(256);
    for (const bad of ['257', '-1', '1.5', 'eight', '99999']) {
      expect(() => loadConfig({ DW_ORDERED_PARTITIONS: bad })).toThrow(/DW_ORDERED_PARTITIONS must be/);
    }
  });
});
