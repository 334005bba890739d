/**
 * The Ansible filters canopy adds to nunjucks, with Ansible's names, arguments and semantics:
 * ansibleFilters() returns them for `env.addFilter(name, fn)`. Each takes the value first, then the
 * filter's arguments, positionally or as nunjucks keyword arguments (a trailing object marked
 * `__keywords: true`). Every failure throws CanopyError('RENDER_FILTER_FAILED') with a message that
 * starts with the filter's name. Python regular expressions are translated to JS here too.
 *
 * Known differences from Ansible (see also py-format.ts for number and YAML limits):
 * - b64decode is strict: characters outside the base64 alphabet (whitespace aside), bad padding and
 *   bytes that are not valid text in the chosen encoding throw; Python skips stray characters and
 *   Ansible passes undecodable bytes through.
 * - regex: `\b`, `\B`, `\d`, `\D`, `\w` follow Python's Unicode definitions; `\s`, `\S` and `\W`
 *   inside a character class follow JS's. Scoped inline flags `(?i:...)`, conditionals, atomic
 *   groups and possessive quantifiers are not supported (they throw).
 * - regex_search returns undefined where Ansible returns None.
 * - a value that is undefined (a missing variable) makes most filters throw, as Ansible's
 *   StrictUndefined does; default/d, mandatory, ternary, bool and int accept it.
 */

import { CanopyError } from '../errors/index.js';
import {
  comparePyStrings,
  isPlainObject,
  type PyJsonOptions,
  type PyYamlOptions,
  pyJsonDumps,
  pyStr,
  pyYamlDump,
  safeJson,
} from './py-format.js';

// biome-ignore lint/suspicious/noExplicitAny: nunjucks filters take any arguments
export type FilterFunction = (...args: any[]) => unknown;

type Dict = Record<string, unknown>;

// ---------------------------------------------------------------------------------------------
// Errors and arguments

function fail(filter: string, message: string, cause?: unknown): never {
  throw new CanopyError('RENDER_FILTER_FAILED', `${filter}: ${message}`, { filter, cause });
}

/** A value for an error message: JSON-like, cut to about 60 characters. */
export function shown(value: unknown): string {
  const text = typeof value === 'string' ? value : safeJson(value);
  const cut = [...text].length > 60 ? `${[...text].slice(0, 57).join('')}...` : text;
  return typeof value === 'string' ? JSON.stringify(cut) : cut;
}

function defined(filter: string, value: unknown, expected: string): unknown {
  if (value === undefined) fail(filter, `the value is undefined; expected ${expected}`);
  return value;
}

/** The filter's input as text: Ansible's to_text(value, nonstring='simplerepr'). */
function text(filter: string, value: unknown): string {
  return pyStr(defined(filter, value, 'a string'));
}

/** The default of a parameter that has none: leaving it out is an error. */
const REQUIRED: unique symbol = Symbol('required');

/** Splits nunjucks's trailing keyword-argument object (`__keywords: true`) from the positional ones. */
function splitKeywords(args: readonly unknown[]): { positional: unknown[]; keywords: Dict } {
  const last = args[args.length - 1];
  if (isPlainObject(last) && Object.hasOwn(last, '__keywords')) {
    const { __keywords: _, ...keywords } = last;
    return { positional: args.slice(0, -1), keywords };
  }
  return { positional: [...args], keywords: {} };
}

/**
 * Binds a filter's arguments (after the value) to its parameters, given in order with their
 * defaults, like Python does: positionally first, then by keyword. `positionalMax` caps how many may
 * be given positionally (Python's keyword-only parameters).
 */
function bindArgs<P extends Dict>(
  filter: string,
  args: readonly unknown[],
  params: P,
  positionalMax = Object.keys(params).length,
): Record<keyof P, unknown> {
  const { positional, keywords } = splitKeywords(args);
  const names = Object.keys(params);
  if (positional.length > positionalMax) {
    fail(filter, `takes at most ${positionalMax} argument(s) after the value, got ${positional.length}`);
  }
  const bound: Dict = {};
  names.forEach((name, i) => {
    bound[name] = i < positional.length ? positional[i] : params[name];
  });
  for (const [name, value] of Object.entries(keywords)) {
    const index = names.indexOf(name);
    if (index < 0) fail(filter, `unexpected keyword argument '${name}' (expected: ${names.join(', ')})`);
    if (index < positional.length) fail(filter, `got multiple values for argument '${name}'`);
    bound[name] = value;
  }
  const missing = names.find((name) => bound[name] === REQUIRED);
  if (missing !== undefined) fail(filter, `missing required argument '${missing}'`);
  return bound as Record<keyof P, unknown>;
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

function intArg(filter: string, name: string, value: unknown): number {
  if (typeof value === 'boolean') return Number(value);
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    fail(filter, `argument '${name}' must be an integer, got ${shown(value)}`);
  }
  return value;
}

function optionalIntArg(filter: string, name: string, value: unknown): number | undefined {
  return value === undefined || value === null ? undefined : intArg(filter, name, value);
}

function stringArg(filter: string, name: string, value: unknown): string {
  if (typeof value !== 'string' && !(value instanceof String)) {
    fail(filter, `argument '${name}' must be a string, got ${shown(value)}`);
  }
  return String(value);
}

// ---------------------------------------------------------------------------------------------
// to_json, to_nice_json, to_yaml, to_nice_yaml

function jsonIndent(filter: string, value: unknown): number | string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return value;
  return intArg(filter, 'indent', value);
}

