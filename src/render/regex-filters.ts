/**
 * Ansible's regex filters: regex_replace, regex_search, regex_findall and regex_escape, with Python
 * `re` semantics from py-regex.ts (patterns) and py-regex-template.ts (replacements).
 *
 * Known differences from Ansible: regex_search returns undefined where Ansible returns None; the
 * pattern differences are py-regex.ts's. Each filter binds its arguments with filter-args.ts and
 * fails only through its fail(); it never translates pattern syntax itself.
 */

import { CanopyError } from '../errors/index.js';
import { bindArgs, fail, intArg, REQUIRED, shown, splitKeywords, stringArg, text } from './filter-args.js';
import { type CompiledPyRegex, compilePyRegex, type PyRegexOptions } from './py-regex.js';
import { expandTemplate, parseTemplate, type TemplatePart, templateGroup } from './py-regex-template.js';
import { pyTruthy } from './py-values.js';

/** The filter's pattern argument, compiled; a bad pattern is the filter's failure. */
function compileFor(filter: string, pattern: unknown, opts: PyRegexOptions): CompiledPyRegex {
  const source = stringArg(filter, 'pattern', pattern);
  try {
    return compilePyRegex(source, opts);
  } catch (err) {
    return fail(filter, `${shown(source)} is not a valid regular expression: ${(err as Error).message}`, err);
  }
}

/** Python's re.sub with Ansible's count and mandatory_count. */
export function regexReplace(value: unknown, ...args: unknown[]): string {
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
export function regexSearch(value: unknown, ...args: unknown[]): unknown {
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
export function regexFindall(value: unknown, ...args: unknown[]): unknown[] {
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
export function regexEscape(value: unknown, ...args: unknown[]): string {
  const f = 'regex_escape';
  const { re_type } = bindArgs(f, args, { re_type: 'python' });
  const input = text(f, value);
  if (re_type === 'python') return input.replace(/[()[\]{}?*+\-|^$\\.&~# \t\n\r\v\f]/g, '\\$&');
  if (re_type === 'posix_basic') return input.replace(/[\].[^*$]/g, '\\$&');
  if (re_type === 'posix_extended') return fail(f, 'regex type posix_extended is not yet implemented');
  return fail(f, `invalid regex type ${shown(re_type)}; expected 'python' or 'posix_basic'`);
}
