// Calling Ansible filters as nunjucks does, and asserting their failures (shared by the filter tests).
import assert from 'node:assert/strict';
import { CanopyError } from '../../src/errors/index.js';
import { ansibleFilters } from '../../src/render/filters.js';

/** Calls a filter the way nunjucks does: value first, then the arguments. */
export function call(name: string, ...args: unknown[]): unknown {
  const fn = ansibleFilters()[name];
  assert.ok(fn, `no filter ${name}`);
  return fn(...args);
}

/** Nunjucks's keyword arguments: a trailing object marked `__keywords`. */
export function kw(args: Record<string, unknown>): Record<string, unknown> {
  return { ...args, __keywords: true };
}

/** Asserts a RENDER_FILTER_FAILED error whose message starts with the filter's name. */
export function assertFilterError(fn: () => unknown, filter: string, pattern?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof CanopyError, `not a CanopyError: ${String(err)}`);
    assert.equal(err.code, 'RENDER_FILTER_FAILED');
    assert.equal(err.subject.filter, filter);
    assert.ok(err.message.startsWith(`${filter}: `), err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  });
}
