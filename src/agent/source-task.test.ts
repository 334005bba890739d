// The agent side of `canopy dist --source`: what may be served (the roots,
// as for a destination), the manifest it answers, and chunks read straight
// from the file, never from a file that changed since it was hashed.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  appendFileSync,
  mkdirSync,
  mkdtempSync,
  renameSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { isCanopyError } from '../errors/index.js';
import type { SourceTask } from '../protocol/index.js';
import { buildManifest, manifestId } from '../transfer/index.js';
import { closeSeed, identityChange, prepareSource, readSeedChunk } from './source-task.js';

const CHUNK = 64 * 1024;

function world(t: TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'canopy-source-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const root = join(dir, 'root');
  mkdirSync(root);
  const policy = { roots: [root], runAs: [], defaultCwd: root };
  const task = (path: string): SourceTask => ({
    id: 'r1:s1',
    runId: 'r1',
    host: 's1',
    kind: 'source',
    expiresInMs: 60_000,
    spec: { path, chunkSize: CHUNK, serveForMs: 60_000 },
  });
  return { dir, root, policy, task };
}

test('a file inside the roots: its manifest and blob id, and its chunks read from the file', async (t) => {
  const w = world(t);
  const data = randomBytes(3 * CHUNK + 100);
  const file = join(w.root, 'build.bin');
  writeFileSync(file, data);
  const { output, seed } = await prepareSource(w.task(file), w.policy, () => 1_000);
  assert.equal(output.state, 'ok', output.error);
  const manifest = await buildManifest(file, { chunkSize: CHUNK });
  assert.deepEqual(output.source?.manifest, manifest);
  assert.equal(output.source?.blob, await manifestId(manifest));
  assert.ok(seed);
  assert.equal(seed.until, 61_000);
  assert.deepEqual(Buffer.from((await readSeedChunk(seed, 3)) ?? []), data.subarray(3 * CHUNK));
  assert.deepEqual(Buffer.from((await readSeedChunk(seed, 1)) ?? []), data.subarray(CHUNK, 2 * CHUNK));
  // Touched since it was hashed: refused for good, naming the agent and the path (not "missing").
  utimesSync(file, new Date(), new Date(Date.now() + 5_000));
  await assert.rejects(readSeedChunk(seed, 1), (err: unknown) => {
    assert.ok(isCanopyError(err, 'DIST_SOURCE_REFUSED'));
    assert.match(err.message, /^agent "s1" no longer serves .*build\.bin \(blob [0-9a-f]{16}\): /);
    assert.match(err.message, /the file changed since it was hashed: it was modified \(mtime /);
    assert.match(err.message, /run canopy dist --source s1 again$/);
    return true;
  });
  await assert.rejects(readSeedChunk(seed, 0), /no longer serves/);
  await closeSeed(seed);
});

test('a seed whose file is replaced, resized or removed before it is served is refused', async (t) => {
  const w = world(t);
  const file = join(w.root, 'build.bin');
  const cases: [string, () => void, RegExp][] = [
    ['replaced', () => renameSync(join(w.root, 'other.bin'), file), /it was replaced by another file/],
    ['resized', () => appendFileSync(file, 'x'), /its size changed from 196708 to 196709 bytes/],
    ['removed', () => rmSync(file), /it no longer exists/],
  ];
  for (const [what, change, why] of cases) {
    writeFileSync(file, randomBytes(3 * CHUNK + 100));
    writeFileSync(join(w.root, 'other.bin'), randomBytes(3 * CHUNK + 100));
    const { seed } = await prepareSource(w.task(file), w.policy);
    assert.ok(seed, what);
    change();
    await assert.rejects(readSeedChunk(seed, 0), why, what);
    assert.match(seed.broken ?? '', why, what);
    await closeSeed(seed);
  }
});

test('identityChange names what differs: inode, size, mtime, ctime; nothing when all match', () => {
  const was = { dev: '1', ino: '42', size: 10, mtimeNs: '1000000000', ctimeNs: '1000000000' };
  assert.equal(identityChange(was, { ...was }), undefined);
  assert.match(
    identityChange(was, { ...was, ino: '43' }) ?? '',
    /^it was replaced by another file \(inode 1:42, now 1:43\)$/,
  );
  assert.match(identityChange(was, { ...was, dev: '2' }) ?? '', /replaced/);
  assert.equal(identityChange(was, { ...was, size: 11 }), 'its size changed from 10 to 11 bytes');
  assert.match(
    identityChange(was, { ...was, mtimeNs: '2000000001', ctimeNs: '2000000001' }) ?? '',
    /^it was modified \(mtime 1970-01-01T00:00:01\.000Z, now 1970-01-01T00:00:02\.000Z\)$/,
  );
  // A write that put mtime back (or a chmod) still moves ctime: refused too.
  assert.match(identityChange(was, { ...was, ctimeNs: '3000000000' }) ?? '', /^its inode changed \(ctime /);
});

test('outside the roots, through a symlink, a directory, or missing: refused, naming agent and path', async (t) => {
  const w = world(t);
  const outside = join(w.dir, 'secret.bin');
  writeFileSync(outside, 'x');
  const out = await prepareSource(w.task(outside), w.policy);
  assert.equal(out.output.state, 'refused');
  assert.match(
    out.output.error ?? '',
    /^agent "s1" will not serve .*secret\.bin: the source file ".*secret\.bin" is outside the allowed roots; add a root in the agent config or give a path inside one/,
  );
  assert.equal(out.seed, undefined);
  const link = join(w.root, 'link.bin');
  symlinkSync(outside, link);
  assert.match((await prepareSource(w.task(link), w.policy)).output.error ?? '', /is a symlink/);
  mkdirSync(join(w.root, 'dir'));
  const dir = await prepareSource(w.task(join(w.root, 'dir')), w.policy);
  assert.match(dir.output.error ?? '', /is not a regular file/);
  const missing = await prepareSource(w.task(join(w.root, 'nope.bin')), w.policy);
  assert.equal(missing.output.state, 'failed');
  assert.match(
    missing.output.error ?? '',
    /^agent "s1" cannot serve .*nope\.bin: no such file on this host$/,
  );
});
