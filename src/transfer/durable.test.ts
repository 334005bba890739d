/**
 * replaceSynced on real files: the whole new content or the old, never a
 * temp file left behind, concurrent replacements each with a temp of their own.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { replaceSynced } from './durable.js';

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'canopy-durable-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('replaceSynced creates or replaces a file with mode 0600 and leaves no temp file', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'state.json');
  await replaceSynced(path, 'one');
  assert.equal(readFileSync(path, 'utf8'), 'one');
  assert.equal(statSync(path).mode & 0o777, 0o600);
  writeFileSync(path, 'old');
  await replaceSynced(path, 'two');
  assert.equal(readFileSync(path, 'utf8'), 'two');
  assert.deepEqual(readdirSync(dir), ['state.json']);
});

test('concurrent replacements of one file each finish whole, with a temp file of their own', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'state.json');
  const texts = Array.from({ length: 8 }, (_, i) => `${i}`.repeat(100_000));
  await Promise.all(texts.map((x) => replaceSynced(path, x)));
  assert.ok(texts.includes(readFileSync(path, 'utf8')), 'the file is one of the writes, whole');
  assert.deepEqual(readdirSync(dir), ['state.json']);
});

test('a replacement that cannot be renamed into place fails, keeps what was there and removes its temp', async (t) => {
  const dir = tempDir(t);
  // A non-empty directory at the target: the rename over it fails.
  const target = join(dir, 'sub');
  mkdirSync(target);
  writeFileSync(join(target, 'inside'), 'z');
  await assert.rejects(replaceSynced(target, 'new'), /EISDIR|ENOTEMPTY|EEXIST/);
  assert.deepEqual(readdirSync(dir), ['sub']);
  assert.equal(readFileSync(join(target, 'inside'), 'utf8'), 'z');
});
