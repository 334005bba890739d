/**
 * Jinja2's built-in filters that nunjucks lacks or implements differently,
 * with Jinja2's meaning: `map` (attribute= or a filter name),
 * `selectattr`/`rejectattr` with a test (`selectattr('state', 'equalto',
 * 'up')`), `unique`, `min`, `max`, and Ansible's `flatten`. Filters get the
 * nunjucks context as `this`, to reach the environment's filters and tests.
 */
import { CanopyError } from '../errors/index.js';
import { isMapping } from './merge.js';

interface FilterContext {
  env: {
    getFilter(name: string): ((...args: unknown[]) => unknown) | undefined;
    getTest(name: string): ((...args: unknown[]) => unknown) | undefined;
  };
}

type Keywords = Record<string, unknown> & { __keywords?: true };

function fail(filter: string, message: string): never {
  throw new CanopyError('RENDER_FILTER_FAILED', `${filter}: ${message}`, { filter });
}

function list(filter: string, value: unknown): unknown[] {
  if (Array.isArray(value)) return value;
  if (typeof value === 'string') return [...value];
  if (isMapping(value)) return Object.keys(value);
  return fail(filter, `expected a list, got ${value === null ? 'None' : typeof value}`);
}

function splitKeywords(args: unknown[]): { positional: unknown[]; keywords: Keywords } {
  const last = args.at(-1);
  if (isMapping(last) && (last as Keywords).__keywords)
    return { positional: args.slice(0, -1), keywords: last as Keywords };
  return { positional: args, keywords: {} };
}

function attribute(item: unknown, path: string): unknown {
  let cur = item;
  for (const key of path.split('.')) {
    if (cur === null || typeof cur !== 'object' || !Object.hasOwn(cur, key)) return undefined;
    cur = (cur as Record<string, unknown>)[key];
  }
  return cur;
}

function test(ctx: FilterContext, filter: string, name: unknown): (...args: unknown[]) => unknown {
  const fn = ctx.env.getTest(String(name));
  return fn ?? fail(filter, `no test named "${String(name)}"`);
}

function selectByAttr(
  ctx: FilterContext,
  filter: string,
  keep: boolean,
  seq: unknown,
  args: unknown[],
): unknown[] {
  const [attr, testName, ...testArgs] = args;
  if (typeof attr !== 'string') return fail(filter, 'the first argument must be an attribute name');
  const check = testName === undefined ? (v: unknown) => Boolean(v) : test(ctx, filter, testName);
  return list(filter, seq).filter(
    (item) => Boolean(check.call(ctx, attribute(item, attr), ...testArgs)) === keep,
  );
}

export function jinjaFilters(): Record<string, (this: FilterContext, ...args: never[]) => unknown> {
  return {
    map(this: FilterContext, seq: unknown, ...rest: unknown[]) {
      const { positional, keywords } = splitKeywords(rest);
      const items = list('map', seq);
      if (typeof keywords.attribute === 'string') {
        const attr = keywords.attribute;
        return items.map((item) => attribute(item, attr) ?? keywords.default);
      }
      const [name, ...args] = positional;
      const fn = typeof name === 'string' ? this.env.getFilter(name) : undefined;
      if (!fn)
        return fail('map', `expects attribute=NAME or the name of a filter, got ${JSON.stringify(name)}`);
      return items.map((item) => fn.call(this, item, ...args));
    },
    selectattr(this: FilterContext, seq: unknown, ...args: unknown[]) {
      return selectByAttr(this, 'selectattr', true, seq, args);
    },
    rejectattr(this: FilterContext, seq: unknown, ...args: unknown[]) {
      return selectByAttr(this, 'rejectattr', false, seq, args);
    },
    unique(seq: unknown) {
      const seen = new Set<string>();
      return list('unique', seq).filter((item) => {
        const key = JSON.stringify(item);
        if (seen.has(key)) return false;
        seen.add(key);
        return true;
      });
    },
    min(seq: unknown) {
      const items = list('min', seq);
      return items.reduce((a, b) => ((b as number) < (a as number) ? b : a), items[0]);
    },
    max(seq: unknown) {
      const items = list('max', seq);
      return items.reduce((a, b) => ((b as number) > (a as number) ? b : a), items[0]);
    },
    flatten(seq: unknown, levels?: unknown) {
      const depth = typeof levels === 'number' ? levels : Number.POSITIVE_INFINITY;
      return (list('flatten', seq) as unknown[]).flat(depth).filter((x) => x !== null && x !== undefined);
    },
  };
}
