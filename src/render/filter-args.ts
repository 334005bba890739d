/**
 * A filter's arguments, bound and checked: bindArgs binds them to the filter's parameters as Python
 * binds a call's (positionally, then by nunjucks keyword), and the helpers below check their types.
 * Every failure is fail(): CanopyError('RENDER_FILTER_FAILED') with a message that starts with the
 * filter's name and shows the value at fault.
 *
 * It binds and checks arguments only: it never implements a filter (filters.ts, codec-filters.ts
 * and regex-filters.ts do).
 */

import { CanopyError } from '../errors/index.js';
import { pyStr } from './py-format.js';
import { safeJson } from './py-json.js';
import { isPlainObject } from './py-values.js';

type Dict = Record<string, unknown>;

/** Throws the filter's failure: RENDER_FILTER_FAILED, the message prefixed with the filter's name. */
export function fail(filter: string, message: string, cause?: unknown): never {
  throw new CanopyError('RENDER_FILTER_FAILED', `${filter}: ${message}`, { filter, cause });
}

/** A value for an error message: JSON-like, cut to about 60 characters. */
export function shown(value: unknown): string {
  const text = typeof value === 'string' ? value : safeJson(value);
  const cut = [...text].length > 60 ? `${[...text].slice(0, 57).join('')}...` : text;
  return typeof value === 'string' ? JSON.stringify(cut) : cut;
}

/** The value, or a failure when it is undefined (a missing variable, as Ansible's StrictUndefined). */
export function defined(filter: string, value: unknown, expected: string): unknown {
  if (value === undefined) fail(filter, `the value is undefined; expected ${expected}`);
  return value;
}

/** The filter's input as text: Ansible's to_text(value, nonstring='simplerepr'). */
export function text(filter: string, value: unknown): string {
  return pyStr(defined(filter, value, 'a string'));
}

/** The default of a parameter that has none: leaving it out is an error. */
export const REQUIRED: unique symbol = Symbol('required');

/** Splits nunjucks's trailing keyword-argument object (`__keywords: true`) from the positional ones. */
export function splitKeywords(args: readonly unknown[]): { positional: unknown[]; keywords: Dict } {
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
export function bindArgs<P extends Dict>(
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

/** An integer argument (a bool counts, as in Python). */
export function intArg(filter: string, name: string, value: unknown): number {
  if (typeof value === 'boolean') return Number(value);
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    fail(filter, `argument '${name}' must be an integer, got ${shown(value)}`);
  }
  return value;
}

/** An integer argument that may be left out (undefined or None). */
export function optionalIntArg(filter: string, name: string, value: unknown): number | undefined {
  return value === undefined || value === null ? undefined : intArg(filter, name, value);
}

/** A string argument. */
export function stringArg(filter: string, name: string, value: unknown): string {
  if (typeof value !== 'string' && !(value instanceof String)) {
    fail(filter, `argument '${name}' must be a string, got ${shown(value)}`);
  }
  return String(value);
}
