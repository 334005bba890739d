/**
 * The run-time half of Ansible's undefined-variable rules, and Python-like
 * attribute access.
 *
 * Compiled templates call these (through `env.canopyStrict`) for every
 * lookup the compile pass marked. A strict lookup of a name or attribute that
 * does not exist throws UndefinedLookup with the template position and the
 * names that do exist (for "did you mean"); the engine turns it into a
 * CanopyError naming the host. Only own properties are visible: a template
 * can never reach `constructor` or `__proto__` (nunjucks' own lookups can).
 */
import { isMapping } from './merge.js';

export class UndefinedLookup extends Error {
  constructor(
    /** The lookup as written: `app.db.hots`. */
    readonly path: string,
    /** Names defined where the lookup failed (for suggestions). */
    readonly candidates: readonly string[],
    /** The lookup the failing key belongs to: `app.db` for `app.db.hots`, `` for a name. */
    readonly parent: string,
    /** The key that was not found: `hots`. */
    readonly key: string,
    readonly template: string,
    readonly line: number,
    readonly column: number,
    /** Set when the parent exists but is none/undefined rather than lacking the key. */
    readonly parentIsNone = false,
  ) {
    super(`"${path}" is undefined`);
  }
}

/** Wraps a filter failure with the template position it happened at. */
export class FilterFailure extends Error {
  constructor(
    readonly filter: string,
    readonly template: string,
    readonly line: number,
    readonly column: number,
    override readonly cause: unknown,
  ) {
    super(cause instanceof Error ? cause.message : String(cause));
  }
}

interface Frame {
  variables: Record<string, unknown>;
  parent?: Frame | null;
}

interface Context {
  ctx: Record<string, unknown>;
  env: { globals: Record<string, unknown>; getFilter(name: string): (...args: unknown[]) => unknown };
}

type Method = (self: never, ...args: never[]) => unknown;

const STRING_METHODS: Record<string, Method> = {
  upper: (s: string) => s.toUpperCase(),
  lower: (s: string) => s.toLowerCase(),
  strip: (s: string, chars?: string) => (chars ? trimChars(s, chars, true, true) : s.trim()),
  lstrip: (s: string, chars?: string) => (chars ? trimChars(s, chars, true, false) : s.trimStart()),
  rstrip: (s: string, chars?: string) => (chars ? trimChars(s, chars, false, true) : s.trimEnd()),
  startswith: (s: string, p: string) => s.startsWith(p),
  endswith: (s: string, p: string) => s.endsWith(p),
  split: (s: string, sep?: string, max?: number) => pySplit(s, sep, max),
  replace: (s: string, a: string, b: string) => s.split(a).join(b),
  join: (s: string, items: unknown[]) => items.map(String).join(s),
  capitalize: (s: string) => s.charAt(0).toUpperCase() + s.slice(1).toLowerCase(),
  title: (s: string) => s.replace(/\w\S*/g, (w) => w.charAt(0).toUpperCase() + w.slice(1).toLowerCase()),
  find: (s: string, sub: string) => s.indexOf(sub),
  count: (s: string, sub: string) => (sub === '' ? s.length + 1 : s.split(sub).length - 1),
};

const DICT_METHODS: Record<string, Method> = {
  items: (d: Record<string, unknown>) => Object.entries(d),
  keys: (d: Record<string, unknown>) => Object.keys(d),
  values: (d: Record<string, unknown>) => Object.values(d),
  get: (d: Record<string, unknown>, k: string, dflt: unknown = null) => (Object.hasOwn(d, k) ? d[k] : dflt),
};

const LIST_METHODS: Record<string, Method> = {
  index: (l: unknown[], x: unknown) => l.indexOf(x),
  count: (l: unknown[], x: unknown) => l.filter((y) => y === x).length,
};

export class StrictRuntime {
  symbol(
    context: Context,
    frame: Frame | null,
    name: string,
    strict: boolean,
    tpl: string,
    line: number,
    col: number,
  ): unknown {
    for (let f = frame; f; f = f.parent ?? null) {
      const v = f.variables[name];
      if (v !== undefined && Object.hasOwn(f.variables, name)) return v;
    }
    if (Object.hasOwn(context.ctx, name)) return context.ctx[name];
    if (Object.hasOwn(context.env.globals, name)) return context.env.globals[name];
    if (!strict) return undefined;
    throw new UndefinedLookup(
      name,
      [...Object.keys(context.ctx), ...frameNames(frame)],
      '',
      name,
      tpl,
      line,
      col,
    );
  }