function separatorsArg(filter: string, value: unknown): [string, string] | undefined {
  if (value === undefined || value === null) return undefined;
  if (Array.isArray(value) && value.length === 2 && value.every((s) => typeof s === 'string')) {
    return [value[0] as string, value[1] as string];
  }
  return fail(filter, `argument 'separators' must be a list of two strings, got ${shown(value)}`);
}

function dumpJson(filter: string, value: unknown, opts: PyJsonOptions): string {
  defined(filter, value, 'a value to serialize');
  try {
    return pyJsonDumps(value, opts);
  } catch (err) {
    return fail(filter, `cannot serialize ${shown(value)}: ${(err as Error).message}`, err);
  }
}

function toJson(value: unknown, ...args: unknown[]): string {
  const a = bindArgs(
    'to_json',
    args,
    { indent: undefined, sort_keys: false, separators: undefined, ensure_ascii: true },
    0,
  );
  return dumpJson('to_json', value, {
    indent: jsonIndent('to_json', a.indent),
    sortKeys: pyTruthy(a.sort_keys),
    separators: separatorsArg('to_json', a.separators),
    ensureAscii: pyTruthy(a.ensure_ascii),
  });
}

function toNiceJson(value: unknown, ...args: unknown[]): string {
  const a = bindArgs('to_nice_json', args, { indent: 4, sort_keys: true, ensure_ascii: true }, 2);
  return dumpJson('to_nice_json', value, {
    indent: jsonIndent('to_nice_json', a.indent),
    sortKeys: pyTruthy(a.sort_keys),
    separators: [',', ': '],
    ensureAscii: pyTruthy(a.ensure_ascii),
  });
}

function dumpYaml(filter: string, value: unknown, opts: PyYamlOptions): string {
  defined(filter, value, 'a value to serialize');
  try {
    return pyYamlDump(value, opts);
  } catch (err) {
    return fail(filter, `cannot serialize ${shown(value)}: ${(err as Error).message}`, err);
  }
}

function yamlOptions(filter: string, a: Dict): PyYamlOptions {
  const flow = a.default_flow_style;
  return {
    indent: optionalIntArg(filter, 'indent', a.indent),
    width: optionalIntArg(filter, 'width', a.width),
    sortKeys: pyTruthy(a.sort_keys),
    defaultFlowStyle: flow === undefined || flow === null ? null : pyTruthy(flow),
    explicitStart: pyTruthy(a.explicit_start),
  };
}

/** PyYAML's yaml.dump(value, allow_unicode=True, default_flow_style=None, sort_keys=True). */
function toYaml(value: unknown, ...args: unknown[]): string {
  const params = {
    indent: undefined,
    width: undefined,
    sort_keys: true,
    default_flow_style: null,
    explicit_start: false,
  };
  return dumpYaml('to_yaml', value, yamlOptions('to_yaml', bindArgs('to_yaml', args, params, 0)));
}

/** PyYAML's yaml.dump(value, indent=4, allow_unicode=True, default_flow_style=False, sort_keys=True). */
function toNiceYaml(value: unknown, ...args: unknown[]): string {
  const params = { indent: 4, width: undefined, sort_keys: true, explicit_start: false };
  const a = bindArgs('to_nice_yaml', args, params, 1);
  return dumpYaml('to_nice_yaml', value, { ...yamlOptions('to_nice_yaml', a), defaultFlowStyle: false });
}

// ---------------------------------------------------------------------------------------------
// b64encode, b64decode

type TextEncoding = 'utf-8' | 'utf-16le' | 'latin1' | 'ascii';

function encodingArg(filter: string, value: unknown): TextEncoding {
  const name = stringArg(filter, 'encoding', value).toLowerCase().replaceAll('_', '-');
  if (['utf-8', 'utf8', 'u8'].includes(name)) return 'utf-8';
  if (['utf-16-le', 'utf-16le', 'utf16le'].includes(name)) return 'utf-16le';
  if (['latin-1', 'latin1', 'iso-8859-1', 'iso8859-1'].includes(name)) return 'latin1';
  if (['ascii', 'us-ascii'].includes(name)) return 'ascii';
  return fail(filter, `unsupported encoding ${shown(value)}; expected utf-8, utf-16-le, latin-1 or ascii`);
}

function encodeText(filter: string, s: string, encoding: TextEncoding): Buffer {
  const limit = encoding === 'latin1' ? 0xff : encoding === 'ascii' ? 0x7f : undefined;
  if (limit !== undefined && [...s].some((ch) => (ch.codePointAt(0) ?? 0) > limit)) {
    fail(filter, `${shown(s)} cannot be encoded as ${encoding}`);
  }
  if (encoding === 'utf-8' && /\p{Cs}/u.test(s)) fail(filter, `${shown(s)} holds a lone surrogate`);
  return Buffer.from(s, encoding === 'utf-8' ? 'utf8' : encoding);
}

function decodeText(filter: string, bytes: Buffer, encoding: TextEncoding, input: string): string {
  if (encoding === 'latin1') return bytes.toString('latin1');
  if (encoding === 'ascii' && bytes.some((b) => b > 0x7f)) {
    fail(filter, `${shown(input)} decodes to bytes that are not valid ascii`);
  }
  try {
    return new TextDecoder(encoding === 'ascii' ? 'utf-8' : encoding, { fatal: true }).decode(bytes);
  } catch (err) {
    return fail(filter, `${shown(input)} decodes to bytes that are not valid ${encoding} text`, err);
  }
}

