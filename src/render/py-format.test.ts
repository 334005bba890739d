/**
 * Tests of py-format.ts: Python's str()/repr() and its printing of numbers. Expected strings were
 * produced once by Python 3.11 and pasted in as literals.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pyFloatRepr, pyNumberStr, pyRepr, pyReprString, pyStr } from './py-format.js';

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
