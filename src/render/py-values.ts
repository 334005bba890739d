/**
 * Python's semantics for the plain JS values YAML yields (strings, numbers, booleans, null, arrays
 * and plain objects): which values are dicts, truthiness, `==`, `<` ordering, and reading text as
 * int() and float() do. py-format, py-json, py-yaml and the filters build on it.
 *
 * Pure functions of their arguments: it never formats output and never throws a CanopyError (only
 * Python's TypeError, where Python raises one). It imports nothing.
 */

/** True for `{...}` objects (and Object.create(null)), false for arrays, class instances, etc. */
export function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null) return false;
  const proto: unknown = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** Compares strings by code point, as Python does (JS's `<` compares UTF-16 code units). */
export function comparePyStrings(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    // UTF-16 order differs from code point order only where a surrogate is involved.
    if ((x >= 0xd800 && x <= 0xdfff) || (y >= 0xd800 && y <= 0xdfff)) {
      return (a.codePointAt(i) ?? 0) - (b.codePointAt(i) ?? 0);
    }
    return x - y;
  }
  return a.length - b.length;
}

/** A dict's items, in insertion order or sorted by key as Python sorts strings. */
export function sortedEntries(obj: Record<string, unknown>, sortKeys: boolean): Array<[string, unknown]> {
  const entries = Object.entries(obj);
  return sortKeys ? entries.sort(([a], [b]) => comparePyStrings(a, b)) : entries;
}

/** A value's JS type for error messages: `undefined`, `string`, or an object's constructor name. */
export function describeType(value: unknown): string {
  if (value === undefined) return 'undefined';
  if (typeof value === 'object' && value !== null) return value.constructor?.name ?? 'object';
  return typeof value;
}

/** Python truthiness: None, False, 0, '', [] and {} are false. */
export function pyTruthy(value: unknown): boolean {
  if (value === undefined || value === null) return false;
  if (typeof value === 'boolean') return value;
  if (typeof value === 'number') return value !== 0;
  if (typeof value === 'bigint') return value !== 0n;
  if (typeof value === 'string' || value instanceof String) return String(value).length > 0;
  if (Array.isArray(value)) return value.length > 0;
  if (isPlainObject(value)) return Object.keys(value).length > 0;
  return true;
}

// ---------------------------------------------------------------------------------------------
// int() and float()

const PY_INT_PREFIXES: Readonly<Record<string, number>> = Object.freeze({ x: 16, o: 8, b: 2 });

/** Python's int(s, base), or undefined where Python raises ValueError. */
export function pyParseInt(s: string, base: number): number | undefined {
  if (!(base === 0 || (Number.isInteger(base) && base >= 2 && base <= 36))) return undefined;
  const m = /^([+-]?)(?:0([xXoObB])(_?))?([0-9A-Za-z_]*)$/.exec(s.trim());
  if (!m) return undefined;
  const [, sign, prefix, , body = ''] = m;
  let b = base;
  if (prefix !== undefined) {
    const prefixBase = PY_INT_PREFIXES[prefix.toLowerCase()] ?? 0;
    if (base !== 0 && base !== prefixBase) return pyParseDigits(sign, `0${prefix}${m[3]}${body}`, base);
    b = prefixBase;
  } else if (base === 0) {
    if (/^0/.test(body) && !/^0+(?:_0+)*$/.test(body)) return undefined;
    b = 10;
  }
  return pyParseDigits(sign, body, b);
}

function pyParseDigits(sign: string | undefined, body: string, base: number): number | undefined {
  if (!/^[0-9A-Za-z]+(?:_[0-9A-Za-z]+)*$/.test(body)) return undefined;
  let n = 0;
  for (const ch of body.replaceAll('_', '')) {
    const digit = Number.parseInt(ch, 36);
    if (digit >= base) return undefined;
    n = n * base + digit;
  }
  return sign === '-' ? -n : n;
}

const PY_FLOAT =
  /^[+-]?(?:(?:(?:\d(?:_?\d)*)?\.\d(?:_?\d)*|\d(?:_?\d)*\.?)(?:[eE][+-]?\d(?:_?\d)*)?|inf|infinity|nan)$/i;

/** Python's float(s), or undefined where Python raises ValueError. */
export function pyParseFloat(s: string): number | undefined {
  const t = s.trim();
  if (!PY_FLOAT.test(t)) return undefined;
  const lower = t.toLowerCase().replace(/^\+/, '');
  if (/^-?nan$/.test(lower)) return Number.NaN;
  if (/inf/.test(lower)) return lower.startsWith('-') ? -Infinity : Infinity;
  return Number(t.replaceAll('_', ''));
}

// ---------------------------------------------------------------------------------------------
// == and <

/** Python's type() name of a value, for TypeError messages. */
function typeName(value: unknown): string {
  if (value === null || value === undefined) return 'NoneType';
  if (typeof value === 'number') return Number.isInteger(value) ? 'int' : 'float';
  if (Array.isArray(value)) return 'list';
  if (isPlainObject(value)) return 'dict';
  return { string: 'str', boolean: 'bool', bigint: 'int' }[typeof value as string] ?? typeof value;
}

/** Python's `<` ordering for sorting; throws a TypeError where Python does. */
export function pyCompare(a: unknown, b: unknown): number {
  const numeric = (v: unknown) => typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint';
  if (numeric(a) && numeric(b)) {
    const [x, y] = [Number(a), Number(b)];
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (typeof a === 'string' && typeof b === 'string') return comparePyStrings(a, b);
  if (Array.isArray(a) && Array.isArray(b)) {
    for (let i = 0; i < Math.min(a.length, b.length); i++) {
      const d = pyCompare(a[i], b[i]);
      if (d !== 0) return d;
    }
    return a.length - b.length;
  }
  throw new TypeError(`'<' not supported between instances of '${typeName(a)}' and '${typeName(b)}'`);
}

/** Python's `==` for YAML values (1 == 1.0 == True; dicts compare regardless of key order). */
export function pyEqual(a: unknown, b: unknown): boolean {
  const numeric = (v: unknown) => typeof v === 'number' || typeof v === 'boolean';
  if (numeric(a) && numeric(b)) return Number(a) === Number(b);
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && a.every((item, i) => pyEqual(item, b[i]));
  }
  if (isPlainObject(a) && isPlainObject(b)) {
    const keys = Object.keys(a);
    return (
      keys.length === Object.keys(b).length && keys.every((k) => Object.hasOwn(b, k) && pyEqual(a[k], b[k]))
    );
  }
  return a === b || (a == null && b == null);
}
