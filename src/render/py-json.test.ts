/**
 * Tests of py-json.ts: Python's json.dumps. Expected strings were produced once by Python 3.11 and
 * pasted in as literals.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SAMPLE } from '../../test/helpers/py-sample.js';
import { pyJsonDumps, pyJsonString, safeJson } from './py-json.js';

// --- json.dumps

test('pyJsonDumps uses Python default separators', () => {
  assert.equal(pyJsonDumps({ a: [1, 2], b: null }), '{"a": [1, 2], "b": null}');
});

test('pyJsonDumps keeps insertion order by default', () => {
  assert.equal(
    pyJsonDumps(SAMPLE),
    '{"name": "web", "ports": [80, 443], "env": {"DEBUG": "false", "LEVEL": 3}, "hosts": [{"h": "a", "up": true}, ' +
      '{"h": "b", "up": null}], "empty": [], "note": "it\'s"}',
  );
});

test('pyJsonDumps with indent 4 and sorted keys matches to_nice_json', () => {
  const python =
    '{\n    "empty": [],\n    "env": {\n        "DEBUG": "false",\n        "LEVEL": 3\n    },\n    "hosts": [\n' +
    '        {\n            "h": "a",\n            "up": true\n        },\n        {\n            "h": "b",\n' +
    '            "up": null\n        }\n    ],\n    "name": "web",\n    "note": "it\'s",\n    "ports": [\n' +
    '        80,\n        443\n    ]\n}';
  assert.equal(pyJsonDumps(SAMPLE, { indent: 4, sortKeys: true, separators: [',', ': '] }), python);
});

test('pyJsonDumps with indent uses "," as item separator by default', () => {
  assert.equal(pyJsonDumps([1, [], {}, [2]], { indent: 2 }), '[\n  1,\n  [],\n  {},\n  [\n    2\n  ]\n]');
});

test('pyJsonDumps with indent 0 still breaks lines', () => {
  assert.equal(pyJsonDumps([1, 2], { indent: 0 }), '[\n1,\n2\n]');
});

test('pyJsonDumps accepts a string indent', () => {
  assert.equal(pyJsonDumps({ a: 1 }, { indent: '\t' }), '{\n\t"a": 1\n}');
});

test('pyJsonDumps honours custom separators', () => {
  assert.equal(pyJsonDumps({ a: [1, 2] }, { separators: [',', ':'] }), '{"a":[1,2]}');
});

test('pyJsonDumps escapes non-ASCII as \\u with surrogate pairs', () => {
  const value = { é: 'ü😀', c: '\x01\b\f\n\r\t"\\\x7f' };
  assert.equal(
    pyJsonDumps(value),
    '{"\\u00e9": "\\u00fc\\ud83d\\ude00", "c": "\\u0001\\b\\f\\n\\r\\t\\"\\\\\\u007f"}',
  );
});

test('pyJsonDumps with ensureAscii false keeps non-ASCII and DEL', () => {
  assert.equal(
    pyJsonDumps({ é: 'ü😀', c: '\x01\x7f' }, { ensureAscii: false }),
    '{"é": "ü😀", "c": "\\u0001\x7f"}',
  );
});

test('pyJsonDumps prints floats like Python, NaN and Infinity included', () => {
  const value = [1.5, 1e21, 1e-7, Number.NaN, Infinity, -Infinity, 0.1 + 0.2, 12345678901234568];
  assert.equal(
    pyJsonDumps(value),
    '[1.5, 1e+21, 1e-07, NaN, Infinity, -Infinity, 0.30000000000000004, 1.2345678901234568e+16]',
  );
});

test('pyJsonDumps prints integral floats without .0', () => {
  assert.equal(pyJsonDumps(1.0), '1');
});

test('pyJsonDumps sorts keys by code point', () => {
  assert.equal(
    pyJsonDumps({ b: 1, '\u{1f600}': 2, '\uff5e': 3, a: 4 }, { sortKeys: true, ensureAscii: false }),
    '{"a": 4, "b": 1, "\uff5e": 3, "\u{1f600}": 2}',
  );
});

test('pyJsonDumps throws for undefined', () => {
  assert.throws(() => pyJsonDumps({ a: undefined }), /Object of type undefined is not JSON serializable/);
});

test('pyJsonDumps throws for a circular structure', () => {
  const obj: Record<string, unknown> = {};
  obj.self = obj;
  assert.throws(() => pyJsonDumps(obj), /Circular reference detected/);
});

test('pyJsonString escapes only what Python escapes', () => {
  assert.equal(pyJsonString('a/b'), '"a/b"');
  assert.equal(pyJsonString('\u2028'), '"\\u2028"');
});

test('safeJson falls back to String for unserializable values', () => {
  assert.equal(safeJson(undefined), 'undefined');
  assert.equal(safeJson({ a: 'é' }), '{"a": "é"}');
});
