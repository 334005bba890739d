/**
 * Tests of py-values.ts: Python's truthiness, ==, < ordering and int()/float() parsing of plain
 * values. Expected values come from Python 3.11.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  comparePyStrings,
  isPlainObject,
  pyCompare,
  pyEqual,
  pyParseFloat,
  pyParseInt,
  pyTruthy,
} from './py-values.js';

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

test('pyTruthy follows Python truthiness', () => {
  assert.deepEqual(
    [0, '', [], {}, null, undefined, false, Number.NaN, 'x', [0], { a: 0 }, -1].map(pyTruthy),
    [false, false, false, false, false, false, false, true, true, true, true, true],
  );
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

test('pyCompare orders numbers, strings and lists like Python', () => {
  assert.ok(pyCompare(true, 2) < 0);
  assert.ok(pyCompare('B', 'a') < 0);
  assert.ok(pyCompare([1, 'a'], [1, 'b']) < 0);
  assert.throws(() => pyCompare(null, 1), TypeError);
});

test('pyEqual compares like Python ==', () => {
  assert.equal(pyEqual(1, true), true);
  assert.equal(pyEqual({ a: [1] }, { a: [1.0] }), true);
  assert.equal(pyEqual({ a: 1 }, { b: 1 }), false);
});
