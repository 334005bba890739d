import assert from 'node:assert/strict';
import { test } from 'node:test';
import { foldHosts } from './fold-hosts.js';

test('folds numbered names into ranges, keeping zero padding and gaps', () => {
  assert.equal(foldHosts(['web-01', 'web-02', 'web-03', 'web-05']), 'web-[01-03,05]');
  assert.equal(foldHosts(['db-1', 'db-2', 'db-10']), 'db-[1-2,10]');
  assert.equal(foldHosts(['web-02', 'web-01']), 'web-[01-02]');
});

test('different prefixes, suffixes or widths stay apart; unnumbered names pass through', () => {
  assert.equal(foldHosts(['a1', 'b1', 'a2']), 'a[1-2],b1');
  assert.equal(foldHosts(['n1.bj', 'n2.bj', 'n1.sh']), 'n1.sh,n[1-2].bj');
  assert.equal(foldHosts(['x-01', 'x-1']), 'x-01,x-1');
  assert.equal(foldHosts(['gateway', 'web-1']), 'gateway,web-1');
  assert.equal(foldHosts([]), '');
});
