/**
 * Message ids, types, errors and payloads come from whoever published the message: printed raw, an
 * ESC sequence recolours or clears the terminal, a CR overwrites the line, a bidi override reorders
 * what the reader sees. Human-readable output passes them through here; `--json` output does not
 * need to (JSON.stringify escapes controls and lone surrogates).
 */

// C0 and C1 controls and DEL; \n and \t are handled by the caller's choice of `multiline`.
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching controls is the point
const controls = /[\u0000-\u001f\u007f-\u009f]/;
// Bidi embeddings, overrides, isolates and marks; line/paragraph separators; lone surrogates.
const invisibles =
  /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const unsafe = new RegExp(`${controls.source}|${invisibles.source}`, 'g');

function escapeChar(char: string): string {
  const code = char.charCodeAt(0);
  return code <= 0xff
    ? `\\x${code.toString(16).padStart(2, '0')}`
    : `\\u${code.toString(16).padStart(4, '0')}`;
}

/**
 * `text` safe to write to a terminal: controls become `\x1b`-style escapes, bidi controls and lone
 * surrogates `\u202e`-style escapes. With `multiline`, newlines and tabs are kept (a stack trace, a
 * payload block); otherwise the result is always one line.
 */
export function printable(text: string, { multiline = false }: { multiline?: boolean } = {}): string {
  return text.replace(unsafe, (char) =>
    multiline && (char === '\n' || char === '\t') ? char : escapeChar(char),
  );
}

/** `text` cut to `max` characters, the cut marked with `…`. */
export function clip(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** A user-supplied value quoted for an error message: printable, and short enough to read. */
export function shown(value: string, max = 60): string {
  return `"${printable(clip(value, max))}"`;
}

const MAX_ERROR_LINE = 600;

/**
 * The one line every CLI error prints: `dw: <message>`, printable, and shortened in the middle when a
 * 100 kB argument was echoed in it (the start says what was wrong, the end how to fix it).
 */
export function errorLine(message: string): string {
  const text = message.replace(/^error: /, '');
  const short =
    text.length > MAX_ERROR_LINE
      ? `${text.slice(0, MAX_ERROR_LINE / 2)} … ${text.slice(text.length - MAX_ERROR_LINE / 3)}`
      : text;
  return `dw: ${printable(short)}\n`;
}

/**
 * A copy of `value` whose strings are all `printable` (one line each), for text renderers. Only the
 * first levels are copied: a renderer prints fields, not a saga's arbitrarily deep state.
 */
export function printableStrings<T>(value: T, depth = 6): T {
  if (typeof value === 'string') return printable(value) as T;
  if (depth === 0) return value;
  if (Array.isArray(value)) return value.map((item) => printableStrings(item, depth - 1)) as T;
  if (value !== null && typeof value === 'object' && !(value instanceof Date)) {
    return Object.fromEntries(
      Object.entries(value).map(([key, item]) => [key, printableStrings(item, depth - 1)]),
    ) as T;
  }
  return value;
}
