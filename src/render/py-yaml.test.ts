/**
 * Tests of py-yaml.ts (with py-yaml-emitter.ts and py-yaml-scalar.ts behind it): PyYAML's
 * yaml.dump. Expected strings were produced once by PyYAML 6.0 and pasted in as literals.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SAMPLE } from '../../test/helpers/py-sample.js';
import { pyYamlDump } from './py-yaml.js';

/** PyYAML's to_yaml: yaml.dump(v, allow_unicode=True, default_flow_style=None). */
const toYaml = (value: unknown) => pyYamlDump(value, { defaultFlowStyle: null });

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
