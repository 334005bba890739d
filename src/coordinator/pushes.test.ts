/**
 * Unit tests of the pure parts of pushes.ts that route large src files
 * peer to peer: where a staged copy goes, and how hosts share one
 * distribution. (The whole path runs end to end in test/push-large.test.ts.)
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { distributionGroups, stagedPathFor } from './pushes.js';

test('a staged copy sits beside its destination, hidden, named by the push', () => {
  assert.equal(
    stagedPathFor('/srv/app/data.bin', 'rmq1abc0123abcd'),
    '/srv/app/.data.bin.canopy-tmp-push-rmq1abc0123abcd',
  );
});

test('a staged path is computed from the normalised destination (.., //, a trailing /.)', () => {
  const want = '/srv/app/.data.bin.canopy-tmp-push-r1';
  assert.equal(stagedPathFor('/srv/x/../app/data.bin', 'r1'), want);
  assert.equal(stagedPathFor('/srv//app/data.bin', 'r1'), want);
  assert.equal(stagedPathFor('/srv/app/data.bin/.', 'r1'), want);
});

test('hosts whose staged paths differ only by their names share one distribution', () => {
  const { groups, reserved } = distributionGroups(
    new Map([
      ['web-01', '/data/web-01/.big.canopy-tmp-push-r1'],
      ['web-02', '/data/web-02/.big.canopy-tmp-push-r1'],
      ['db-01', '/data/db-01/.big.canopy-tmp-push-r1'],
    ]),
  );
  assert.deepEqual(reserved, []);
  assert.deepEqual([...groups], [['/data/{host}/.big.canopy-tmp-push-r1', ['web-01', 'web-02', 'db-01']]]);
});

test('hosts with the same staged path (no name in it) share one distribution', () => {
  const { groups } = distributionGroups(
    new Map([
      ['a1', '/opt/.big.canopy-tmp-push-r1'],
      ['a2', '/opt/.big.canopy-tmp-push-r1'],
    ]),
  );
  assert.deepEqual([...groups], [['/opt/.big.canopy-tmp-push-r1', ['a1', 'a2']]]);
});

test('each group pattern gives back every member host its exact staged path', () => {
  // "p" also occurs in "opt" and "push": every occurrence becomes {host}, and comes back.
  const staged = new Map([
    ['p', '/opt/p/.big.canopy-tmp-push-r1'],
    ['q', '/opt/q/.big.canopy-tmp-push-r1'],
    ['other', '/elsewhere/.big.canopy-tmp-push-r1'],
  ]);
  const { groups } = distributionGroups(staged);
  let members = 0;
  for (const [pattern, hosts] of groups) {
    for (const h of hosts) {
      assert.equal(pattern.replaceAll('{host}', h), staged.get(h), h);
      members++;
    }
  }
  assert.equal(members, 3);
});

test('a staged path that already contains "{host}" is reserved, not distributed', () => {
  const { groups, reserved } = distributionGroups(
    new Map([
      ['web-01', '/data/{host}/.big.canopy-tmp-push-r1'],
      ['web-02', '/data/web-02/.big.canopy-tmp-push-r1'],
    ]),
  );
  assert.deepEqual(reserved, ['web-01']);
  assert.deepEqual([...groups.values()], [['web-02']]);
});
