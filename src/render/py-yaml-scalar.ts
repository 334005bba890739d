/**
 * How PyYAML may write one scalar: its Emitter.analyze_scalar (with allow_unicode=True), which says
 * which styles (plain in flow or block context, single-quoted) the characters allow, and the escapes
 * of the double-quoted style.
 *
 * It decides and escapes only: it never writes output or tracks columns (py-yaml-emitter.ts does),
 * and it imports nothing.
 */

/** What a scalar's characters allow: PyYAML's ScalarAnalysis, with the text split into code points. */
export interface ScalarAnalysis {
  chars: string[];
  empty: boolean;
  multiline: boolean;
  allowFlowPlain: boolean;
  allowBlockPlain: boolean;
  allowSingleQuoted: boolean;
}

/** The characters PyYAML treats as line breaks. */
export const BREAKS = '\n\x85\u2028\u2029';
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

/** PyYAML's Emitter.analyze_scalar for one scalar's text. */
export function analyzeScalar(text: string): ScalarAnalysis {
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
// The double-quoted style

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

/** Whether PyYAML escapes this character inside double quotes (allow_unicode=True). */
export function needsDoubleQuoteEscape(ch: string): boolean {
  const cp = ch.codePointAt(0) ?? 0;
  if ('"\\\x85\u2028\u2029\ufeff'.includes(ch)) return true;
  return !((cp >= 0x20 && cp <= 0x7e) || (cp >= 0xa0 && cp <= 0xd7ff) || (cp >= 0xe000 && cp <= 0xfffd));
}

/** The double-quoted escape of one character: a named one (`\n`, `\L`, ...), else `\xXX`, `\uXXXX` or `\UXXXXXXXX`. */
export function doubleQuoteEscape(ch: string): string {
  const named = DOUBLE_QUOTE_ESCAPES[ch];
  if (named !== undefined) return `\\${named}`;
  const cp = ch.codePointAt(0) ?? 0;
  const hex = cp.toString(16).toUpperCase();
  if (cp <= 0xff) return `\\x${hex.padStart(2, '0')}`;
  if (cp <= 0xffff) return `\\u${hex.padStart(4, '0')}`;
  return `\\U${hex.padStart(8, '0')}`;
}
