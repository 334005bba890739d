/**
 * Tests of filters.ts: every Ansible filter, its keyword arguments and its failure paths, plus a few
 * renders through nunjucks itself. Expected strings come from Python 3.11 (json, re, shlex, base64),
 * Jinja2 3.1 and PyYAML 6.0, run once by hand and pasted in as literals.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import nunjucks from 'nunjucks';
import { CanopyError } from '../errors/index.js';
import {
  ansibleFilters,
  compilePyRegex,
  pyCompare,
  pyEqual,
  pyParseFloat,
  pyParseInt,
  pyTruthy,
} from './filters.js';

/** Calls a filter the way nunjucks does: value first, then the arguments. */
function call(name: string, ...args: unknown[]): unknown {
  const fn = ansibleFilters()[name];
  assert.ok(fn, `no filter ${name}`);
  return fn(...args);
}

/** Nunjucks's keyword arguments: a trailing object marked `__keywords`. */
function kw(args: Record<string, unknown>): Record<string, unknown> {
  return { ...args, __keywords: true };
}

/** Asserts a RENDER_FILTER_FAILED error whose message starts with the filter's name. */
function assertFilterError(fn: () => unknown, filter: string, pattern?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof CanopyError, `not a CanopyError: ${String(err)}`);
    assert.equal(err.code, 'RENDER_FILTER_FAILED');
    assert.equal(err.subject.filter, filter);
    assert.ok(err.message.startsWith(`${filter}: `), err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  });
}

function render(template: string, context: Record<string, unknown> = {}): string {
  const env = new nunjucks.Environment(null, { autoescape: false });
  for (const [name, fn] of Object.entries(ansibleFilters())) env.addFilter(name, fn);
  return env.renderString(template, context);
}

const SAMPLE = { name: 'web', ports: [80, 443], env: { DEBUG: 'false', LEVEL: 3 } };

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

// --- to_json

test('to_json uses Python separators and key order', () => {
  assert.equal(
    call('to_json', SAMPLE),
    '{"name": "web", "ports": [80, 443], "env": {"DEBUG": "false", "LEVEL": 3}}',
  );
});

test('to_json escapes non-ASCII by default', () => {
  assert.equal(call('to_json', 'é😀'), '"\\u00e9\\ud83d\\ude00"');
});

test('to_json takes json.dumps keyword arguments', () => {
  assert.equal(
    call('to_json', { b: 'é', a: 1 }, kw({ sort_keys: true, ensure_ascii: false })),
    '{"a": 1, "b": "é"}',
  );
  assert.equal(call('to_json', [1, 2], kw({ indent: 2 })), '[\n  1,\n  2\n]');
  assert.equal(call('to_json', { a: [1] }, kw({ separators: [',', ':'] })), '{"a":[1]}');
});

test('to_json rejects positional arguments, as json.dumps does', () => {
  assertFilterError(() => call('to_json', {}, 2), 'to_json', /at most 0 argument/);
});

test('to_json rejects bad separators', () => {
  assertFilterError(() => call('to_json', {}, kw({ separators: ',' })), 'to_json', /separators/);
});

test('to_json fails on an undefined value', () => {
  assertFilterError(() => call('to_json', undefined), 'to_json', /undefined/);
});

test('to_json fails on a circular value', () => {
  const obj: Record<string, unknown> = {};
  obj.me = obj;
  assertFilterError(() => call('to_json', obj), 'to_json', /Circular reference/);
});

// --- to_nice_json

test('to_nice_json indents by 4 and sorts keys', () => {
  assert.equal(call('to_nice_json', { b: [1], a: {} }), '{\n    "a": {},\n    "b": [\n        1\n    ]\n}');
});

test('to_nice_json takes indent positionally or by keyword', () => {
  assert.equal(call('to_nice_json', { a: 1 }, 2), '{\n  "a": 1\n}');
  assert.equal(call('to_nice_json', { a: 1 }, kw({ indent: 1 })), '{\n "a": 1\n}');
});

test('to_nice_json keeps key order with sort_keys=false', () => {
  assert.equal(
    call('to_nice_json', { b: 1, a: 2 }, kw({ sort_keys: false, indent: 0 })),
    '{\n"b": 1,\n"a": 2\n}',
  );
});

test('to_nice_json rejects a non-integer indent', () => {
  assertFilterError(() => call('to_nice_json', {}, 2.5), 'to_nice_json', /indent/);
});

// --- to_yaml, to_nice_yaml