function b64encode(value: unknown, ...args: unknown[]): string {
  const { encoding } = bindArgs('b64encode', args, { encoding: 'utf-8' });
  const input = text('b64encode', value);
  return encodeText('b64encode', input, encodingArg('b64encode', encoding)).toString('base64');
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function b64decode(value: unknown, ...args: unknown[]): string {
  const { encoding } = bindArgs('b64decode', args, { encoding: 'utf-8' });
  const input = text('b64decode', value);
  const compact = input.replace(/[ \t\n\r\f\v]/g, '');
  if (!BASE64.test(compact)) {
    fail('b64decode', `${shown(input)} is not valid base64 (expected A-Z a-z 0-9 + / and = padding)`);
  }
  return decodeText('b64decode', Buffer.from(compact, 'base64'), encodingArg('b64decode', encoding), input);
}

// ---------------------------------------------------------------------------------------------
// Python regular expressions -> JS

class PyRegexError extends Error {}

/** Python's `\w` for str patterns: letters, numbers (any script) and `_`. */
const PY_WORD = '\\p{L}\\p{N}_';
const UNICODE_ESCAPES: Readonly<Record<string, string>> = Object.freeze({
  d: '\\p{Nd}',
  D: '\\P{Nd}',
  w: `[${PY_WORD}]`,
  W: `[^${PY_WORD}]`,
  b: `(?:(?<=[${PY_WORD}])(?![${PY_WORD}])|(?<![${PY_WORD}])(?=[${PY_WORD}]))`,
  B: `(?:(?<=[${PY_WORD}])(?=[${PY_WORD}])|(?<![${PY_WORD}])(?![${PY_WORD}]))`,
});
const UNICODE_CLASS_ESCAPES: Readonly<Record<string, string>> = Object.freeze({
  d: '\\p{Nd}',
  D: '\\P{Nd}',
  w: PY_WORD,
});
const SIMPLE_ESCAPES: Readonly<Record<string, string>> = Object.freeze({
  a: '\\x07',
  f: '\\f',
  n: '\\n',
  r: '\\r',
  t: '\\t',
  v: '\\v',
});
const HEX_ESCAPE_LENGTH: Readonly<Record<string, number>> = Object.freeze({ x: 2, u: 4, U: 8 });

function hex(cp: number, width: number): string {
  return cp.toString(16).padStart(width, '0');
}

/** A literal character in JS regex syntax (inside a class or not), valid with and without `u`. */
function jsLiteral(cp: number, inClass: boolean): string {
  const ch = String.fromCodePoint(cp);
  if ('^$\\.*+?()[]{}|/'.includes(ch) || (inClass && ch === '-')) return `\\${ch}`;
  if (cp < 0x20 || cp === 0x7f) return `\\x${hex(cp, 2)}`;
  if (cp >= 0xd800 && cp <= 0xdfff) return `\\u${hex(cp, 4)}`;
  return ch;
}

interface PyRegexFlags {
  ignorecase: boolean;
  multiline: boolean;
  dotall: boolean;
  verbose: boolean;
  ascii: boolean;
}

export interface TranslatedRegex {
  source: string;
  flags: PyRegexFlags;
  groups: number;
  names: Map<string, number>;
}

/** Translates Python `re` syntax to JS RegExp syntax, one pass over the pattern's code points. */
class PyRegexTranslator {
  private readonly src: string[];
  private i = 0;
  private out = '';
  private groups = 0;
  private readonly names = new Map<string, number>();
  private readonly open: number[] = [];

  constructor(
    pattern: string,
    private readonly flags: PyRegexFlags,
    private readonly unicode: boolean,
  ) {
    this.src = Array.from(pattern);
  }

  translate(): TranslatedRegex {
    this.globalFlags();
    while (this.i < this.src.length) this.atom();
    if (this.open.length > 0) throw new PyRegexError('missing ), unterminated subpattern');
    return { source: this.out, flags: this.flags, groups: this.groups, names: this.names };
  }

  private peek(offset = 0): string | undefined {
    return this.src[this.i + offset];
  }

  private take(): string {
    const ch = this.src[this.i++];
    if (ch === undefined) throw new PyRegexError('unexpected end of pattern');
    return ch;
  }

  private startsWith(s: string): boolean {
    return this.src.slice(this.i, this.i + s.length).join('') === s;
  }

  /** `(?aimsx)` groups at the very start set flags for the whole pattern. */
  private globalFlags(): void {
    for (;;) {
      const m = /^\(\?([aiLmsux]+)\)/.exec(this.src.slice(this.i, this.i + 12).join(''));
      if (!m?.[1]) return;
      for (const letter of m[1]) this.setFlag(letter);
      this.i += m[0].length;
    }
  }

  private setFlag(letter: string): void {
    if (letter === 'L') throw new PyRegexError("bad inline flag: cannot use 'L' flag with a str pattern");
    if (letter === 'i') this.flags.ignorecase = true;
    if (letter === 'm') this.flags.multiline = true;
    if (letter === 's') this.flags.dotall = true;
    if (letter === 'x') this.flags.verbose = true;
    if (letter === 'a') this.flags.ascii = true;
  }

  private atom(): void {
    const ch = this.take();
    if (this.flags.verbose && ' \t\n\r\v\f'.includes(ch)) return;
    if (this.flags.verbose && ch === '#') {
      while (this.i < this.src.length && this.peek() !== '\n') this.i++;
      return;
    }
    if (ch === '\\') this.out += this.escape(false);
    else if (ch === '[') this.characterClass();
    else if (ch === '(') this.group();
    else if (ch === ')') this.closeGroup();
    else if (ch === '{') this.out += this.repeat();
    else if (ch === '}' || ch === ']') this.out += `\\${ch}`;
    else if (ch === '.') this.out += this.flags.dotall ? '[\\s\\S]' : '[^\\n]';
    else if (ch === '^') this.out += this.flags.multiline ? '(?<![^\\n])' : '^';
    else if (ch === '$') this.out += this.flags.multiline ? '(?![^\\n])' : '(?=\\n?(?![\\s\\S]))';
    else this.out += ch;
  }

  // -- escapes

  private escape(inClass: boolean): string {
    const c = this.peek();
    if (c === undefined) throw new PyRegexError('bad escape (end of pattern)');
    this.i++;
    if (/[0-9]/.test(c)) return inClass ? this.classOctal(c) : this.numericEscape(c);
    if (/[A-Za-z]/.test(c)) return this.letterEscape(c, inClass);
    return jsLiteral(c.codePointAt(0) ?? 0, inClass);
  }

  private takeWhile(max: number, re: RegExp): string {
    let s = '';
    while (s.length < max && this.peek() !== undefined && re.test(this.peek() ?? '')) s += this.take();
    return s;
  }

  private octal(digits: string, inClass: boolean): string {
    const cp = Number.parseInt(digits, 8);
    if (cp > 0o377) throw new PyRegexError(`octal escape value \\${digits} outside of range 0-0o377`);
    return jsLiteral(cp, inClass);
  }

  private classOctal(c: string): string {
    if (!/[0-7]/.test(c)) throw new PyRegexError(`bad escape \\${c}`);
    return this.octal(c + this.takeWhile(2, /[0-7]/), true);
  }

  /** `\0`, `\012` (octal) or `\1`..`\99` (a backreference), decided as Python's sre_parse does. */
  private numericEscape(c: string): string {
    if (c === '0') return this.octal(c + this.takeWhile(2, /[0-7]/), false);
    let digits = c;
    if (/[0-9]/.test(this.peek() ?? '')) {
      digits += this.take();
      if (/^[0-7]{2}$/.test(digits) && /[0-7]/.test(this.peek() ?? '')) {
        return this.octal(digits + this.take(), false);
      }
    }
    return this.backreference(Number(digits));
  }

  private backreference(group: number): string {
    if (group > this.groups) throw new PyRegexError(`invalid group reference ${group}`);
    if (this.open.includes(group)) throw new PyRegexError('cannot refer to an open group');
    return `(?:\\${group})`;
  }

  private letterEscape(c: string, inClass: boolean): string {
    const hexLength = HEX_ESCAPE_LENGTH[c];
    if (hexLength !== undefined) return this.hexEscape(c, hexLength, inClass);
    const simple = SIMPLE_ESCAPES[c];
    if (simple !== undefined) return simple;
    if (inClass) return this.classLetterEscape(c);
    if (c === 'A') return '(?<![\\s\\S])';
    if (c === 'Z') return '(?![\\s\\S])';
    if ('bBdDwW'.includes(c)) return this.unicodeClasses() ? (UNICODE_ESCAPES[c] ?? '') : `\\${c}`;
    if ('sS'.includes(c)) return `\\${c}`;
    throw new PyRegexError(`bad escape \\${c}`);
  }

  private classLetterEscape(c: string): string {
    if (c === 'b') return '\\x08';
    if ('dDw'.includes(c) && this.unicodeClasses()) return UNICODE_CLASS_ESCAPES[c] ?? '';
    if ('dDwWsS'.includes(c)) return `\\${c}`;
    throw new PyRegexError(`bad escape \\${c}`);
  }

  private unicodeClasses(): boolean {
    return this.unicode && !this.flags.ascii;
  }

  private hexEscape(c: string, length: number, inClass: boolean): string {
    const digits = this.takeWhile(length, /[0-9a-fA-F]/);
    if (digits.length !== length) throw new PyRegexError(`incomplete escape \\${c}${digits}`);
    const cp = Number.parseInt(digits, 16);
    if (cp > 0x10ffff) throw new PyRegexError(`bad escape \\${c}${digits}`);
    return jsLiteral(cp, inClass);
  }

  // -- classes, groups, repeats

  private characterClass(): void {
    this.out += '[';
    if (this.peek() === '^') this.out += this.take();
    if (this.peek() === ']') {
      this.i++;
      this.out += '\\]';
    }
    for (;;) {
      const ch = this.peek();
      if (ch === undefined) throw new PyRegexError('unterminated character set');
      this.i++;
      if (ch === ']') break;
      if (ch === '\\') this.out += this.escape(true);
      else this.out += ch === '[' ? '\\[' : ch;
    }
    this.out += ']';
  }

  private group(): void {
    if (this.peek() !== '?') {
      this.groups++;
      this.open.push(this.groups);
      this.out += '(';
      return;
    }
    this.i++;
    if (this.startsWith('P<')) this.namedGroup();
    else if (this.startsWith('P=')) this.namedBackreference();
    else if (this.startsWith('#')) this.comment();
    else if ([':', '=', '!', '<=', '<!'].some((s) => this.startsWith(s))) {
      this.open.push(0);
      this.out += '(?';
    } else throw new PyRegexError(this.unsupportedGroup());
  }

  private unsupportedGroup(): string {
    const next = this.peek() ?? '';
    if (/[aiLmsux-]/.test(next)) {
      const rest = this.src.slice(this.i).join('');
      if (/^[aiLmsux]+\)/.test(rest)) return 'global flags not at the start of the expression';
      return 'scoped inline flags (?flags:...) are not supported';
    }
    if (next === '(') return 'conditional groups (?(...)...) are not supported';
    if (next === '>') return 'atomic groups (?>...) are not supported';
    return `unknown extension ?${next}`;
  }

  private groupName(terminator: string): string {
    let name = '';
    while (this.peek() !== terminator) {
      if (this.peek() === undefined) throw new PyRegexError(`missing ${terminator}, unterminated name`);
      name += this.take();
    }
    this.i++;
    if (!/^[\p{L}\p{Nl}_][\p{L}\p{Nl}\p{Mn}\p{Mc}\p{Nd}\p{Pc}]*$/u.test(name)) {
      throw new PyRegexError(`bad character in group name '${name}'`);
    }
    return name;
  }

  private namedGroup(): void {
    this.i += 2;
    const name = this.groupName('>');
    if (this.names.has(name)) throw new PyRegexError(`redefinition of group name '${name}'`);
    this.groups++;
    this.names.set(name, this.groups);
    this.open.push(this.groups);
    this.out += `(?<${name}>`;
  }

  private namedBackreference(): void {
    this.i += 2;
    const name = this.groupName(')');
    const group = this.names.get(name);
    if (group === undefined) throw new PyRegexError(`unknown group name '${name}'`);
    if (this.open.includes(group)) throw new PyRegexError('cannot refer to an open group');
    this.out += `(?:\\k<${name}>)`;
  }

  private comment(): void {
    while (this.peek() !== ')') {
      if (this.peek() === undefined) throw new PyRegexError('missing ), unterminated comment');
      this.i++;
    }
    this.i++;
  }

  private closeGroup(): void {
    if (this.open.pop() === undefined) throw new PyRegexError('unbalanced parenthesis');
    this.out += ')';
  }

  /** After `{`: a repeat `{m}`, `{m,}`, `{,n}`, `{m,n}` (Python allows `{,n}`), else a literal `{`. */
  private repeat(): string {
    const m = /^(\d*)(,?)(\d*)\}/.exec(this.src.slice(this.i, this.i + 40).join(''));
    if (!m || (m[1] === '' && m[2] === '' && m[3] === '')) return '\\{';
    const [all, lo = '', comma = '', hi = ''] = m;
    if (comma === '' && hi !== '') return '\\{';
    this.i += all.length;
    if (comma === '') return `{${lo}}`;
    if (lo !== '' && hi !== '' && Number(lo) > Number(hi)) {
      throw new PyRegexError('min repeat greater than max repeat');
    }
    return `{${lo || '0'},${hi}}`;
  }
}

