/**
 * Tests of py-format.ts: Python's str()/repr(), json.dumps and PyYAML's yaml.dump. Expected strings
 * were produced once by Python 3.11 / PyYAML 6.0 and pasted in as literals.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  comparePyStrings,
  isPlainObject,
  pyFloatRepr,
  pyJsonDumps,
  pyJsonString,
  pyNumberStr,
  pyRepr,
  pyReprString,
  pyStr,
  pyYamlDump,
  safeJson,
} from './py-format.js';

const SAMPLE = {
  name: 'web',
  ports: [80, 443],
  env: { DEBUG: 'false', LEVEL: 3 },
  hosts: [
    { h: 'a', up: true },
    { h: 'b', up: null },
  ],
  empty: [],
  note: "it's",
};

/** PyYAML's to_yaml: yaml.dump(v, allow_unicode=True, default_flow_style=None). */
const toYaml = (value: unknown) => pyYamlDump(value, { defaultFlowStyle: null });

// --- pyStr / pyRepr

test('pyStr prints a string as is', () => {
  assert.equal(pyStr('it\'s "x"\n'), 'it\'s "x"\n');
});

test('pyStr prints booleans as True and False', () => {
  assert.equal(pyStr(true), 'True');
  assert.equal(pyStr(false), 'False');
});

test('pyStr prints null and undefined as None', () => {
  assert.equal(pyStr(null), 'None');
  assert.equal(pyStr(undefined), 'None');
});

test('pyStr prints integers in decimal', () => {
  assert.equal(pyStr(42), '42');
  assert.equal(pyStr(-7), '-7');
  assert.equal(pyStr(0), '0');
});

test('pyStr prints non-integers like Python floats', () => {
  assert.equal(pyStr(0.5), '0.5');
  assert.equal(pyStr(1e21), '1e+21');
  assert.equal(pyStr(1e-7), '1e-07');
  assert.equal(pyStr(0.1 + 0.2), '0.30000000000000004');
});

test('pyStr prints NaN as nan', () => {
  assert.equal(pyStr(Number.NaN), 'nan');
  assert.equal(pyStr(-Infinity), '-inf');
});

test('pyStr prints a bigint exactly', () => {
  assert.equal(pyStr(12345678901234567890n), '12345678901234567890');
});

test('pyStr prints a list like Python repr', () => {
  assert.equal(pyStr(['a', 1, true, null]), "['a', 1, True, None]");
});

test('pyStr prints a dict in insertion order', () => {
  assert.equal(pyStr({ b: 1, a: [2] }), "{'b': 1, 'a': [2]}");
});

test('pyStr prints an empty list and dict', () => {
  assert.equal(pyStr([]), '[]');
  assert.equal(pyStr({}), '{}');
});

test('pyStr matches Python for a list of awkward strings', () => {
  const value = [
    'a',
    "it's",
    'say "hi"',
    'both \' "',
    'back\\slash',
    'nl\n\ttab\r',
    '\x00\x7f\x85\xa0\u200b\u2028',
    'é😀',
    true,
    null,
    { k: [1, { n: false }] },
  ];
  const python =
    "['a', \"it's\", 'say \"hi\"', 'both \\' \"', 'back\\\\slash', 'nl\\n\\ttab\\r', " +
    "'\\x00\\x7f\\x85\\xa0\\u200b\\u2028', 'é😀', True, None, {'k': [1, {'n': False}]}]";
  assert.equal(pyStr(value), python);
});

test('pyStr matches Python for a list of floats', () => {
  const value = [1.5, 1e21, 1e-7, Number.NaN, 0.1 + 0.2, 1e16, 1e15 + 0.5, 0.0001, 0.00001, -0];
  // Python prints -0.0 as '-0.0'; JS -0 is an integer, so canopy prints 0.
  assert.equal(
    pyStr(value),
    '[1.5, 1e+21, 1e-07, nan, 0.30000000000000004, 1e+16, 1000000000000000.5, 0.0001, 1e-05, 0]',
  );
});

test('pyStr prints a circular list as [...]', () => {
  const list: unknown[] = [1];
  list.push(list);
  assert.equal(pyStr(list), '[1, [...]]');
});

test('pyStr prints a non-plain object with String()', () => {
  assert.equal(pyStr(new URL('http://example.com/')), 'http://example.com/');
});

test('pyRepr quotes a top-level string', () => {
  assert.equal(pyRepr('x'), "'x'");
});

test('pyReprString uses double quotes when the string has only single quotes', () => {
  assert.equal(pyReprString("it's"), '"it\'s"');
});

test('pyReprString escapes single quotes when the string has both quote kinds', () => {
  assert.equal(pyReprString('a\'b"c'), "'a\\'b\"c'");
});

