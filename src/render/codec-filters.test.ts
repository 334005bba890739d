/**
 * Tests of codec-filters.ts, through the filter table as nunjucks calls it: to_json,
 * to_nice_json, to_yaml, to_nice_yaml, b64encode and b64decode. Expected strings come from Python
 * 3.11 (json, base64) and PyYAML 6.0, run once by hand and pasted in as literals.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { assertFilterError, call, kw } from '../../test/helpers/filters.js';

const SAMPLE = { name: 'web', ports: [80, 443], env: { DEBUG: 'false', LEVEL: 3 } };

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
