/**
 * Python's str() and repr() of plain JS values (what Jinja2 prints for `{{ value }}`), and Python's
 * printing of numbers, which py-json and py-yaml share.
 *
 * Known limits, all from JS values carrying less information than Python ones:
 * - numbers: a safe integer (|n| <= 2^53 - 1) prints as a Python int, any other number as a Python
 *   float (so YAML `1.0` prints `1`, and an integer beyond 2^53 prints like `1e+16`); bigint prints
 *   as an int.
 * - plain objects keep JS key order, where integer-like keys ("2", "10") come first.
 * It only formats: it must never parse or validate input, and it imports nothing of canopy's
 * outside py-values.
 */

import { isPlainObject } from './py-values.js';

// ---------------------------------------------------------------------------------------------
// Numbers

/**
 * Python's repr() of a float: shortest round-trip digits (JS and Python agree on them), fixed
 * notation when the decimal exponent is in [-4, 16), otherwise `d.ddde+XX`; always a `.` or an `e`.
 */
export function pyFloatRepr(n: number): string {
  if (Number.isNaN(n)) return 'nan';
  if (!Number.isFinite(n)) return n > 0 ? 'inf' : '-inf';
  if (n === 0) return Object.is(n, -0) ? '-0.0' : '0.0';
  const [mantissa = '', expText = '0'] = Math.abs(n).toExponential().split('e');
  const digits = mantissa.replace('.', '');
  const point = Number(expText) + 1;
  const sign = n < 0 ? '-' : '';
  if (point <= -4 || point > 16) {
    const exp = point - 1;
    const frac = digits.length > 1 ? `.${digits.slice(1)}` : '';
    const expDigits = String(Math.abs(exp)).padStart(2, '0');
    return `${sign}${digits[0] ?? ''}${frac}e${exp < 0 ? '-' : '+'}${expDigits}`;
  }
  if (point <= 0) return `${sign}0.${'0'.repeat(-point)}${digits}`;
  if (point >= digits.length) return `${sign}${digits}${'0'.repeat(point - digits.length)}.0`;
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

/** A JS number as Python prints it: a safe integer as an int, anything else as a float. */
export function pyNumberStr(n: number): string {
  return Number.isSafeInteger(n) ? String(n) : pyFloatRepr(n);
}

// ---------------------------------------------------------------------------------------------
// str() and repr()

const NON_PRINTABLE = /^[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]$/u;

function hexEscape(cp: number): string {
  if (cp < 0x100) return `\\x${cp.toString(16).padStart(2, '0')}`;
  if (cp < 0x10000) return `\\u${cp.toString(16).padStart(4, '0')}`;
  return `\\U${cp.toString(16).padStart(8, '0')}`;
}

/** Python's repr() of a str: `'it'`, `"it's"`, with \\n \\r \\t \\xNN escapes for unprintables. */
export function pyReprString(s: string): string {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    if (ch === quote || ch === '\\') out += `\\${ch}`;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (ch !== ' ' && NON_PRINTABLE.test(ch)) out += hexEscape(ch.codePointAt(0) ?? 0);
    else out += ch;
  }
  return out + quote;
}

function reprNumber(n: number | bigint): string {
  return typeof n === 'bigint' ? n.toString() : pyNumberStr(n);
}

function reprCollection(value: unknown[] | Record<string, unknown>, stack: unknown[]): string {
  if (stack.includes(value)) return Array.isArray(value) ? '[...]' : '{...}';
  stack.push(value);
  const text = Array.isArray(value)
    ? `[${value.map((item) => reprValue(item, stack)).join(', ')}]`
    : `{${Object.entries(value)
        .map(([k, v]) => `${pyReprString(k)}: ${reprValue(v, stack)}`)
        .join(', ')}}`;
  stack.pop();
  return text;
}

function reprValue(value: unknown, stack: unknown[]): string {
  if (typeof value === 'string') return pyReprString(value);
  if (typeof value === 'boolean') return value ? 'True' : 'False';
  if (value === null || value === undefined) return 'None';
  if (typeof value === 'number' || typeof value === 'bigint') return reprNumber(value);
  if (Array.isArray(value) || isPlainObject(value)) return reprCollection(value, stack);
  return String(value);
}

/** Python's repr(): strings quoted, lists `[1, 'a']`, dicts `{'a': True}`, None, True/False. */
export function pyRepr(value: unknown): string {
  return reprValue(value, []);
}

/** What Jinja2 prints for `{{ value }}`: Python's str() (a string as is, containers as their repr). */
export function pyStr(value: unknown): string {
  return typeof value === 'string' ? value : reprValue(value, []);
}
