/**
 * Replacement templates of Python's re.sub (`\1`, `\g<name>`, `\n`, octal escapes): parsed
 * against a compiled pattern's groups, then expanded for each match. templateGroup also resolves
 * a lone group reference (regex_search's `'\1'` arguments).
 *
 * It parses and expands only: it never compiles or runs a pattern, and it throws PyRegexError
 * (never a CanopyError).
 */

import { type CompiledPyRegex, PyRegexError } from './py-regex.js';

/** A parsed replacement: literal text, or the number of the group to insert. */
export type TemplatePart = string | number;

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

/** The group a reference (`1`, `name`) names in the compiled pattern; throws PyRegexError if none. */
export function templateGroup(ref: string, re: CompiledPyRegex): number {
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

/** Parses an re.sub replacement into literal text and group numbers; throws PyRegexError. */
export function parseTemplate(repl: string, re: CompiledPyRegex): TemplatePart[] {
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

/** A parsed replacement filled in from one match (a group that did not match inserts ''). */
export function expandTemplate(parts: TemplatePart[], match: readonly unknown[]): string {
  return parts.map((part) => (typeof part === 'string' ? part : String(match[part] ?? ''))).join('');
}