test('to_yaml writes collections of scalars in flow style and sorts keys', () => {
  assert.equal(call('to_yaml', SAMPLE), "env: {DEBUG: 'false', LEVEL: 3}\nname: web\nports: [80, 443]\n");
});

test('to_yaml writes lists of mappings in block style without indenting the items', () => {
  assert.equal(call('to_yaml', { hosts: [{ h: 'a' }, { h: 'b' }] }), 'hosts:\n- {h: a}\n- {h: b}\n');
});

test('to_yaml ends a plain scalar with ...', () => {
  assert.equal(call('to_yaml', 'abc'), 'abc\n...\n');
});

test('to_yaml quotes strings that would read as other types', () => {
  assert.equal(
    call('to_yaml', ['yes', 'null', '123', '1.5', '', 'true']),
    "['yes', 'null', '123', '1.5', '', 'true']\n",
  );
});

test('to_yaml takes PyYAML keyword arguments', () => {
  assert.equal(call('to_yaml', { a: [1] }, kw({ default_flow_style: false })), 'a:\n- 1\n');
  assert.equal(call('to_yaml', { b: 1, a: 2 }, kw({ sort_keys: false })), '{b: 1, a: 2}\n');
  assert.equal(call('to_yaml', { a: 1 }, kw({ explicit_start: true })), '--- {a: 1}\n');
  assert.equal(
    call('to_yaml', { a: { b: [{ c: 1, d: [2] }] } }, kw({ indent: 4 })),
    'a:\n    b:\n    -   c: 1\n        d: [2]\n',
  );
});

test('to_yaml fails on an undefined value', () => {
  assertFilterError(() => call('to_yaml', undefined), 'to_yaml', /undefined/);
});

test('to_yaml rejects an unknown keyword argument', () => {
  assertFilterError(
    () => call('to_yaml', {}, kw({ flow: true })),
    'to_yaml',
    /unexpected keyword argument 'flow'/,
  );
});

test('to_nice_yaml writes block style with indent 4', () => {
  assert.equal(
    call('to_nice_yaml', { env: { A: 1 }, hosts: [{ h: 'a', up: true }], ports: [80] }),
    'env:\n    A: 1\nhosts:\n-   h: a\n    up: true\nports:\n- 80\n',
  );
});

test('to_nice_yaml takes indent positionally or by keyword', () => {
  const expected = 'env:\n  A: 1\nhosts:\n- h: a\n';
  assert.equal(call('to_nice_yaml', { env: { A: 1 }, hosts: [{ h: 'a' }] }, 2), expected);
  assert.equal(call('to_nice_yaml', { env: { A: 1 }, hosts: [{ h: 'a' }] }, kw({ indent: 2 })), expected);
});

test('to_nice_yaml fails on a function', () => {
  assertFilterError(() => call('to_nice_yaml', { f: () => 1 }), 'to_nice_yaml', /cannot serialize/);
});

// --- b64encode, b64decode

test('b64encode encodes UTF-8', () => {
  assert.equal(call('b64encode', 'héllo wörld ✓'), 'aMOpbGxvIHfDtnJsZCDinJM=');
});

test('b64encode encodes utf-16-le for PowerShell', () => {
  assert.equal(call('b64encode', 'hi', kw({ encoding: 'utf-16-le' })), 'aABpAA==');
});

test('b64encode encodes a non-string through str()', () => {
  assert.equal(call('b64encode', true), Buffer.from('True').toString('base64'));
});

test('b64encode fails on an undefined value', () => {
  assertFilterError(() => call('b64encode', undefined), 'b64encode', /undefined/);
});

test('b64encode fails on an unknown encoding', () => {
  assertFilterError(() => call('b64encode', 'x', 'ebcdic'), 'b64encode', /unsupported encoding "ebcdic"/);
});

test('b64encode fails when latin-1 cannot hold the text', () => {
  assertFilterError(() => call('b64encode', '✓', 'latin-1'), 'b64encode', /cannot be encoded as latin1/);
});

test('b64decode decodes UTF-8', () => {
  assert.equal(call('b64decode', 'aMOpbGxvIHfDtnJsZCDinJM='), 'héllo wörld ✓');
});

test('b64decode ignores whitespace and line breaks', () => {
  assert.equal(call('b64decode', 'aMOpbGxv\nIHfDtnJs ZCDinJM=\n'), 'héllo wörld ✓');
});

test('b64decode decodes utf-16-le', () => {
  assert.equal(call('b64decode', 'aABpAA==', 'utf-16-le'), 'hi');
});