export interface PyRegexOptions {
  ignorecase?: boolean;
  multiline?: boolean;
  /** Adds the `g` flag (for replace-all and find-all). */
  global?: boolean;
}

export interface CompiledPyRegex {
  regex: RegExp;
  groups: number;
  names: Map<string, number>;
}

function build(pattern: string, opts: PyRegexOptions, unicode: boolean): CompiledPyRegex {
  const flags: PyRegexFlags = {
    ignorecase: opts.ignorecase ?? false,
    multiline: opts.multiline ?? false,
    dotall: false,
    verbose: false,
    ascii: false,
  };
  const t = new PyRegexTranslator(pattern, flags, unicode).translate();
  const jsFlags = `${t.flags.ignorecase ? 'i' : ''}${opts.global ? 'g' : ''}${unicode ? 'u' : ''}`;
  return { regex: new RegExp(t.source, jsFlags), groups: t.groups, names: t.names };
}

/**
 * Compiles a Python regular expression to a JS RegExp: with the `u` flag (code point semantics,
 * Unicode `\w \d \b`) when JS accepts the translation so, else without it. Throws PyRegexError or
 * SyntaxError for a pattern Python or JS rejects.
 */
export function compilePyRegex(pattern: string, opts: PyRegexOptions = {}): CompiledPyRegex {
  try {
    return build(pattern, opts, true);
  } catch (err) {
    if (!(err instanceof SyntaxError)) throw err;
    try {
      return build(pattern, opts, false);
    } catch {
      throw err;
    }
  }
}

