/**
 * Python regular expressions (`re`, str patterns) translated to JS RegExps: compilePyRegex
 * translates the syntax in one pass (flags, escapes, classes, named groups and backreferences,
 * repeats) and reports the pattern's groups.
 *
 * Known differences from Python:
 * - `\b`, `\B`, `\d`, `\D`, `\w` follow Python's Unicode definitions; `\s`, `\S` and `\W`
 *   inside a character class follow JS's.
 * - scoped inline flags `(?i:...)`, conditionals, atomic groups and possessive quantifiers are not
 *   supported (they throw).
 * It compiles patterns only: it never matches or substitutes, and it throws PyRegexError or
 * SyntaxError (never a CanopyError). It imports nothing.
 */

/** A pattern or replacement template that Python's `re` rejects. */
export class PyRegexError extends Error {}

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