  member(
    obj: unknown,
    key: unknown,
    strict: boolean,
    path: string,
    tpl: string,
    line: number,
    col: number,
  ): unknown {
    if (obj === undefined || obj === null) {
      if (!strict) return undefined;
      throw new UndefinedLookup(path, [], parentOf(path), String(key), tpl, line, col, true);
    }
    const found = lookup(obj, key);
    if (found !== MISSING) return found;
    if (!strict) return undefined;
    throw new UndefinedLookup(path, candidates(obj), parentOf(path), String(key), tpl, line, col);
  }

  filter(
    context: Context,
    name: string,
    tpl: string,
    line: number,
    col: number,
    ...args: unknown[]
  ): unknown {
    const fn = context.env.getFilter(name);
    try {
      return fn.apply(context, args);
    } catch (err) {
      throw new FilterFailure(name, tpl, line, col, err);
    }
  }
}

/** Returned by lookup for a key that is not there (a value of its own would allocate per lookup). */
const MISSING: unique symbol = Symbol('missing');

function lookup(obj: unknown, key: unknown): unknown {
  // Mappings first: nearly every lookup in a config template is `a.b.c`.
  if (typeof obj === 'object' && obj !== null && !Array.isArray(obj) && !(obj instanceof String)) {
    const rec = obj as Record<string, unknown>;
    const k = String(key);
    if (Object.hasOwn(rec, k)) {
      const v = rec[k];
      return typeof v === 'function' ? v.bind(rec) : v;
    }
    const m = isMapping(obj) ? method(DICT_METHODS, k) : undefined;
    return m ? (...args: never[]) => m(rec as never, ...args) : MISSING;
  }
  if (typeof obj === 'string' || obj instanceof String) {
    const s = String(obj);
    if (typeof key === 'number') {
      const i = key < 0 ? s.length + key : key;
      if (Number.isInteger(i) && i >= 0 && i < s.length) return s[i];
    }
    const m = method(STRING_METHODS, key);
    return m ? (...args: never[]) => m(s as never, ...args) : MISSING;
  }
  if (Array.isArray(obj)) {
    const n =
      typeof key === 'number'
        ? key
        : typeof key === 'string' && /^-?\d+$/.test(key)
          ? Number(key)
          : Number.NaN;
    if (Number.isInteger(n)) {
      const i = n < 0 ? obj.length + n : n;
      return i >= 0 && i < obj.length ? obj[i] : MISSING;
    }
    const m = method(LIST_METHODS, key);
    return m ? (...args: never[]) => m(obj as never, ...args) : MISSING;
  }
  return MISSING;
}

/** The names a failed lookup could have meant. */
function candidates(obj: unknown): string[] {
  if (typeof obj === 'string' || obj instanceof String) return Object.keys(STRING_METHODS);
  if (typeof obj === 'object' && obj !== null && !Array.isArray(obj)) return Object.keys(obj);
  return [];
}

function frameNames(frame: Frame | null): string[] {
  const out: string[] = [];
  for (let f = frame; f; f = f.parent ?? null) out.push(...Object.keys(f.variables));
  return out;
}

function parentOf(path: string): string {
  const m = /(\.[A-Za-z_][A-Za-z0-9_]*|\[[^\]]*\])$/.exec(path);
  return m ? path.slice(0, path.length - m[0].length) : '';
}

/** A method from a table, never an inherited property such as `constructor`. */
function method(table: Record<string, Method>, key: unknown): Method | undefined {
  const k = String(key);
  return Object.hasOwn(table, k) ? table[k] : undefined;
}

function trimChars(s: string, chars: string, left: boolean, right: boolean): string {
  let a = 0;
  let b = s.length;
  while (left && a < b && chars.includes(s.charAt(a))) a++;
  while (right && b > a && chars.includes(s.charAt(b - 1))) b--;
  return s.slice(a, b);
}

function pySplit(s: string, sep?: string | null, max?: number): string[] {
  const limit = max === undefined || max < 0 ? Number.POSITIVE_INFINITY : max;
  if (sep === undefined || sep === null) {
    const parts = s
      .trim()
      .split(/\s+/)
      .filter((p) => p !== '');
    if (parts.length <= limit + 1) return parts;
    const head = parts.slice(0, limit);
    const rest = s.trim().split(/\s+/).slice(limit).join(' ');
    return [...head, rest];
  }
  const parts = s.split(sep);
  if (parts.length <= limit + 1) return parts;
  return [...parts.slice(0, limit), parts.slice(limit).join(sep)];
}