function compileFor(filter: string, pattern: unknown, opts: PyRegexOptions): CompiledPyRegex {
  const source = stringArg(filter, 'pattern', pattern);
  try {
    return compilePyRegex(source, opts);
  } catch (err) {
    return fail(filter, `${shown(source)} is not a valid regular expression: ${(err as Error).message}`, err);
  }
}

// ---------------------------------------------------------------------------------------------
// Replacement templates (Python's re.sub `\1`, `\g<name>` syntax)

/** A parsed replacement: literal text, or the number of the group to insert. */
type TemplatePart = string | number;

const TEMPLATE_ESCAPES: Readonly<Record<string, string>> = Object.freeze({
  a: '\x07',
  b: '\b',
  f: '\f',
  n: '\n',
  r: '\r',
  t: '\t',
  v: '\v',
  '\\': '\\',
});

function templateGroup(ref: string, re: CompiledPyRegex): number {
  if (ref === '') throw new PyRegexError('missing group name');
  const group = /^\d+$/.test(ref) ? Number(ref) : re.names.get(ref);
  if (group === undefined) throw new PyRegexError(`unknown group name '${ref}'`);
  if (group > re.groups) throw new PyRegexError(`invalid group reference ${group}`);
  return group;
}

/** One `\...` escape of a template at `i` (the backslash): [part, length consumed]. */
function templateEscape(repl: string, i: number, re: CompiledPyRegex): [TemplatePart, number] {
  const c = repl[i + 1];
  if (c === undefined) throw new PyRegexError('bad escape (end of pattern)');
  if (c === 'g') {
    const m = /^\\g<([^>]*)>/.exec(repl.slice(i));
    if (!m) throw new PyRegexError('missing <, or unterminated name, after \\g');
    return [templateGroup(m[1] ?? '', re), m[0].length];
  }
  const octal = /^\\(0[0-7]{0,2}|[0-7]{3})/.exec(repl.slice(i));
  if (octal?.[1]) return [String.fromCharCode(Number.parseInt(octal[1], 8) & 0xff), octal[0].length];
  const digits = /^\\([1-9][0-9]?)/.exec(repl.slice(i));
  if (digits?.[1]) return [templateGroup(digits[1], re), digits[0].length];
  const escaped = TEMPLATE_ESCAPES[c];
  if (escaped !== undefined) return [escaped, 2];
  if (/[A-Za-z]/.test(c)) throw new PyRegexError(`bad escape \\${c}`);
  return [`\\${c}`, 2];
}

