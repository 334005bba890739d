/**
 * The Ansible filters canopy adds to nunjucks, with Ansible's names, arguments and semantics:
 * ansibleFilters() returns the table of them for `env.addFilter(name, fn)`, each guarded so that it
 * fails only with CanopyError('RENDER_FILTER_FAILED') and a message that starts with its name.
 * Each filter takes the value first, then its arguments, positionally or as nunjucks keyword
 * arguments, bound by filter-args.ts. The encoding filters (to_json, to_yaml, b64encode, ...)
 * live in codec-filters.ts and the regex filters in regex-filters.ts; the small ones are here.
 * Python's behaviour (str(), ==, <, int(), json, yaml, re) comes from the py-*.ts modules and is
 * never reimplemented here.
 *
 * Known differences from Ansible (see also codec-filters.ts, regex-filters.ts, and py-format.ts
 * and py-yaml.ts for number and YAML limits):
 * - a value that is undefined (a missing variable) makes most filters throw, as Ansible's
 *   StrictUndefined does; default/d, mandatory, ternary, bool and int accept it.
 */

import { CanopyError } from '../errors/index.js';
import { b64decode, b64encode, toJson, toNiceJson, toNiceYaml, toYaml } from './codec-filters.js';
import { bindArgs, defined, fail, REQUIRED, shown, splitKeywords, text } from './filter-args.js';
import { pyStr } from './py-format.js';
import { isPlainObject, pyCompare, pyEqual, pyParseFloat, pyParseInt, pyTruthy } from './py-values.js';
import { regexEscape, regexFindall, regexReplace, regexSearch } from './regex-filters.js';

// biome-ignore lint/suspicious/noExplicitAny: nunjucks filters take any arguments
export type FilterFunction = (...args: any[]) => unknown;

type Dict = Record<string, unknown>;

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
