/**
 * Python's json.dumps, byte for byte: separators, indentation, key sorting and ensure_ascii string
 * escaping (pyJsonString), plus safeJson for error messages.
 *
 * It serializes only: it never parses JSON, and it throws Python's TypeError (never a CanopyError)
 * for what JSON cannot hold. Limits on numbers and key order are py-format.ts's.
 */

import { pyNumberStr } from './py-format.js';
import { describeType, isPlainObject, sortedEntries } from './py-values.js';

export interface PyJsonOptions {
  /** Python's `indent`: a number of spaces or the indent string itself; undefined for one line. */
  indent?: number | string;
  sortKeys?: boolean;
  /** `[item_separator, key_separator]`; Python's default depends on `indent`. */
  separators?: [string, string];
  ensureAscii?: boolean;
}

const JSON_ESCAPES: Readonly<Record<string, string>> = Object.freeze({
  '\\': '\\\\',
  '"': '\\"',
  '\b': '\\b',
  '\f': '\\f',
  '\n': '\\n',
  '\r': '\\r',
  '\t': '\\t',
});

function jsonEscape(ch: string): string {
  return JSON_ESCAPES[ch] ?? `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`;
}

/** A JSON string literal as Python writes it (ensure_ascii: everything outside ' '..'~' escaped). */
export function pyJsonString(s: string, ensureAscii = true): string {
  // Without the `u` flag these classes match UTF-16 code units, so astral characters come out as
  // surrogate pairs, like Python's.
  // biome-ignore lint/suspicious/noControlCharactersInRegex: json.dumps escapes exactly these
  const special = ensureAscii ? /[\\"]|[^ -~]/g : /[\\"\u0000-\u001f]/g;
  return `"${s.replace(special, jsonEscape)}"`;
}

function jsonNumber(n: number | bigint): string {
  if (typeof n === 'bigint') return n.toString();
  if (Number.isNaN(n)) return 'NaN';
  if (!Number.isFinite(n)) return n > 0 ? 'Infinity' : '-Infinity';
  return pyNumberStr(n);
}

class JsonWriter {
  private readonly stack: unknown[] = [];

  constructor(
    private readonly indent: string | undefined,
    private readonly itemSep: string,
    private readonly keySep: string,
    private readonly sortKeys: boolean,
    private readonly ensureAscii: boolean,
  ) {}

  encode(value: unknown, level: number): string {
    if (typeof value === 'string') return pyJsonString(value, this.ensureAscii);
    if (value === null) return 'null';
    if (typeof value === 'boolean') return value ? 'true' : 'false';
    if (typeof value === 'number' || typeof value === 'bigint') return jsonNumber(value);
    if (Array.isArray(value)) {
      return this.container(value, level, '[', ']', () => value.map((v) => this.encode(v, level + 1)));
    }
    if (isPlainObject(value)) {
      const entries = sortedEntries(value, this.sortKeys);
      const encodeEntry = ([k, v]: [string, unknown]) =>
        `${pyJsonString(k, this.ensureAscii)}${this.keySep}${this.encode(v, level + 1)}`;
      return this.container(value, level, '{', '}', () => entries.map(encodeEntry));
    }
    throw new TypeError(`Object of type ${describeType(value)} is not JSON serializable`);
  }

  private container(value: object, level: number, open: string, close: string, items: () => string[]) {
    if (this.stack.includes(value)) throw new TypeError('Circular reference detected');
    this.stack.push(value);
    const parts = items();
    this.stack.pop();
    if (parts.length === 0) return open + close;
    if (this.indent === undefined) return open + parts.join(this.itemSep) + close;
    const inner = `\n${this.indent.repeat(level + 1)}`;
    return `${open}${inner}${parts.join(this.itemSep + inner)}\n${this.indent.repeat(level)}${close}`;
  }
}

/**
 * Python's `json.dumps(value, indent=, sort_keys=, separators=, ensure_ascii=)`, byte for byte.
 * Throws a TypeError for values JSON cannot hold (undefined, functions, class instances) and for
 * circular structures. JS cannot tell 1.0 from 1, so integral floats print without `.0`.
 */
export function pyJsonDumps(value: unknown, opts: PyJsonOptions = {}): string {
  const indent =
    typeof opts.indent === 'number' ? ' '.repeat(Math.max(0, Math.trunc(opts.indent))) : opts.indent;
  const [itemSep, keySep] = opts.separators ?? (indent === undefined ? [', ', ': '] : [',', ': ']);
  const writer = new JsonWriter(indent, itemSep, keySep, opts.sortKeys ?? false, opts.ensureAscii ?? true);
  return writer.encode(value, 0);
}

/** A value made JSON-safe for error messages; never throws. */
export function safeJson(value: unknown): string {
  try {
    return pyJsonDumps(value, { ensureAscii: false });
  } catch {
    return value === undefined ? 'undefined' : String(value);
  }
}