function parseTemplate(repl: string, re: CompiledPyRegex): TemplatePart[] {
  const parts: TemplatePart[] = [];
  let literal = '';
  for (let i = 0; i < repl.length; ) {
    if (repl[i] !== '\\') {
      literal += repl[i++];
      continue;
    }
    const [part, length] = templateEscape(repl, i, re);
    i += length;
    if (typeof part === 'string') literal += part;
    else {
      parts.push(literal, part);
      literal = '';
    }
  }
  parts.push(literal);
  return parts;
}

function expandTemplate(parts: TemplatePart[], match: readonly unknown[]): string {
  return parts.map((part) => (typeof part === 'string' ? part : String(match[part] ?? ''))).join('');
}

// ---------------------------------------------------------------------------------------------
// regex_replace, regex_search, regex_findall, regex_escape

function regexReplace(value: unknown, ...args: unknown[]): string {
  const f = 'regex_replace';
  const a = bindArgs(f, args, {
    pattern: '',
    replacement: '',
    ignorecase: false,
    multiline: false,
    count: 0,
    mandatory_count: 0,
  });
  const input = text(f, value);
  const re = compileFor(f, a.pattern, {
    ignorecase: pyTruthy(a.ignorecase),
    multiline: pyTruthy(a.multiline),
    global: true,
  });
  let template: TemplatePart[];
  try {
    template = parseTemplate(stringArg(f, 'replacement', a.replacement), re);
  } catch (err) {
    if (err instanceof CanopyError) throw err;
    return fail(f, `bad replacement ${shown(a.replacement)}: ${(err as Error).message}`, err);
  }
  const count = intArg(f, 'count', a.count);
  let subs = 0;
  const output = input.replace(re.regex, (...m: unknown[]) => {
    if (count > 0 && subs >= count) return String(m[0]);
    subs++;
    return expandTemplate(template, m);
  });
  const mandatory = intArg(f, 'mandatory_count', a.mandatory_count);
  if (mandatory !== 0 && mandatory !== subs) {
    fail(f, `expected ${mandatory} substitution(s) of ${shown(a.pattern)} in ${shown(input)}, made ${subs}`);
  }
  return output;
}

/** A regex_search group argument: `'\\1'` or `'\\g<name>'`. */
function searchGroup(arg: unknown, re: CompiledPyRegex): number {
  const s = stringArg('regex_search', 'group', arg);
  const m = /^\\g<(\S+)>/.exec(s) ?? /^\\(\d+)/.exec(s);
  if (!m?.[1]) fail('regex_search', `unknown argument ${shown(arg)}; expected '\\\\N' or '\\\\g<name>'`);
  try {
    return templateGroup(m[1], re);
  } catch (err) {
    return fail('regex_search', `bad group ${shown(arg)}: ${(err as Error).message}`, err);
  }
}

/** The first match, or the listed groups of it; undefined when nothing matches (Ansible: None). */
function regexSearch(value: unknown, ...args: unknown[]): unknown {
  const f = 'regex_search';
  const { positional, keywords } = splitKeywords(args);
  const [pattern, ...groupArgs] = positional;
  const kw = bindArgs(f, [{ ...keywords, __keywords: true }], { ignorecase: false, multiline: false }, 0);
  if (pattern === undefined) fail(f, "missing required argument 'regex'");
  const input = text(f, value);
  const re = compileFor(f, pattern, {
    ignorecase: pyTruthy(kw.ignorecase),
    multiline: pyTruthy(kw.multiline),
  });
  const groups = groupArgs.map((arg) => searchGroup(arg, re));
  const match = re.regex.exec(input);
  if (match === null) return undefined;
  if (groups.length === 0) return match[0];
  return groups.map((g) => match[g] ?? null);
}

/** Python's re.findall: whole matches, group 1, or lists of all groups, depending on the groups. */
function regexFindall(value: unknown, ...args: unknown[]): unknown[] {
  const f = 'regex_findall';
  const a = bindArgs(f, args, { regex: REQUIRED, multiline: false, ignorecase: false });
  const input = text(f, value);
  const re = compileFor(f, a.regex, {
    ignorecase: pyTruthy(a.ignorecase),
    multiline: pyTruthy(a.multiline),
    global: true,
  });
  return [...input.matchAll(re.regex)].map((m) => {
    if (re.groups === 0) return m[0];
    if (re.groups === 1) return m[1] ?? '';
    return m.slice(1).map((g) => g ?? '');
  });
}

