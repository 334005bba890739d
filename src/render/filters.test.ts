/**
 * Tests of filters.ts: the table, argument binding (filter-args.ts) and the filters defined in
 * filters.ts, with their keyword arguments and failure paths, plus a few renders through nunjucks
 * itself. The encoding and regex filters are tested in codec-filters.test.ts and
 * regex-filters.test.ts. Expected strings come from Python 3.11 (json, re, shlex, base64),
 * Jinja2 3.1 and PyYAML 6.0, run once by hand and pasted in as literals.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import nunjucks from 'nunjucks';
import { assertFilterError, call, kw } from '../../test/helpers/filters.js';
import { CanopyError } from '../errors/index.js';
import { ansibleFilters } from './filters.js';

function render(template: string, context: Record<string, unknown> = {}): string {
  const env = new nunjucks.Environment(null, { autoescape: false });
  for (const [name, fn] of Object.entries(ansibleFilters())) env.addFilter(name, fn);
  return env.renderString(template, context);
}

// --- the table

test('ansibleFilters returns every required filter', () => {
  const names = Object.keys(ansibleFilters());
  for (const name of [
    'to_json',
    'to_nice_json',
    'to_yaml',
    'to_nice_yaml',
    'b64encode',
    'b64decode',
    'regex_replace',
    'regex_search',
    'mandatory',
    'quote',
    'bool',
    'int',
    'default',
    'd',
    'join',
    'dictsort',
    'ternary',
    'basename',
    'dirname',
    'combine',
    'lower',
    'upper',
  ]) {
    assert.ok(names.includes(name), name);
  }
});

test('ansibleFilters returns a new table on each call', () => {
  assert.notEqual(ansibleFilters(), ansibleFilters());
});

test('a filter wraps an unexpected error in RENDER_FILTER_FAILED', () => {
  const hostile = new (class Hostile {
    toString(): string {
      throw new Error('boom');
    }
  })();
  assertFilterError(() => call('lower', hostile), 'lower', /boom/);
});

// --- keyword arguments

test('a filter rejects an unknown keyword argument', () => {
  assertFilterError(() => call('int', '1', kw({ bas: 16 })), 'int', /unexpected keyword argument 'bas'/);
});

test('a filter rejects an argument given both positionally and by keyword', () => {
  assertFilterError(
    () => call('int', '1', 0, kw({ default: 5 })),
    'int',
    /multiple values for argument 'default'/,
  );
});

test('a filter rejects too many positional arguments', () => {
  assertFilterError(() => call('int', '1', 0, 10, 3), 'int', /at most 2 argument/);
});

test('a filter mixes positional and keyword arguments', () => {
  assert.equal(call('int', 'zz', 7, kw({ base: 10 })), 7);
});

// --- mandatory

test('mandatory returns a defined value', () => {
  assert.equal(call('mandatory', 'x'), 'x');
  assert.equal(call('mandatory', null), null);
});

test('mandatory fails on undefined with the default message', () => {
  assert.throws(
    () => call('mandatory', undefined),
    (err: unknown) =>
      err instanceof CanopyError &&
      err.code === 'RENDER_FILTER_FAILED' &&
      err.message === 'Mandatory variable not defined.' &&
      err.subject.filter === 'mandatory',
  );
});

test('mandatory names the variable when given its name', () => {
  assert.throws(
    () => call('mandatory', undefined, undefined, 'db_password'),
    (err: unknown) =>
      err instanceof CanopyError &&
      err.message === "Mandatory variable 'db_password' not defined." &&
      err.subject.variable === 'db_password',
  );
});

test('mandatory fails with the message the template gives', () => {
  assert.throws(() => call('mandatory', undefined, 'set db_password!'), {
    code: 'RENDER_FILTER_FAILED',
    message: 'set db_password!',
  });
  assert.throws(() => call('mandatory', undefined, kw({ msg: 'by keyword' })), { message: 'by keyword' });
});

// --- quote

test('quote leaves a safe string alone', () => {
  assert.equal(call('quote', 'a/b-c.d:e,f=g+h%i@j_k'), 'a/b-c.d:e,f=g+h%i@j_k');
});

test('quote wraps a string with spaces in single quotes', () => {
  assert.equal(call('quote', 'a b'), "'a b'");
});

test('quote escapes single quotes', () => {
  assert.equal(call('quote', "it's"), `'it'"'"'s'`);
});

test('quote prints the empty string and None as two quotes', () => {
  assert.equal(call('quote', ''), "''");
  assert.equal(call('quote', null), "''");
});

test('quote quotes non-ASCII and shell specials', () => {
  assert.equal(call('quote', 'é'), "'é'");
  assert.equal(call('quote', '$HOME'), "'$HOME'");
});

test('quote quotes str() of a non-string', () => {
  assert.equal(call('quote', true), 'True');
  assert.equal(call('quote', 3.5), '3.5');
});

test('quote fails on an undefined value', () => {
  assertFilterError(() => call('quote', undefined), 'quote', /undefined/);
});

// --- bool

test('bool is true for Ansible true strings, trimmed and in any case', () => {
  for (const v of ['y', 'YES', ' on ', '1', 'True', 't']) assert.equal(call('bool', v), true, v);
});

test('bool is true for true, 1 and 1.0', () => {
  assert.equal(call('bool', true), true);
  assert.equal(call('bool', 1), true);
  assert.equal(call('bool', 1.0), true);
});

test('bool is false for everything else', () => {
  for (const v of ['no', 'off', '0', '', 'maybe', 2, 0, null, undefined, false, [1], { a: 1 }]) {
    assert.equal(call('bool', v), false, String(v));
  }
});

// --- int

test('int parses decimal strings with whitespace and sign', () => {
  assert.equal(call('int', '  42 '), 42);
  assert.equal(call('int', '-7'), -7);
  assert.equal(call('int', '+5'), 5);
  assert.equal(call('int', '1_000'), 1000);
});

test('int falls back to float for strings like 3.9', () => {
  assert.equal(call('int', '3.9'), 3);
  assert.equal(call('int', '-3.9'), -3);
  assert.equal(call('int', '1e3'), 1000);
});

test('int truncates numbers toward zero', () => {
  assert.equal(call('int', 3.9), 3);
  assert.equal(call('int', -3.9), -3);
});

test('int converts booleans to 1 and 0', () => {
  assert.equal(call('int', true), 1);
  assert.equal(call('int', false), 0);
});

test('int parses base 16 with or without 0x', () => {
  assert.equal(call('int', '0x1F', 0, 16), 31);
  assert.equal(call('int', '1f', kw({ base: 16 })), 31);
});

test('int with base 0 reads the prefix', () => {
  assert.equal(call('int', '0b101', 0, 0), 5);
  assert.equal(call('int', '0o17', 0, 0), 15);
  // int('010', 0) is a ValueError; Jinja2 then falls back to int(float('010')).
  assert.equal(call('int', '010', 0, 0), 10);
});

test('int returns the default for what it cannot parse', () => {
  assert.equal(call('int', 'abc'), 0);
  assert.equal(call('int', 'abc', 5), 5);
  assert.equal(call('int', 'abc', kw({ default: -1 })), -1);
  assert.equal(call('int', '0x1F'), 0);
  assert.equal(call('int', null), 0);
  assert.equal(call('int', [1]), 0);
  assert.equal(call('int', 'nan'), 0);
});

test('int fails on infinity, as Python raises OverflowError', () => {
  assertFilterError(() => call('int', 'inf'), 'int', /infinity/);
  assertFilterError(() => call('int', Infinity), 'int', /infinity/);
});

// --- default, d

test('default returns the value when it is defined', () => {
  assert.equal(call('default', 'x', 'd'), 'x');
  assert.equal(call('default', '', 'd'), '');
  assert.equal(call('default', null, 'd'), null);
});

test('default returns the default value for undefined', () => {
  assert.equal(call('default', undefined, 'd'), 'd');
  assert.equal(call('default', undefined), '');
});

test('default with boolean=true replaces falsy values', () => {
  assert.equal(call('default', '', 'd', true), 'd');
  assert.equal(call('default', 0, 'd', kw({ boolean: true })), 'd');
  assert.equal(call('default', [], kw({ default_value: 'd', boolean: true })), 'd');
  assert.equal(call('default', 'x', 'd', true), 'x');
});

test('d is an alias of default', () => {
  assert.equal(call('d', undefined, 'fallback'), 'fallback');
});

// --- join

test('join prints items with str(), like Jinja2', () => {
  assert.equal(
    call('join', [1, 'a', true, null, 1.5, [1, 'x'], { k: 'v' }], ', '),
    "1, a, True, None, 1.5, [1, 'x'], {'k': 'v'}",
  );
});

test('join defaults to no separator', () => {
  assert.equal(call('join', ['a', 'b']), 'ab');
});

test('join iterates the characters of a string and the keys of a dict', () => {
  assert.equal(call('join', 'abc', '-'), 'a-b-c');
  assert.equal(call('join', { x: 1, y: 2 }, kw({ d: ',' })), 'x,y');
});

test('join takes an attribute', () => {
  assert.equal(call('join', [{ n: { v: 1 } }, { n: { v: 2 } }], ' ', kw({ attribute: 'n.v' })), '1 2');
});

test('join fails on a missing attribute', () => {
  assertFilterError(() => call('join', [{ n: 1 }], ' ', 'm'), 'join', /has no attribute "m"/);
});

test('join fails on a number', () => {
  assertFilterError(() => call('join', 5), 'join', /expected a list/);
});

// --- dictsort

test('dictsort sorts case-insensitively by key by default', () => {
  assert.deepEqual(call('dictsort', { b: 1, A: 2, c: 0, a: 3 }), [
    ['A', 2],
    ['a', 3],
    ['b', 1],
    ['c', 0],
  ]);
});

test('dictsort sorts case-sensitively when asked', () => {
  assert.deepEqual(call('dictsort', { b: 1, A: 2, a: 3 }, true), [
    ['A', 2],
    ['a', 3],
    ['b', 1],
  ]);
});

test('dictsort sorts by value in reverse, keeping ties in order', () => {
  assert.deepEqual(call('dictsort', { x: 1, y: 1, z: 0, w: 2 }, kw({ by: 'value', reverse: true })), [
    ['w', 2],
    ['x', 1],
    ['y', 1],
    ['z', 0],
  ]);
});

test('dictsort fails on by other than key or value', () => {
  assertFilterError(() => call('dictsort', { a: 1 }, false, 'name'), 'dictsort', /"key" or "value"/);
});

test('dictsort fails on values Python cannot compare', () => {
  assertFilterError(
    () => call('dictsort', { a: 1, b: 'x' }, kw({ by: 'value' })),
    'dictsort',
    /not supported between instances of 'str' and 'int'|'int' and 'str'/,
  );
});

test('dictsort fails on a list', () => {
  assertFilterError(() => call('dictsort', [1]), 'dictsort', /expected a dict/);
});

test('dictsort renders in a nunjucks for loop', () => {
  assert.equal(
    render('{% for k, v in m | dictsort %}{{ k }}={{ v }};{% endfor %}', { m: { b: 2, a: 1 } }),
    'a=1;b=2;',
  );
});

// --- ternary

test('ternary picks the true or false value by truthiness', () => {
  assert.equal(call('ternary', true, 'yes', 'no'), 'yes');
  assert.equal(call('ternary', '', 'yes', 'no'), 'no');
  assert.equal(call('ternary', undefined, 'yes', 'no'), 'no');
});

test('ternary returns none_val for None when given', () => {
  assert.equal(call('ternary', null, 'yes', 'no', 'none'), 'none');
  assert.equal(call('ternary', null, 'yes', 'no'), 'no');
  assert.equal(call('ternary', null, 'yes', kw({ false_val: 'no', none_val: 'none' })), 'none');
});

test('ternary fails without a false value', () => {
  assertFilterError(() => call('ternary', true, 'yes'), 'ternary', /missing required argument 'false_val'/);
});

// --- basename, dirname

test('basename returns the last path component', () => {
  assert.equal(call('basename', '/etc/nginx/nginx.conf'), 'nginx.conf');
  assert.equal(call('basename', '/a/b/'), '');
  assert.equal(call('basename', 'file'), 'file');
});

test('dirname returns the directory like posixpath.dirname', () => {
  assert.equal(call('dirname', '/etc/nginx/nginx.conf'), '/etc/nginx');
  assert.equal(call('dirname', '/a/b/'), '/a/b');
  assert.equal(call('dirname', 'file'), '');
  assert.equal(call('dirname', '/'), '/');
  assert.equal(call('dirname', '//x'), '//');
  assert.equal(call('dirname', 'a//b'), 'a');
});

test('basename and dirname fail on a non-string', () => {
  assertFilterError(() => call('basename', 5), 'basename', /expected a path, got 5/);
  assertFilterError(() => call('dirname', undefined), 'dirname', /undefined/);
});

// --- combine

test('combine merges dicts shallowly, later ones winning', () => {
  assert.deepEqual(call('combine', { a: 1, n: { x: 1 } }, { b: 2, n: { y: 2 } }), {
    a: 1,
    n: { y: 2 },
    b: 2,
  });
});

test('combine merges recursively with recursive=true', () => {
  assert.deepEqual(
    call('combine', { a: 1, n: { x: 1, z: [1] } }, { n: { y: 2, z: [2] } }, kw({ recursive: true })),
    {
      a: 1,
      n: { x: 1, z: [2], y: 2 },
    },
  );
});

test('combine merges lists with list_merge', () => {
  const a = { l: [1, 2] };
  const b = { l: [2, 3] };
  assert.deepEqual(call('combine', a, b, kw({ list_merge: 'append' })), { l: [1, 2, 2, 3] });
  assert.deepEqual(call('combine', a, b, kw({ list_merge: 'prepend' })), { l: [2, 3, 1, 2] });
  assert.deepEqual(call('combine', a, b, kw({ list_merge: 'append_rp' })), { l: [1, 2, 3] });
  assert.deepEqual(call('combine', a, b, kw({ list_merge: 'prepend_rp' })), { l: [2, 3, 1] });
  assert.deepEqual(call('combine', a, b, kw({ list_merge: 'keep' })), { l: [1, 2] });
});

test('combine takes a list of dicts and several arguments', () => {
  assert.deepEqual(call('combine', [{ a: 1 }, { b: 2 }], { c: 3 }), { a: 1, b: 2, c: 3 });
});

test('combine of nothing is an empty dict', () => {
  assert.deepEqual(call('combine', []), {});
});

test('combine does not modify its inputs', () => {
  const a = { n: { x: 1 } };
  call('combine', a, { n: { y: 2 } }, kw({ recursive: true }));
  assert.deepEqual(a, { n: { x: 1 } });
});

test('combine fails on a non-dict', () => {
  assertFilterError(() => call('combine', { a: 1 }, 'x'), 'combine', /expected dictionaries, got "x"/);
});

test('combine fails on an unknown keyword or list_merge', () => {
  assertFilterError(
    () => call('combine', {}, kw({ deep: true })),
    'combine',
    /unexpected keyword argument 'deep'/,
  );
  assertFilterError(
    () => call('combine', {}, kw({ list_merge: 'zip' })),
    'combine',
    /list_merge must be one of/,
  );
});

// --- lower, upper

test('lower and upper change case', () => {
  assert.equal(call('lower', 'ÀB'), 'àb');
  assert.equal(call('upper', 'straße'), 'STRASSE');
});

test('lower converts a non-string with str()', () => {
  assert.equal(call('lower', true), 'true');
});

test('upper fails on an undefined value', () => {
  assertFilterError(() => call('upper', undefined), 'upper', /undefined/);
});

// --- through nunjucks

test('nunjucks passes keyword arguments to the filters', () => {
  assert.equal(render('{{ "ff" | int(base=16) }}'), '255');
  assert.equal(
    render('{{ a | combine(b, recursive=true) | to_json }}', { a: { n: { x: 1 } }, b: { n: { y: 2 } } }),
    '{"n": {"x": 1, "y": 2}}',
  );
});

test('nunjucks renders to_nice_yaml and quote', () => {
  assert.equal(render('{{ v | to_nice_yaml }}', { v: { a: [1] } }), 'a:\n- 1\n');
  assert.equal(render('echo {{ msg | quote }}', { msg: "it's" }), `echo 'it'"'"'s'`);
});

test('nunjucks rethrows a filter failure with the filter message in its own', () => {
  // nunjucks wraps the CanopyError in a plain Error ("(unknown path)\n  CanopyError: ..."), without a cause.
  assert.throws(
    () => render('{{ "abc$" | b64decode }}'),
    /CanopyError: b64decode: "abc\$" is not valid base64/,
  );
});