test('b64decode decodes the empty string', () => {
  assert.equal(call('b64decode', ''), '');
});

test('b64decode fails on characters outside the alphabet', () => {
  assertFilterError(() => call('b64decode', 'abc$'), 'b64decode', /"abc\$" is not valid base64/);
});

test('b64decode fails on a bad length', () => {
  assertFilterError(() => call('b64decode', 'abc'), 'b64decode', /not valid base64/);
  assertFilterError(() => call('b64decode', 'YQ'), 'b64decode', /not valid base64/);
});

test('b64decode fails on URL-safe characters', () => {
  assertFilterError(() => call('b64decode', 'a-_b'), 'b64decode', /not valid base64/);
});

test('b64decode fails on bytes that are not UTF-8', () => {
  assertFilterError(() => call('b64decode', '/w=='), 'b64decode', /not valid utf-8/);
});

test('b64decode truncates a long value in its message', () => {
  assertFilterError(
    () => call('b64decode', `${'A'.repeat(100)}$`),
    'b64decode',
    /"A{57}\.\.\." is not valid/,
  );
});

// --- regex_replace

test('regex_replace replaces every match', () => {
  assert.equal(call('regex_replace', 'a.b.c', '\\.', '-'), 'a-b-c');
});

test('regex_replace defaults to an empty replacement', () => {
  assert.equal(call('regex_replace', 'a1b22', '\\d'), 'ab');
});

test('regex_replace expands \\1 and \\g<name> in the replacement', () => {
  assert.equal(call('regex_replace', 'hello world', '(\\w+) (\\w+)', '\\2 \\1'), 'world hello');
  assert.equal(
    call('regex_replace', 'k=v', '(?P<key>\\w)=(?P<val>\\w)', '\\g<val>:\\g<key>\\g<0>'),
    'v:kk=v',
  );
  assert.equal(call('regex_replace', '2024-01-02', '(\\d+)-(\\d+)-(\\d+)', '\\3/\\2/\\1'), '02/01/2024');
});

test('regex_replace keeps $ in the replacement literal', () => {
  assert.equal(call('regex_replace', 'price 10', '(\\d+)', '$\\1.00 $1 $&'), 'price $10.00 $1 $&');
});

test('regex_replace inserts an empty string for a group that did not match', () => {
  assert.equal(call('regex_replace', 'ab', '(a)|(b)', '[\\2]'), '[][b]');
});

test('regex_replace translates (?P=name) backreferences', () => {
  assert.equal(call('regex_replace', 'aa bb cd', '(?P<c>\\w)(?P=c)', '<\\g<c>>'), '<a> <b> cd');
});

test('regex_replace replaces empty matches like Python 3.7+', () => {
  assert.equal(call('regex_replace', 'abxd', 'x*', '-'), '-a-b--d-');
});

test('regex_replace matches $ before a final newline, like Python', () => {
  assert.equal(call('regex_replace', 'line1\nline2\n', '$', '!'), 'line1\nline2!\n!');
});

test('regex_replace with multiline anchors ^ and $ at every line', () => {
  assert.equal(call('regex_replace', 'line1\nline2\n', '^l', 'L', false, true), 'Line1\nLine2\n');
  assert.equal(call('regex_replace', 'a\nb', '$', ';', kw({ multiline: true })), 'a;\nb;');
});

test('regex_replace with ignorecase matches either case', () => {
  assert.equal(call('regex_replace', 'ABC abc', 'b', '*', true), 'A*C a*c');
  assert.equal(call('regex_replace', 'ABC', 'b', '*', kw({ ignorecase: true })), 'A*C');
});

test('regex_replace honours inline flags at the start of the pattern', () => {
  assert.equal(call('regex_replace', 'foo.bar', '(?i)FOO', 'x'), 'x.bar');
  assert.equal(call('regex_replace', 'foo\nbar', '(?s)o.b', 'x'), 'foxar');
  assert.equal(call('regex_replace', 'foo bar', '(?x) o o  # two o\n', 'X'), 'fX bar');
});

test('regex_replace makes . skip only \\n, as Python does', () => {
  assert.equal(call('regex_replace', 'x\r\ny', '.', '_'), '__\n_');
});

test('regex_replace uses Unicode \\w, \\d and \\b', () => {
  assert.equal(call('regex_replace', 'café au lait', '\\b\\w', '^'), '^afé ^u ^ait');
  assert.equal(call('regex_replace', 'a1٣b', '\\d', '#'), 'a##b');
});

