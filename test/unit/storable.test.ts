import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isStorableText, storableJson, storableText } from '../../shared/storable.js';

const seed = Number(process.env.FC_SEED ?? 20240909);
const unstorable = /\0|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
// Every UTF-16 code unit, lone surrogates and NUL included.
const anyText = fc.string({ unit: 'binary' });
const anyJson = fc.jsonValue();
const hostileJson = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small' },
    anyText,
    fc.integer(),
    fc.constant(null),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(anyText, tie('value'), { maxKeys: 4 }),
  ),
})).value;

describe('storableText', () => {
  it('never leaves NUL or a lone surrogate, and keeps the length', () => {
    fc.assert(
      fc.property(anyText, (text) => {
        const out = storableText(text);
        expect(unstorable.test(out)).toBe(false);
        expect(isStorableText(out)).toBe(true);
        expect(out.length).toBe(text.length);
      }),
      { seed, numRuns: 2000 },
    );
  });

  it('returns well-formed text without NUL unchanged', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme' }), (text) => {
        const clean = text.replaceAll('\0', '');
        expect(storableText(clean)).toBe(clean);
      }),
      { seed, numRuns: 2000 },
    );
  });

  it('replaces each offending code unit by U+FFFD', () => {
    expect(storableText('a\0b\ud800c\udc00d\ud83d\ude00')).toBe('a\uFFFDb\uFFFDc\uFFFDd\ud83d\ude00');
  });
});

describe('storableJson', () => {
  it('produces JSON whose every key and string is storable', () => {
    fc.assert(
      fc.property(hostileJson, (value) => {
        const json = storableJson(value);
        expect(json).toBeDefined();
        // JSON.stringify writes lone surrogates as \u escapes: parse back to see the strings.
        const strings: string[] = [];
        JSON.parse(json as string, (key, v) => {
          strings.push(key);
          if (typeof v === 'string') strings.push(v);
          return v;
        });
        for (const s of strings) expect(isStorableText(s)).toBe(true);
        expect(json).not.toMatch(/\\u0000|\\ud[89a-f][0-9a-f]{2}/i);
      }),
      { seed, numRuns: 500 },
    );
  });

  it('leaves storable JSON as JSON.stringify writes it', () => {
    fc.assert(
      fc.property(anyJson, (value) => {
        const plain = JSON.stringify(value);
        if (!/\\u0000|\\ud[89a-f]/i.test(plain)) expect(storableJson(value)).toBe(plain);
      }),
      { seed, numRuns: 500 },
    );
  });

  it('is undefined for what cannot be serialised (too deep), instead of throwing', () => {
    const depth = 100_000;
    expect(storableJson(JSON.parse(`${'['.repeat(depth)}${']'.repeat(depth)}`))).toBeUndefined();
  });
});