/** Python's re.escape (3.7+), or a POSIX basic regex escape. */
function regexEscape(value: unknown, ...args: unknown[]): string {
  const f = 'regex_escape';
  const { re_type } = bindArgs(f, args, { re_type: 'python' });
  const input = text(f, value);
  if (re_type === 'python') return input.replace(/[()[\]{}?*+\-|^$\\.&~# \t\n\r\v\f]/g, '\\$&');
  if (re_type === 'posix_basic') return input.replace(/[\].[^*$]/g, '\\$&');
  if (re_type === 'posix_extended') return fail(f, 'regex type posix_extended is not yet implemented');
  return fail(f, `invalid regex type ${shown(re_type)}; expected 'python' or 'posix_basic'`);
}

// ---------------------------------------------------------------------------------------------
// mandatory, default, ternary, bool, int

/** `mandatory(msg?, name?)`: the caller may pass the variable's name, for the default message. */
function mandatory(value: unknown, ...args: unknown[]): unknown {
  const { msg, name } = bindArgs('mandatory', args, { msg: undefined, name: undefined });
  if (value !== undefined) return value;
  const named = typeof name === 'string' && name !== '';
  const subject = named ? { filter: 'mandatory', variable: name } : { filter: 'mandatory' };
  const message =
    msg !== undefined && msg !== null
      ? pyStr(msg)
      : `Mandatory variable ${named ? `'${name}' ` : ''}not defined.`;
  throw new CanopyError('RENDER_FILTER_FAILED', message, subject);
}

function defaultFilter(value: unknown, ...args: unknown[]): unknown {
  const a = bindArgs('default', args, { default_value: '', boolean: false });
  if (value === undefined || (pyTruthy(a.boolean) && !pyTruthy(value))) return a.default_value;
  return value;
}

function ternary(value: unknown, ...args: unknown[]): unknown {
  const a = bindArgs('ternary', args, { true_val: REQUIRED, false_val: REQUIRED, none_val: null });
  if (value === null && a.none_val !== null && a.none_val !== undefined) return a.none_val;
  return pyTruthy(value) ? a.true_val : a.false_val;
}

const BOOLEAN_TRUE_STRINGS = Object.freeze(['y', 'yes', 'on', '1', 'true', 't']);

/** Ansible's boolean(value, strict=False). */
function bool(value: unknown): boolean {
  if (typeof value === 'boolean') return value;
  if (typeof value === 'number') return value === 1;
  if (typeof value === 'string' || value instanceof String) {
    return BOOLEAN_TRUE_STRINGS.includes(String(value).trim().toLowerCase());
  }
  return false;
}

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

/** Python's int(float): truncation; NaN has no int (undefined); infinity is an OverflowError. */
function truncate(n: number, value: unknown): number | undefined {
  if (Number.isNaN(n)) return undefined;
  if (!Number.isFinite(n)) fail('int', `cannot convert ${shown(value)} (infinity) to an integer`);
  return Math.trunc(n) || 0;
}

/** Jinja2's int filter: int(value, base) for strings, int(value) otherwise, int(float(value)) as fallback. */
function int(value: unknown, ...args: unknown[]): unknown {
  const a = bindArgs('int', args, { default: 0, base: 10 });
  let result: number | bigint | undefined;
  if (typeof value === 'string' || value instanceof String) {
    const s = String(value);
    result = typeof a.base === 'number' ? pyParseInt(s, a.base) : undefined;
    if (result === undefined) {
      const f = pyParseFloat(s);
      result = f === undefined ? undefined : truncate(f, value);
    }
  } else if (typeof value === 'number') result = truncate(value, value);
  else if (typeof value === 'boolean') result = Number(value);
  else if (typeof value === 'bigint') result = value;
  return result === undefined ? a.default : result;
}

// ---------------------------------------------------------------------------------------------
// join, dictsort, combine

function iterateItems(filter: string, value: unknown): unknown[] {
  if (Array.isArray(value)) return value;
  if (typeof value === 'string') return Array.from(value);
  if (isPlainObject(value)) return Object.keys(value);
  return fail(filter, `expected a list, a string or a dict, got ${shown(value)}`);
}

/** Jinja2's attribute lookup for `attribute='a.b.0'`. */
function getAttribute(filter: string, item: unknown, path: string): unknown {
  let current = item;
  for (const part of path.split('.')) {
    const key = Array.isArray(current) && /^\d+$/.test(part) ? Number(part) : part;
    const container = current as Record<string | number, unknown> | null | undefined;
    const next = Array.isArray(current) || isPlainObject(current) ? container?.[key] : undefined;
    if (next === undefined) fail(filter, `${shown(item)} has no attribute ${shown(path)}`);
    current = next;
  }
  return current;
}

function join(value: unknown, ...args: unknown[]): string {
  const a = bindArgs('join', args, { d: '', attribute: undefined });
  if (value === undefined) return fail('join', 'the value is undefined; expected a list');
  let items = iterateItems('join', value);
  if (a.attribute !== undefined && a.attribute !== null) {
    const path = pyStr(a.attribute);
    items = items.map((item) => getAttribute('join', item, path));
  }
  return items.map(pyStr).join(pyStr(a.d));
}

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

function dictsort(value: unknown, ...args: unknown[]): Array<[string, unknown]> {
  const f = 'dictsort';
  const a = bindArgs(f, args, { case_sensitive: false, by: 'key', reverse: false });
  if (!isPlainObject(value)) return fail(f, `expected a dict, got ${shown(value)}`);
  if (a.by !== 'key' && a.by !== 'value') fail(f, `by must be "key" or "value", got ${shown(a.by)}`);
  const pos = a.by === 'key' ? 0 : 1;
  const sortKey = (item: [string, unknown]) => {
    const v = item[pos];
    return !pyTruthy(a.case_sensitive) && typeof v === 'string' ? v.toLowerCase() : v;
  };
  const sign = pyTruthy(a.reverse) ? -1 : 1;
  try {
    return Object.entries(value).sort((x, y) => sign * pyCompare(sortKey(x), sortKey(y)));
  } catch (err) {
    return fail(f, `cannot sort ${shown(value)}: ${(err as Error).message}`, err);
  }
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

const LIST_MERGES = Object.freeze(['replace', 'keep', 'append', 'prepend', 'append_rp', 'prepend_rp']);

function mergeLists(x: unknown[], y: unknown[], listMerge: string): unknown[] {
  const xOnly = () => x.filter((z) => !y.some((w) => pyEqual(z, w)));
  if (listMerge === 'keep') return x;
  if (listMerge === 'append') return [...x, ...y];
  if (listMerge === 'prepend') return [...y, ...x];
  if (listMerge === 'append_rp') return [...xOnly(), ...y];
  if (listMerge === 'prepend_rp') return [...y, ...xOnly()];
  return y;
}

/** Ansible's merge_hash(x, y, recursive, list_merge): a new dict, y's values winning. */
function mergeHash(x: Dict, y: Dict, recursive: boolean, listMerge: string): Dict {
  if (Object.keys(x).length === 0 || pyEqual(x, y)) return { ...y };
  const result: Dict = { ...x };
  for (const [key, yValue] of Object.entries(y)) {
    const xValue = result[key];
    if (!Object.hasOwn(result, key)) result[key] = yValue;
    else if (isPlainObject(xValue) && isPlainObject(yValue)) {
      result[key] = recursive ? mergeHash(xValue, yValue, recursive, listMerge) : yValue;
    } else if (Array.isArray(xValue) && Array.isArray(yValue)) {
      result[key] = mergeLists(xValue, yValue, listMerge);
    } else result[key] = yValue;
  }
  return result;
}

/** Ansible's combine: `a | combine(b, c, recursive=true, list_merge='append')`; `[a, b] | combine` too. */
function combine(value: unknown, ...args: unknown[]): unknown {
  const f = 'combine';
  const { positional, keywords } = splitKeywords(args);
  const kw = bindArgs(f, [{ ...keywords, __keywords: true }], { recursive: false, list_merge: 'replace' }, 0);
  const listMerge = String(kw.list_merge);
  if (!LIST_MERGES.includes(listMerge)) {
    fail(f, `list_merge must be one of ${LIST_MERGES.join(', ')}; got ${shown(kw.list_merge)}`);
  }
  const dicts = [value, ...positional].flatMap((term) => (Array.isArray(term) ? term : [term]));
  for (const d of dicts) if (!isPlainObject(d)) fail(f, `expected dictionaries, got ${shown(d)}`);
  const terms = dicts as Dict[];
  if (terms.length === 0) return {};
  if (terms.length === 1) return terms[0];
  // Like Ansible: merge from the highest priority (last) down to the lowest.
  const last = terms[terms.length - 1] as Dict;
  return terms
    .slice(0, -1)
    .reduceRight((acc, d) => mergeHash(d, acc, pyTruthy(kw.recursive), listMerge), last);
}

// ---------------------------------------------------------------------------------------------
// quote, basename, dirname, lower, upper

/** Python's shlex.quote(str(value)); None quotes as ''. */
function quote(value: unknown): string {
  const s = value === null ? '' : text('quote', value);
  if (s === '') return "''";
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s)) return s;
  return `'${s.replaceAll("'", `'"'"'`)}'`;
}

function pathArg(filter: string, value: unknown): string {
  defined(filter, value, 'a path');
  if (typeof value !== 'string' && !(value instanceof String))
    fail(filter, `expected a path, got ${shown(value)}`);
  return String(value);
}

/** Python's posixpath.basename. */
function basename(value: unknown): string {
  const p = pathArg('basename', value);
  return p.slice(p.lastIndexOf('/') + 1);
}

/** Python's posixpath.dirname. */
function dirname(value: unknown): string {
  const p = pathArg('dirname', value);
  const head = p.slice(0, p.lastIndexOf('/') + 1);
  return head !== '' && !/^\/+$/.test(head) ? head.replace(/\/+$/, '') : head;
}

function lower(value: unknown): string {
  return text('lower', value).toLowerCase();
}

function upper(value: unknown): string {
  return text('upper', value).toUpperCase();
}

// ---------------------------------------------------------------------------------------------
// The table

/** Makes sure a filter fails only with CanopyError('RENDER_FILTER_FAILED'). */
function guarded(name: string, fn: FilterFunction): FilterFunction {
  return (...args: unknown[]) => {
    try {
      return fn(...args);
    } catch (err) {
      if (err instanceof CanopyError) throw err;
      return fail(name, err instanceof Error ? err.message : String(err), err);
    }
  };
}

/** The Ansible filters, by name, for `env.addFilter(name, fn)`. A new table on every call. */
export function ansibleFilters(): Record<string, FilterFunction> {
  const filters: Record<string, FilterFunction> = {
    to_json: toJson,
    to_nice_json: toNiceJson,
    to_yaml: toYaml,
    to_nice_yaml: toNiceYaml,
    b64encode,
    b64decode,
    regex_replace: regexReplace,
    regex_search: regexSearch,
    regex_findall: regexFindall,
    regex_escape: regexEscape,
    mandatory,
    quote,
    bool,
    int,
    default: defaultFilter,
    d: defaultFilter,
    join,
    dictsort,
    ternary,
    basename,
    dirname,
    combine,
    lower,
    upper,
  };
  return Object.fromEntries(Object.entries(filters).map(([name, fn]) => [name, guarded(name, fn)]));
}
