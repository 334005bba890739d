import assert from 'node:assert/strict';
import { test } from 'node:test';
import { closest, didYouMean, levenshtein } from './suggest.js';

test('levenshtein counts edits', () => {
  assert.equal(levenshtein('priority', 'prioriy'), 1);
  assert.equal(levenshtein('', 'abc'), 3);
  assert.equal(levenshtein('same', 'same'), 0);
});

test('closest suggests a one-letter typo', () => {
  assert.equal(closest('prioriy', ['kind', 'priority', 'hosts']), 'priority');
  assert.equal(closest('wokers', ['workers', 'port', 'log']), 'workers');
});

test('closest makes no poor guess', () => {
  assert.equal(closest('zzz', ['kind', 'priority']), undefined);
  assert.equal(didYouMean('zzz', ['kind']), '');
});

test('closest prefers a case-only difference', () => {
  assert.equal(closest('Hosts', ['hosts', 'host']), 'hosts');
});