test('pyReprString escapes astral unprintables as \\U', () => {
  assert.equal(pyReprString('\u{e0001}'), "'\\U000e0001'");
});

// --- numbers

test('pyFloatRepr switches to exponent notation at 1e16', () => {
  assert.equal(pyFloatRepr(1e16), '1e+16');
  assert.equal(pyFloatRepr(1234567890123456), '1234567890123456.0');
});

test('pyFloatRepr switches to exponent notation below 1e-4', () => {
  assert.equal(pyFloatRepr(0.0001), '0.0001');
  assert.equal(pyFloatRepr(0.00001), '1e-05');
  assert.equal(pyFloatRepr(1.5e-10), '1.5e-10');
});

test('pyFloatRepr adds .0 to integral values', () => {
  assert.equal(pyFloatRepr(3), '3.0');
  assert.equal(pyFloatRepr(-0), '-0.0');
});

test('pyNumberStr prints numbers beyond 2^53 as floats', () => {
  assert.equal(pyNumberStr(2 ** 53 - 1), '9007199254740991');
  assert.equal(pyNumberStr(12345678901234568), '1.2345678901234568e+16');
});

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

// --- yaml.dump

test('pyYamlDump with flow style None writes collections of scalars in flow style', () => {
  assert.equal(
    toYaml(SAMPLE),
    "empty: []\nenv: {DEBUG: 'false', LEVEL: 3}\nhosts:\n- {h: a, up: true}\n- {h: b, up: null}\nname: web\n" +
      "note: it's\nports: [80, 443]\n",
  );
});

test('pyYamlDump with flow style False and indent 4 matches to_nice_yaml', () => {
  assert.equal(
    pyYamlDump(SAMPLE, { indent: 4 }),
    "empty: []\nenv:\n    DEBUG: 'false'\n    LEVEL: 3\nhosts:\n-   h: a\n    up: true\n-   h: b\n    up: null\n" +
      "name: web\nnote: it's\nports:\n- 80\n- 443\n",
  );
});

test('pyYamlDump with indent 2 writes list items under their key without indenting them', () => {
  assert.equal(
    pyYamlDump(SAMPLE, { indent: 2 }),
    "empty: []\nenv:\n  DEBUG: 'false'\n  LEVEL: 3\nhosts:\n- h: a\n  up: true\n- h: b\n  up: null\nname: web\n" +
      "note: it's\nports:\n- 80\n- 443\n",
  );
});

test('pyYamlDump nests lists with "- - "', () => {
  assert.equal(toYaml({ e: [{ f: 1 }, [1, [2]]] }), 'e:\n- {f: 1}\n- - 1\n  - [2]\n');
});

test('pyYamlDump ends a plain top-level scalar with the document end marker', () => {
  assert.equal(toYaml('abc'), 'abc\n...\n');
  assert.equal(toYaml(1), '1\n...\n');
  assert.equal(toYaml(null), 'null\n...\n');
});

test('pyYamlDump writes no end marker after a quoted top-level scalar', () => {
  assert.equal(toYaml('true'), "'true'\n");
});

test('pyYamlDump single-quotes strings that would read as another type', () => {
  for (const s of [
    'true',
    'yes',
    'Yes',
    'null',
    '~',
    '123',
    '1.5',
    '0x1F',
    '2024-01-01',
    '12:30',
    '<<',
    '=',
  ]) {
    assert.equal(toYaml([s]), `['${s}']\n`, s);
  }
});

test('pyYamlDump single-quotes the empty string', () => {
  assert.equal(toYaml(''), "''\n");
  assert.equal(toYaml(['']), "['']\n");
});

test('pyYamlDump single-quotes strings starting with an indicator', () => {
  for (const s of [
    '- a',
    ': a',
    '#x',
    '@x',
    '%x',
    '`x',
    '!x',
    '&x',
    '*x',
    '|',
    '>',
    '?',
    '[a]',
    '{a}',
    '---',
  ]) {
    assert.equal(toYaml(s), `'${s}'\n`, s);
  }
});

test('pyYamlDump quotes ": " and " #" inside a string but not ":" or "#" alone', () => {
  assert.equal(toYaml('a: b'), "'a: b'\n");
  assert.equal(toYaml('a #b'), "'a #b'\n");
  assert.equal(toYaml('a#b'), 'a#b\n...\n');
  assert.equal(toYaml('plain text'), 'plain text\n...\n');
});

test('pyYamlDump quotes a comma in flow context only', () => {
  assert.equal(toYaml('a,b'), 'a,b\n...\n');
  assert.equal(toYaml(['a,b']), "['a,b']\n");
});

