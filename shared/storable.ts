/**
 * PostgreSQL refuses NUL in text (22021) and NUL or lone UTF-16 surrogates in jsonb (22P05, 22P02),
 * while JSON.parse, zod and AMQP happily produce them. Whatever untrusted text goes into a record
 * that must always be storable (a dead letter, a step failure) passes through here first; the
 * original bytes are kept elsewhere (the dead letter's `body`) when they matter.
 */

/** What an unstorable character becomes: U+FFFD, the replacement character. */
export const replacementCharacter = '\uFFFD';

const unstorableChars = /\0|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const unstorableCharsGlobal = new RegExp(unstorableChars.source, 'g');

/** True when PostgreSQL can store `text` as text and inside jsonb unchanged. */
export function isStorableText(text: string): boolean {
  return !unstorableChars.test(text);
}

/** `text` with NUL and lone surrogates replaced by U+FFFD; well-formed text comes back unchanged. */
export function storableText(text: string): string {
  return isStorableText(text) ? text : text.replace(unstorableCharsGlobal, replacementCharacter);
}

/**
 * JSON text PostgreSQL accepts as jsonb: strings and object keys made storable. Undefined when the
 * value cannot be serialised at all (nesting deeper than the JavaScript stack, a cycle, a BigInt):
 * the caller stores null and keeps the raw bytes instead.
 */
export function storableJson(value: unknown): string | undefined {
  try {
    return JSON.stringify(value, storableReplacer);
  } catch {
    return undefined;
  }
}

function storableReplacer(_key: string, value: unknown): unknown {
  if (typeof value === 'string') return storableText(value);
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    // JSON.stringify visits what the replacer returns: renaming the keys here sanitises them.
    const keys = Object.keys(value);
    if (keys.some((k) => !isStorableText(k))) {
      return Object.fromEntries(keys.map((k) => [storableText(k), (value as Record<string, unknown>)[k]]));
    }
  }
  return value;
}