test('regex_replace treats a stray ] or { as a literal', () => {
  assert.equal(call('regex_replace', 'a]b', ']', 'X'), 'aXb');
  assert.equal(call('regex_replace', 'a{b}', '{b}', 'X'), 'aX');
  assert.equal(call('regex_replace', 'abc', '[]a]', 'X'), 'Xbc');
});

test('regex_replace accepts the {,n} repeat', () => {
  assert.equal(call('regex_replace', 'aaa', 'a{,2}', 'X'), 'XXX');
});

test('regex_replace accepts escaped punctuation Python allows', () => {
  assert.equal(call('regex_replace', 'x-y a b', '\\-|\\ ', '+'), 'x+y+a+b');
});

test('regex_replace translates \\A and \\Z', () => {
  assert.equal(call('regex_replace', 'abc', '\\Aa|c\\Z', 'X'), 'XbX');
  assert.equal(call('regex_replace', 'ab\n', 'b\\Z', 'X'), 'ab\n');
});

test('regex_replace handles escapes in the replacement', () => {
  assert.equal(call('regex_replace', 'tab\there', '\\t', '\\n'), 'tab\nhere');
  assert.equal(call('regex_replace', 'q', 'q', '\\\\'), '\\');
  assert.equal(call('regex_replace', 'q', 'q', '\\-'), '\\-');
  assert.equal(call('regex_replace', 'a', 'a', '\\101'), 'A');
});

test('regex_replace works on astral characters as single characters', () => {
  assert.equal(call('regex_replace', '😀x😀', '.', '-'), '---');
});

test('regex_replace stops after count replacements', () => {
  assert.equal(call('regex_replace', 'aaa', 'a', 'b', kw({ count: 2 })), 'bba');
});

test('regex_replace fails when mandatory_count is not met', () => {
  assertFilterError(
    () => call('regex_replace', 'aaa', 'a', 'b', kw({ mandatory_count: 2 })),
    'regex_replace',
    /expected 2 substitution\(s\).*made 3/,
  );
});

test('regex_replace converts a non-string value with str()', () => {
  assert.equal(call('regex_replace', 12345, '3', '-'), '12-45');
});

test('regex_replace fails on an invalid pattern', () => {
  assertFilterError(
    () => call('regex_replace', 'x', '(', ''),
    'regex_replace',
    /"\(" is not a valid regular expression/,
  );
  assertFilterError(
    () => call('regex_replace', 'x', '*x', ''),
    'regex_replace',
    /not a valid regular expression/,
  );
});

test('regex_replace fails on escapes Python rejects', () => {
  assertFilterError(() => call('regex_replace', 'x', '\\q', ''), 'regex_replace', /bad escape \\q/);
});

test('regex_replace fails on Python syntax JS cannot run', () => {
  assertFilterError(() => call('regex_replace', 'x', '(?i:x)', ''), 'regex_replace', /scoped inline flags/);
  assertFilterError(
    () => call('regex_replace', 'x', 'a(?i)', ''),
    'regex_replace',
    /global flags not at the start/,
  );
  assertFilterError(() => call('regex_replace', 'x', '(?>x)', ''), 'regex_replace', /atomic groups/);
});

test('regex_replace fails on a backreference to an unknown group', () => {
  assertFilterError(
    () => call('regex_replace', 'x', '(x)\\2', ''),
    'regex_replace',
    /invalid group reference 2/,
  );
  assertFilterError(
    () => call('regex_replace', 'x', '(?P=nope)', ''),
    'regex_replace',
    /unknown group name 'nope'/,
  );
});

test('regex_replace fails on a replacement naming an unknown group', () => {
  assertFilterError(
    () => call('regex_replace', 'x', '(x)', '\\2'),
    'regex_replace',
    /bad replacement.*invalid group reference 2/,
  );
  assertFilterError(
    () => call('regex_replace', 'x', 'x', '\\g<n>'),
    'regex_replace',
    /unknown group name 'n'/,
  );
  assertFilterError(() => call('regex_replace', 'x', 'x', '\\q'), 'regex_replace', /bad escape \\q/);
});

test('regex_replace fails on an undefined value', () => {
  assertFilterError(() => call('regex_replace', undefined, 'x'), 'regex_replace', /undefined/);
});

// --- regex_search, regex_findall, regex_escape

test('regex_search returns the first match', () => {
  assert.equal(call('regex_search', 'server-12.example', '\\d+'), '12');
});

