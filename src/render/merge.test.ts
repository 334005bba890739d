import assert from 'node:assert/strict';
import { test } from 'node:test';
import { deepMerge, getPath, mergeAll, setPath } from './merge.js';

test('deep merge merges mappings key by key, recursively', () => {
  const out = deepMerge({ app: { db: { host: 'a', port: 1 }, name: 'x' } }, { app: { db: { host: 'b' } } });
  assert.deepEqual(out, { app: { db: { host: 'b', port: 1 }, name: 'x' } });
});

test('deep merge replaces lists instead of concatenating them', () => {
  assert.deepEqual(deepMerge({ l: [1, 2, 3] }, { l: [4] }), { l: [4] });
});

test('deep merge replaces a mapping with a scalar and a scalar with a mapping', () => {
  assert.deepEqual(deepMerge({ a: { b: 1 } }, { a: 'flat' }), { a: 'flat' });
  assert.deepEqual(deepMerge({ a: 'flat' }, { a: { b: 1 } }), { a: { b: 1 } });
});

test('deep merge replaces with null (a layer can clear a value)', () => {
  assert.deepEqual(deepMerge({ a: { b: 1 } }, { a: null }), { a: null });
});

test('deep merge modifies neither input', () => {
  const low = { a: { b: 1 } };
  const high = { a: { c: 2 } };
  deepMerge(low, high);
  assert.deepEqual(low, { a: { b: 1 } });
  assert.deepEqual(high, { a: { c: 2 } });
});

test('mergeAll applies layers lowest first', () => {
  assert.deepEqual(mergeAll([{ x: 1, y: 1 }, { x: 2 }, { x: 3 }]), { x: 3, y: 1 });
});

test('getPath finds nested keys and tells a missing key from a null value', () => {
  assert.deepEqual(getPath({ a: { b: null } }, ['a', 'b']), { found: true, value: null });
  assert.deepEqual(getPath({ a: { b: null } }, ['a', 'c']), { found: false, value: undefined });
  assert.deepEqual(getPath({ a: 1 }, ['a', 'b']), { found: false, value: undefined });
});

test('getPath does not see inherited properties such as constructor', () => {
  assert.equal(getPath({}, ['constructor']).found, false);
});

test('setPath creates the mappings on the way', () => {
  assert.deepEqual(setPath({}, ['db', 'port'], 5433), { db: { port: 5433 } });
  assert.deepEqual(setPath({ db: 'x' }, ['db', 'port'], 1), { db: { port: 1 } });
});