test('pyYamlDump quotes leading and trailing spaces', () => {
  assert.equal(toYaml(' x'), "' x'\n");
  assert.equal(toYaml('x '), "'x '\n");
});

test('pyYamlDump leaves 1e21 plain because YAML 1.1 floats need a dot', () => {
  assert.equal(toYaml('1e21'), '1e21\n...\n');
});

test('pyYamlDump writes a multi-line string single-quoted with a blank line per break', () => {
  assert.equal(toYaml('multi\nline'), "'multi\n\n  line'\n");
  assert.equal(toYaml(['multi\nline']), "['multi\n\n    line']\n");
});

test('pyYamlDump double-quotes strings with control characters', () => {
  assert.equal(toYaml('tab\tx'), '"tab\\tx"\n');
  assert.equal(toYaml({ 'tab\tx': 1 }), '{"tab\\tx": 1}\n');
});

test('pyYamlDump escapes astral characters inside double quotes', () => {
  assert.equal(toYaml('é😀\t'), '"é\\U0001F600\\t"\n');
});

test('pyYamlDump writes non-ASCII text plain (allow_unicode)', () => {
  assert.equal(toYaml('é'), 'é\n...\n');
  assert.equal(toYaml({ é: 1 }), '{é: 1}\n');
});

test('pyYamlDump writes an empty key as a complex key', () => {
  assert.equal(toYaml({ '': 1 }), "{? '' : 1}\n");
  assert.equal(toYaml({ 'multi\nline': 1 }), "{? 'multi\n\n    line' : 1}\n");
});

test('pyYamlDump writes a key of 123 characters or more as a complex key', () => {
  assert.equal(toYaml({ ['k'.repeat(122)]: 1 }), `{${'k'.repeat(122)}: 1}\n`);
  assert.equal(toYaml({ ['k'.repeat(123)]: 1 }), `{? ${'k'.repeat(123)}\n  : 1}\n`);
});

test('pyYamlDump folds long plain scalars at 80 columns', () => {
  assert.equal(
    toYaml(['word '.repeat(30)]),
    "['word word word word word word word word word word word word word word word word\n" +
      "    word word word word word word word word word word word word word word ']\n",
  );
});

test('pyYamlDump honours a custom width', () => {
  assert.equal(pyYamlDump({ a: 'one two three four' }, { width: 10 }), 'a: one two three\n  four\n');
});

test('pyYamlDump ignores an indent outside 2..9', () => {
  assert.equal(pyYamlDump({ a: { b: 1 } }, { indent: 12 }), pyYamlDump({ a: { b: 1 } }, { indent: 2 }));
});

test('pyYamlDump prints floats the PyYAML way', () => {
  assert.equal(
    toYaml([0.5, 1e21, 1e16, Number.NaN, Infinity, -Infinity]),
    '[0.5, 1.0e+21, 1.0e+16, .nan, .inf, -.inf]\n',
  );
});

test('pyYamlDump sorts keys by default and keeps order with sortKeys false', () => {
  assert.equal(toYaml({ b: 1, a: 2 }), '{a: 2, b: 1}\n');
  assert.equal(pyYamlDump({ b: 1, a: 2 }, { defaultFlowStyle: null, sortKeys: false }), '{b: 1, a: 2}\n');
});

test('pyYamlDump writes --- with explicitStart', () => {
  assert.equal(pyYamlDump('abc', { explicitStart: true }), '--- abc\n...\n');
  assert.equal(pyYamlDump({ a: 1 }, { explicitStart: true, defaultFlowStyle: null }), '--- {a: 1}\n');
  assert.equal(pyYamlDump({ a: 1 }, { explicitStart: true }), '---\na: 1\n');
});

test('pyYamlDump writes empty collections in flow style even in block mode', () => {
  assert.equal(pyYamlDump({ a: [], b: {} }), 'a: []\nb: {}\n');
});

test('pyYamlDump throws for undefined and circular values', () => {
  assert.throws(() => pyYamlDump({ a: undefined }), /cannot represent an object of type undefined/);
  const list: unknown[] = [];
  list.push(list);
  assert.throws(() => pyYamlDump(list), /circular/);
});

// --- helpers

test('comparePyStrings orders by code point, astral after BMP', () => {
  assert.ok(comparePyStrings('\uff5e', '\u{1f600}') < 0);
  assert.ok(comparePyStrings('a', 'ab') < 0);
  assert.equal(comparePyStrings('x', 'x'), 0);
});

test('isPlainObject accepts object literals only', () => {
  assert.equal(isPlainObject({}), true);
  assert.equal(isPlainObject(Object.create(null)), true);
  assert.equal(isPlainObject([]), false);
  assert.equal(isPlainObject(new Date()), false);
  assert.equal(isPlainObject(null), false);
});