test('regex_search returns undefined when nothing matches', () => {
  assert.equal(call('regex_search', 'abc', '\\d'), undefined);
});

test('regex_search returns the listed groups', () => {
  assert.deepEqual(call('regex_search', 'k=v', '(?P<key>\\w)=(\\w)', '\\2', '\\g<key>'), ['v', 'k']);
});

test('regex_search takes ignorecase and multiline keywords', () => {
  assert.equal(call('regex_search', 'a\nFOO', '^foo', kw({ ignorecase: true, multiline: true })), 'FOO');
});

test('regex_search fails on a bad group argument', () => {
  assertFilterError(() => call('regex_search', 'x', '(x)', 'one'), 'regex_search', /unknown argument "one"/);
  assertFilterError(
    () => call('regex_search', 'x', '(x)', '\\3'),
    'regex_search',
    /invalid group reference 3/,
  );
});

test('regex_search fails without a pattern', () => {
  assertFilterError(() => call('regex_search', 'x'), 'regex_search', /missing required argument 'regex'/);
});

test('regex_findall returns whole matches, the group, or all groups', () => {
  assert.deepEqual(call('regex_findall', 'a1 b22', '\\d+'), ['1', '22']);
  assert.deepEqual(call('regex_findall', 'a1 b22', '[a-z](\\d+)'), ['1', '22']);
  assert.deepEqual(call('regex_findall', 'a1 b22', '([a-z])(\\d+)'), [
    ['a', '1'],
    ['b', '22'],
  ]);
});

test('regex_findall fails without a pattern', () => {
  assertFilterError(() => call('regex_findall', 'x'), 'regex_findall', /missing required argument 'regex'/);
});

test('regex_escape escapes like Python re.escape', () => {
  assert.equal(call('regex_escape', 'a.b*c (d) e_f-g'), 'a\\.b\\*c\\ \\(d\\)\\ e_f\\-g');
});

test('regex_escape escapes POSIX basic specials', () => {
  assert.equal(call('regex_escape', 'a.b*[c]^$', 'posix_basic'), 'a\\.b\\*\\[c\\]\\^\\$');
});

test('regex_escape fails on an unknown regex type', () => {
  assertFilterError(() => call('regex_escape', 'x', 'pcre'), 'regex_escape', /invalid regex type "pcre"/);
});

test('compilePyRegex reports the number and names of groups', () => {
  const re = compilePyRegex('(a)(?P<b>b)(?:c)');
  assert.equal(re.groups, 2);
  assert.equal(re.names.get('b'), 2);
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

test('pyParseInt follows Python int() rules', () => {
  assert.equal(pyParseInt('0x_1f', 16), 31);
  assert.equal(pyParseInt('0x1F', 36), 42819);
  assert.equal(pyParseInt('010', 0), undefined);
  assert.equal(pyParseInt('00', 0), 0);
  assert.equal(pyParseInt('0b1', 16), 177);
  assert.equal(pyParseInt('1__0', 10), undefined);
  assert.equal(pyParseInt('_1', 10), undefined);
  assert.equal(pyParseInt('- 5', 10), undefined);
  assert.equal(pyParseInt('42', 1), undefined);
});

test('pyParseFloat follows Python float() rules', () => {
  assert.equal(pyParseFloat(' .5 '), 0.5);
  assert.equal(pyParseFloat('5.'), 5);
  assert.equal(pyParseFloat('1_0.5'), 10.5);
  assert.equal(pyParseFloat('-Infinity'), -Infinity);
  assert.equal(pyParseFloat('1e'), undefined);
  assert.equal(pyParseFloat('.'), undefined);
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

test('pyTruthy follows Python truthiness', () => {
  assert.deepEqual(
    [0, '', [], {}, null, undefined, false, Number.NaN, 'x', [0], { a: 0 }, -1].map(pyTruthy),
    [false, false, false, false, false, false, false, true, true, true, true, true],
  );
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

test('pyCompare orders numbers, strings and lists like Python', () => {
  assert.ok(pyCompare(true, 2) < 0);
  assert.ok(pyCompare('B', 'a') < 0);
  assert.ok(pyCompare([1, 'a'], [1, 'b']) < 0);
  assert.throws(() => pyCompare(null, 1), TypeError);
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

test('pyEqual compares like Python ==', () => {
  assert.equal(pyEqual(1, true), true);
  assert.equal(pyEqual({ a: [1] }, { a: [1.0] }), true);
  assert.equal(pyEqual({ a: 1 }, { b: 1 }), false);
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
