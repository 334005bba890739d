/**
 * Python-compatible formatting of plain JS values (the strings, numbers, booleans, nulls, arrays and
 * plain objects that YAML yields), so that canopy's filters print what Ansible prints:
 * - pyStr / pyRepr: Python's str() / repr(), i.e. what Jinja2 prints for `{{ value }}`;
 * - pyJsonDumps: Python's json.dumps, byte for byte;
 * - pyYamlDump: PyYAML's yaml.dump (SafeDumper, allow_unicode=True), a port of its emitter.
 *
 * Known limits, all from JS values carrying less information than Python ones:
 * - numbers: a safe integer (|n| <= 2^53 - 1) prints as a Python int, any other number as a Python
 *   float (so YAML `1.0` prints `1`, and an integer beyond 2^53 prints like `1e+16`); bigint prints
 *   as an int.
 * - plain objects keep JS key order, where integer-like keys ("2", "10") come first.
 * - pyYamlDump never writes anchors/aliases for values shared between two places.
 * This module imports nothing of canopy's.
 */

/** True for `{...}` objects (and Object.create(null)), false for arrays, class instances, etc. */
export function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null) return false;
  const proto: unknown = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** Compares strings by code point, as Python does (JS's `<` compares UTF-16 code units). */
export function comparePyStrings(a: string, b: string): number {
  const x = Array.from(a);
  const y = Array.from(b);
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) {
    const d = (x[i]?.codePointAt(0) ?? 0) - (y[i]?.codePointAt(0) ?? 0);
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

function sortedEntries(obj: Record<string, unknown>, sortKeys: boolean): Array<[string, unknown]> {
  const entries = Object.entries(obj);
  return sortKeys ? entries.sort(([a], [b]) => comparePyStrings(a, b)) : entries;
}

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

// ---------------------------------------------------------------------------------------------
// json.dumps

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

function describeType(value: unknown): string {
  if (value === undefined) return 'undefined';
  if (typeof value === 'object' && value !== null) return value.constructor?.name ?? 'object';
  return typeof value;
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

// ---------------------------------------------------------------------------------------------
// yaml.dump: representer (JS value -> node tree, as PyYAML's SafeRepresenter + Serializer)

type YamlTag = 'str' | 'int' | 'float' | 'bool' | 'null';

type YamlNode =
  | { kind: 'scalar'; value: string; tag: YamlTag; plainImplicit: boolean; quotedImplicit: boolean }
  | { kind: 'seq'; items: YamlNode[]; flow: boolean }
  | { kind: 'map'; pairs: Array<[YamlNode, YamlNode]>; flow: boolean };

/** PyYAML's implicit resolvers (YAML 1.1): a plain scalar matching one is not read as a string. */
const YAML_IMPLICIT: ReadonlyArray<[YamlTag | 'other', RegExp]> = [
  ['bool', /^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$/],
  [
    'float',
    /^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$/,
  ],
  [
    'int',
    /^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$/,
  ],
  ['other', /^(?:<<)$/],
  ['null', /^(?:~|null|Null|NULL|)$/],
  [
    'other',
    /^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$/,
  ],
  ['other', /^(?:=)$/],
  ['other', /^(?:!|&|\*)$/],
];

function resolvePlain(text: string): YamlTag | 'other' {
  for (const [tag, re] of YAML_IMPLICIT) if (re.test(text)) return tag;
  return 'str';
}

function scalarNode(tag: YamlTag, value: string): YamlNode {
  return {
    kind: 'scalar',
    value,
    tag,
    plainImplicit: resolvePlain(value) === tag,
    quotedImplicit: tag === 'str',
  };
}

function yamlFloat(n: number): string {
  if (Number.isNaN(n)) return '.nan';
  if (!Number.isFinite(n)) return n > 0 ? '.inf' : '-.inf';
  const text = pyFloatRepr(n).toLowerCase();
  return !text.includes('.') && text.includes('e') ? text.replace('e', '.0e') : text;
}

function representNumber(n: number | bigint): YamlNode {
  if (typeof n === 'bigint' || Number.isSafeInteger(n)) return scalarNode('int', String(n));
  return scalarNode('float', yamlFloat(n));
}

interface Representer {
  readonly defaultFlow: boolean | null;
  readonly sortKeys: boolean;
  readonly stack: unknown[];
}

function flowStyle(r: Representer, children: YamlNode[]): boolean {
  return r.defaultFlow ?? children.every((child) => child.kind === 'scalar');
}

function representCollection(r: Representer, value: unknown[] | Record<string, unknown>): YamlNode {
  if (r.stack.includes(value)) throw new TypeError('cannot represent a circular structure');
  r.stack.push(value);
  let node: YamlNode;
  if (Array.isArray(value)) {
    const items = value.map((item) => represent(r, item));
    node = { kind: 'seq', items, flow: flowStyle(r, items) };
  } else {
    const pairs = sortedEntries(value, r.sortKeys).map(([k, v]): [YamlNode, YamlNode] => [
      scalarNode('str', k),
      represent(r, v),
    ]);
    node = { kind: 'map', pairs, flow: flowStyle(r, pairs.flat()) };
  }
  r.stack.pop();
  return node;
}

function represent(r: Representer, value: unknown): YamlNode {
  if (typeof value === 'string') return scalarNode('str', value);
  if (value === null) return scalarNode('null', 'null');
  if (typeof value === 'boolean') return scalarNode('bool', value ? 'true' : 'false');
  if (typeof value === 'number' || typeof value === 'bigint') return representNumber(value);
  if (Array.isArray(value) || isPlainObject(value)) return representCollection(r, value);
  throw new TypeError(`cannot represent an object of type ${describeType(value)}`);
}

// ---------------------------------------------------------------------------------------------
// yaml.dump: scalar analysis (PyYAML's Emitter.analyze_scalar, with allow_unicode=True)

interface ScalarAnalysis {
  chars: string[];
  empty: boolean;
  multiline: boolean;
  allowFlowPlain: boolean;
  allowBlockPlain: boolean;
  allowSingleQuoted: boolean;
}

const BREAKS = '\n\x85\u2028\u2029';
const BLANKS_OR_BREAKS = '\0 \t\r\n\x85\u2028\u2029';

function isAllowedUnicode(cp: number): boolean {
  return (
    cp !== 0xfeff &&
    (cp === 0x85 ||
      (cp >= 0xa0 && cp <= 0xd7ff) ||
      (cp >= 0xe000 && cp <= 0xfffd) ||
      (cp >= 0x10000 && cp < 0x10ffff))
  );
}

function isSpecial(ch: string): boolean {
  const cp = ch.codePointAt(0) ?? 0;
  return !(ch === '\n' || (cp >= 0x20 && cp <= 0x7e) || isAllowedUnicode(cp));
}

/** Flow/block indicators: which plain styles the characters themselves forbid. */
function scanIndicators(chars: string[]): { flow: boolean; block: boolean } {
  const text = chars.join('');
  let flow = text.startsWith('---') || text.startsWith('...');
  let block = flow;
  chars.forEach((ch, i) => {
    const next = chars[i + 1];
    const followedByWs = next === undefined || BLANKS_OR_BREAKS.includes(next);
    const prev = chars[i - 1];
    if (i === 0) {
      if ('#,[]{}&*!|>\'"%@`'.includes(ch)) flow = block = true;
      if ('?:'.includes(ch)) {
        flow = true;
        if (followedByWs) block = true;
      }
      if (ch === '-' && followedByWs) flow = block = true;
    } else {
      if (',?[]{}'.includes(ch)) flow = true;
      if (ch === ':') {
        flow = true;
        if (followedByWs) block = true;
      }
      if (ch === '#' && prev !== undefined && BLANKS_OR_BREAKS.includes(prev)) flow = block = true;
    }
  });
  return { flow, block };
}

/** Leading/trailing blanks and space-break combinations. */
function scanSpaces(chars: string[]) {
  const r = { edge: false, breakSpace: false, spaceBreak: false };
  let previous: 'space' | 'break' | 'other' = 'other';
  chars.forEach((ch, i) => {
    const kind = ch === ' ' ? 'space' : BREAKS.includes(ch) ? 'break' : 'other';
    if (kind !== 'other' && (i === 0 || i === chars.length - 1)) r.edge = true;
    if (kind === 'space' && previous === 'break') r.breakSpace = true;
    if (kind === 'break' && previous === 'space') r.spaceBreak = true;
    previous = kind;
  });
  return r;
}

function analyzeScalar(text: string): ScalarAnalysis {
  const chars = Array.from(text);
  if (chars.length === 0) {
    return {
      chars,
      empty: true,
      multiline: false,
      allowFlowPlain: false,
      allowBlockPlain: true,
      allowSingleQuoted: true,
    };
  }
  const indicators = scanIndicators(chars);
  const spaces = scanSpaces(chars);
  const lineBreaks = chars.some((ch) => BREAKS.includes(ch));
  const special = chars.some(isSpecial);
  const noPlain = spaces.edge || spaces.breakSpace || spaces.spaceBreak || special;
  return {
    chars,
    empty: false,
    multiline: lineBreaks,
    allowFlowPlain: !(noPlain || lineBreaks || indicators.flow),
    allowBlockPlain: !(noPlain || lineBreaks || indicators.block),
    allowSingleQuoted: !(spaces.breakSpace || spaces.spaceBreak || special),
  };
}

// ---------------------------------------------------------------------------------------------
// yaml.dump: emitter (a port of PyYAML's Emitter for the events its Serializer produces)

const DOUBLE_QUOTE_ESCAPES: Readonly<Record<string, string>> = Object.freeze({
  '\0': '0',
  '\x07': 'a',
  '\b': 'b',
  '\t': 't',
  '\n': 'n',
  '\v': 'v',
  '\f': 'f',
  '\r': 'r',
  '\x1b': 'e',
  '"': '"',
  '\\': '\\',
  '\x85': 'N',
  '\xa0': '_',
  '\u2028': 'L',
  '\u2029': 'P',
});

function needsDoubleQuoteEscape(ch: string): boolean {
  const cp = ch.codePointAt(0) ?? 0;
  if ('"\\\x85\u2028\u2029\ufeff'.includes(ch)) return true;
  return !((cp >= 0x20 && cp <= 0x7e) || (cp >= 0xa0 && cp <= 0xd7ff) || (cp >= 0xe000 && cp <= 0xfffd));
}

function doubleQuoteEscape(ch: string): string {
  const named = DOUBLE_QUOTE_ESCAPES[ch];
  if (named !== undefined) return `\\${named}`;
  const cp = ch.codePointAt(0) ?? 0;
  const hex = cp.toString(16).toUpperCase();
  if (cp <= 0xff) return `\\x${hex.padStart(2, '0')}`;
  if (cp <= 0xffff) return `\\u${hex.padStart(4, '0')}`;
  return `\\U${hex.padStart(8, '0')}`;
}

interface NodeContext {
  root?: boolean;
  mapping?: boolean;
  simpleKey?: boolean;
}

class YamlEmitter {
  private readonly out: string[] = [];
  private column = 0;
  private whitespace = true;
  private indention = true;
  private openEnded = false;
  private indent: number | null = null;
  private readonly indents: Array<number | null> = [];
  private flowLevel = 0;
  private rootContext = false;
  private mappingContext = false;
  private simpleKeyContext = false;

  constructor(
    private readonly bestIndent: number,
    private readonly bestWidth: number,
  ) {}

  emitDocument(root: YamlNode, explicitStart: boolean): string {
    if (explicitStart) {
      this.writeIndent();
      this.writeIndicator('---', true);
    }
    this.expectNode(root, { root: true });
    this.writeIndent();
    if (this.openEnded) {
      this.writeIndicator('...', true);
      this.writeIndent();
    }
    return this.out.join('');
  }

  private expectNode(node: YamlNode, ctx: NodeContext, analysis?: ScalarAnalysis): void {
    this.rootContext = ctx.root ?? false;
    this.mappingContext = ctx.mapping ?? false;
    this.simpleKeyContext = ctx.simpleKey ?? false;
    if (node.kind === 'scalar') {
      this.expectScalar(node, analysis ?? analyzeScalar(node.value));
      return;
    }
    const empty = node.kind === 'seq' ? node.items.length === 0 : node.pairs.length === 0;
    const flow = this.flowLevel > 0 || node.flow || empty;
    if (node.kind === 'seq') {
      if (flow) this.flowSequence(node.items);
      else this.blockSequence(node.items);
    } else if (flow) this.flowMapping(node.pairs);
    else this.blockMapping(node.pairs);
  }

  // -- collections

  private flowSequence(items: YamlNode[]): void {
    this.writeIndicator('[', true, true);
    this.flowLevel++;
    this.increaseIndent(true);
    items.forEach((item, i) => {
      if (i > 0) this.writeIndicator(',', false);
      if (this.column > this.bestWidth) this.writeIndent();
      this.expectNode(item, {});
    });
    this.popIndent();
    this.flowLevel--;
    this.writeIndicator(']', false);
  }

  private flowMapping(pairs: Array<[YamlNode, YamlNode]>): void {
    this.writeIndicator('{', true, true);
    this.flowLevel++;
    this.increaseIndent(true);
    pairs.forEach(([key, value], i) => {
      if (i > 0) this.writeIndicator(',', false);
      if (this.column > this.bestWidth) this.writeIndent();
      const simple = this.simpleKey(key);
      if (simple) {
        this.expectNode(key, { mapping: true, simpleKey: true }, simple);
        this.writeIndicator(':', false);
      } else {
        this.writeIndicator('?', true);
        this.expectNode(key, { mapping: true });
        if (this.column > this.bestWidth) this.writeIndent();
        this.writeIndicator(':', true);
      }
      this.expectNode(value, { mapping: true });
    });
    this.popIndent();
    this.flowLevel--;
    this.writeIndicator('}', false);
  }

  private blockSequence(items: YamlNode[]): void {
    this.increaseIndent(false, this.mappingContext && !this.indention);
    for (const item of items) {
      this.writeIndent();
      this.writeIndicator('-', true, false, true);
      this.expectNode(item, {});
    }
    this.popIndent();
  }

  private blockMapping(pairs: Array<[YamlNode, YamlNode]>): void {
    this.increaseIndent(false);
    for (const [key, value] of pairs) {
      this.writeIndent();
      const simple = this.simpleKey(key);
      if (simple) {
        this.expectNode(key, { mapping: true, simpleKey: true }, simple);
        this.writeIndicator(':', false);
      } else {
        this.writeIndicator('?', true, false, true);
        this.expectNode(key, { mapping: true });
        this.writeIndent();
        this.writeIndicator(':', true, false, true);
      }
      this.expectNode(value, { mapping: true });
    }
    this.popIndent();
  }

  /** The key's analysis when it can be written as `key:`, else undefined (`? key`). */
  private simpleKey(key: YamlNode): ScalarAnalysis | undefined {
    if (key.kind !== 'scalar') return undefined;
    const analysis = analyzeScalar(key.value);
    const length = `!!${key.tag}`.length + analysis.chars.length;
    return length < 128 && !analysis.empty && !analysis.multiline ? analysis : undefined;
  }

  private increaseIndent(flow: boolean, indentless = false): void {
    this.indents.push(this.indent);
    if (this.indent === null) this.indent = flow ? this.bestIndent : 0;
    else if (!indentless) this.indent += this.bestIndent;
  }

  private popIndent(): void {
    this.indent = this.indents.pop() ?? null;
  }

  // -- scalars

  private expectScalar(node: YamlNode & { kind: 'scalar' }, analysis: ScalarAnalysis): void {
    this.increaseIndent(true);
    const style = this.chooseScalarStyle(node, analysis);
    const split = !this.simpleKeyContext;
    if (style === '"') this.writeDoubleQuoted(analysis.chars, split);
    else if (style === "'") this.writeSingleQuoted(analysis.chars, split);
    else this.writePlain(analysis.chars, split);
    this.popIndent();
  }

  private chooseScalarStyle(node: YamlNode & { kind: 'scalar' }, a: ScalarAnalysis): '' | "'" | '"' {
    const plainAllowed = this.flowLevel > 0 ? a.allowFlowPlain : a.allowBlockPlain;
    if (node.plainImplicit && !(this.simpleKeyContext && (a.empty || a.multiline)) && plainAllowed) return '';
    if (a.allowSingleQuoted && !(this.simpleKeyContext && a.multiline)) return "'";
    return '"';
  }

  private writePlain(text: string[], split: boolean): void {
    if (this.rootContext) this.openEnded = true;
    if (text.length === 0) return;
    if (!this.whitespace) this.write(' ');
    this.whitespace = false;
    this.indention = false;
    let spaces = false;
    let start = 0;
    for (let end = 0; end <= text.length; end++) {
      const ch = text[end];
      if (spaces && ch !== ' ') {
        if (start + 1 === end && this.column > this.bestWidth && split) {
          this.writeIndent();
          this.whitespace = false;
          this.indention = false;
        } else this.write(text.slice(start, end).join(''));
        start = end;
      } else if (!spaces && (ch === undefined || ch === ' ')) {
        // Plain scalars never hold line breaks: analyzeScalar forbids them.
        this.write(text.slice(start, end).join(''));
        start = end;
      }
      if (ch !== undefined) spaces = ch === ' ';
    }
  }

  private writeSingleQuoted(text: string[], split: boolean): void {
    this.writeIndicator("'", true);
    let spaces = false;
    let breaks = false;
    let start = 0;
    for (let end = 0; end <= text.length; end++) {
      const ch = text[end];
      if (spaces) {
        if (ch !== ' ') {
          const fold = start + 1 === end && this.column > this.bestWidth && split;
          if (fold && start !== 0 && end !== text.length) this.writeIndent();
          else this.write(text.slice(start, end).join(''));
          start = end;
        }
      } else if (breaks) {
        if (ch === undefined || !BREAKS.includes(ch)) {
          this.writeBreaks(text.slice(start, end));
          this.writeIndent();
          start = end;
        }
      } else if (ch === undefined || ch === "'" || ` ${BREAKS}`.includes(ch)) {
        if (start < end) this.write(text.slice(start, end).join(''));
        start = end;
      }
      if (ch === "'") {
        this.write("''");
        start = end + 1;
      }
      if (ch !== undefined) {
        spaces = ch === ' ';
        breaks = BREAKS.includes(ch);
      }
    }
    this.writeIndicator("'", false);
  }

  /** Line breaks inside a quoted scalar: a `\n` needs an extra (empty) line to survive folding. */
  private writeBreaks(breaks: string[]): void {
    if (breaks[0] === '\n') this.writeLineBreak();
    for (const br of breaks) this.writeLineBreak(br);
  }

  private writeDoubleQuoted(text: string[], split: boolean): void {
    this.writeIndicator('"', true);
    let start = 0;
    for (let end = 0; end <= text.length; end++) {
      const ch = text[end];
      if (ch === undefined || needsDoubleQuoteEscape(ch)) {
        if (start < end) this.write(text.slice(start, end).join(''));
        start = end;
        if (ch !== undefined) {
          this.write(doubleQuoteEscape(ch));
          start = end + 1;
        }
      }
      const fits = this.column + (end - start) <= this.bestWidth;
      if (0 < end && end < text.length - 1 && (ch === ' ' || start >= end) && !fits && split) {
        this.write(`${text.slice(start, end).join('')}\\`);
        if (start < end) start = end;
        this.writeIndent();
        this.whitespace = false;
        this.indention = false;
        if (text[start] === ' ') this.write('\\');
      }
    }
    this.writeIndicator('"', false);
  }

  // -- low-level writers

  private writeIndicator(indicator: string, needWhitespace: boolean, whitespace = false, indention = false) {
    this.write(this.whitespace || !needWhitespace ? indicator : ` ${indicator}`);
    this.whitespace = whitespace;
    this.indention = this.indention && indention;
    this.openEnded = false;
  }

  private writeIndent(): void {
    const indent = this.indent ?? 0;
    if (!this.indention || this.column > indent || (this.column === indent && !this.whitespace)) {
      this.writeLineBreak();
    }
    if (this.column < indent) {
      this.whitespace = true;
      this.write(' '.repeat(indent - this.column));
    }
  }

  private writeLineBreak(data = '\n'): void {
    this.whitespace = true;
    this.indention = true;
    this.out.push(data);
    this.column = 0;
  }

  private write(data: string): void {
    this.out.push(data);
    for (const _ of data) this.column++;
  }
}

export interface PyYamlOptions {
  /** PyYAML's `indent`: used when 2..9, else 2. */
  indent?: number;
  /** PyYAML's `width` for folding long scalars: used when above 2 * indent, else 80. */
  width?: number;
  /** Default true, as in yaml.dump. */
  sortKeys?: boolean;
  /** PyYAML's default_flow_style: false (the default) block everywhere; null: flow for collections of scalars. */
  defaultFlowStyle?: boolean | null;
  explicitStart?: boolean;
}

/**
 * PyYAML's `yaml.dump(value, Dumper=SafeDumper, allow_unicode=True, ...)`, byte for byte for the
 * values YAML and JSON can hold (including PyYAML's `...` after a plain top-level scalar, its folding
 * of long scalars at `width`, and `? key` for empty or long keys). Throws a TypeError for values it
 * cannot represent (undefined, functions, class instances) and for circular structures.
 */
export function pyYamlDump(value: unknown, opts: PyYamlOptions = {}): string {
  const indent = opts.indent !== undefined && opts.indent > 1 && opts.indent < 10 ? opts.indent : 2;
  const width = opts.width !== undefined && opts.width > indent * 2 ? opts.width : 80;
  const representer: Representer = {
    defaultFlow: opts.defaultFlowStyle === undefined ? false : opts.defaultFlowStyle,
    sortKeys: opts.sortKeys ?? true,
    stack: [],
  };
  const root = represent(representer, value);
  return new YamlEmitter(Math.trunc(indent), width).emitDocument(root, opts.explicitStart ?? false);
}
