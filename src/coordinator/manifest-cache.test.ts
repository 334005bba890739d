// The coordinator's manifest cache on real files and a real store in a temp
// dir: an unchanged file is hashed once (also across a restart), and any
// change of identity means hashing again, including a file rewritten in place
// with the same size and its mtime put back (only its ctime tells). The clock
// is injected so that a file written by the test counts as settled (a file
// changed in the last 2 s is never cached, see the last test).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  mkdtempSync,
  openSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { pino } from 'pino';
import { ManifestCache } from './manifest-cache.js';
import { Store } from './store.js';

const log = pino({ level: 'silent' });
const CHUNK = 64 * 1024;
/** The test's files are settled: 10 s later than their last change. */
const later = () => Date.now() + 10_000;

async function world(t: TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'canopy-mcache-'));
  const store = new Store(join(dir, 'db'));
  await store.open();
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const file = (name: string, bytes = 300 * 1024) => {
    const path = join(dir, name);
    writeFileSync(path, randomBytes(bytes));
    return path;
  };
  return { dir, store, file };
}

test('a second manifest of an unchanged file comes from the store, not from hashing it again', async (t) => {
  const w = await world(t);
  const path = w.file('image.bin');
  const cache = new ManifestCache({ store: w.store, logger: log, now: later });
  const first = await cache.manifest(path, CHUNK);
  const second = await cache.manifest(path, CHUNK);
  assert.deepEqual(cache.stats, { hashed: 1, reused: 1 });
  assert.equal(second.blob, first.blob);
  assert.deepEqual(second.manifest, first.manifest);
  assert.equal(first.manifest.chunks.length, 5);

  // A restarted coordinator (a new cache on the same store) reuses it too.
  const restarted = new ManifestCache({ store: w.store, logger: log, now: later });
  assert.equal((await restarted.manifest(path, CHUNK)).blob, first.blob);
  assert.deepEqual(restarted.stats, { hashed: 0, reused: 1 });

  // Another chunk size is another manifest.
  await restarted.manifest(path, 2 * CHUNK);
  assert.deepEqual(restarted.stats, { hashed: 1, reused: 1 });
});

test('a file rewritten in place with the same size and its mtime restored is hashed again (its ctime changed)', async (t) => {
  const w = await world(t);
  const path = w.file('image.bin');
  const stamp = new Date('2026-01-02T03:04:05Z'); // whole seconds: utimes puts back the exact ns value
  utimesSync(path, stamp, stamp);
  const cache = new ManifestCache({ store: w.store, logger: log, now: later });
  const before = statSync(path, { bigint: true });
  const old = await cache.manifest(path, CHUNK);

  const fd = openSync(path, 'r+');
  writeSync(fd, Buffer.from('changed in place'), 0, 16, 70_000);
  closeSync(fd);
  utimesSync(path, stamp, stamp);
  // The ctime moves with the kernel's coarse clock: touch it until it differs (it must, for this test).
  for (let i = 0; i < 1_000 && statSync(path, { bigint: true }).ctimeNs === before.ctimeNs; i++) {
    await new Promise((r) => setTimeout(r, 2));
    utimesSync(path, stamp, stamp);
  }
  const after = statSync(path, { bigint: true });
  assert.equal(after.size, before.size);
  assert.equal(after.mtimeNs, before.mtimeNs, 'the mtime is put back exactly');
  assert.equal(after.ino, before.ino);
  assert.notEqual(after.ctimeNs, before.ctimeNs);

  const fresh = await cache.manifest(path, CHUNK);
  assert.deepEqual(cache.stats, { hashed: 2, reused: 0 });
  assert.notEqual(fresh.manifest.md5, old.manifest.md5);
  assert.notEqual(fresh.manifest.chunks[1], old.manifest.chunks[1]);
  assert.equal(fresh.manifest.chunks[0], old.manifest.chunks[0]);
  // ... and the new one is cached in turn.
  await cache.manifest(path, CHUNK);
  assert.deepEqual(cache.stats, { hashed: 2, reused: 1 });
});

test('a file replaced by another one (a new inode, same size and times) is hashed again', async (t) => {
  const w = await world(t);
  const path = w.file('image.bin');
  const cache = new ManifestCache({ store: w.store, logger: log, now: later });
  await cache.manifest(path, CHUNK);
  const other = w.file('next.bin');
  const st = statSync(path);
  utimesSync(other, st.atime, st.mtime);
  renameSync(other, path);
  await cache.manifest(path, CHUNK);
  assert.deepEqual(cache.stats, { hashed: 2, reused: 0 });
});

test('the cache keeps its last N entries, the least recently used going first', async (t) => {
  const w = await world(t);
  const cache = new ManifestCache({ store: w.store, logger: log, now: later, limit: 3 });
  const files = ['a', 'b', 'c', 'd'].map((n) => w.file(n, 70 * 1024));
  for (const f of files.slice(0, 3)) await cache.manifest(f, CHUNK);
  await cache.manifest(files[0] ?? '', CHUNK); // a is used again: b is now the oldest
  await cache.manifest(files[3] ?? '', CHUNK);
  assert.deepEqual(cache.stats, { hashed: 4, reused: 1 });
  assert.equal((await w.store.keys(w.store.manifestCache)).length, 3);
  assert.equal((await w.store.keys(w.store.manifestCacheUse)).length, 3);
  await cache.manifest(files[0] ?? '', CHUNK);
  await cache.manifest(files[2] ?? '', CHUNK);
  await cache.manifest(files[3] ?? '', CHUNK);
  assert.deepEqual(cache.stats, { hashed: 4, reused: 4 }, 'a, c and d are still cached');
  await cache.manifest(files[1] ?? '', CHUNK);
  assert.deepEqual(cache.stats, { hashed: 5, reused: 4 }, 'b was dropped');
});

test('a file changed in the last 2 s is hashed every time (a write in the same clock tick would not show)', async (t) => {
  const w = await world(t);
  const path = w.file('fresh.bin');
  const cache = new ManifestCache({ store: w.store, logger: log }); // the real clock: the file is brand new
  await cache.manifest(path, CHUNK);
  await cache.manifest(path, CHUNK);
  assert.deepEqual(cache.stats, { hashed: 2, reused: 0 });
  assert.deepEqual(await w.store.keys(w.store.manifestCache), []);
});

test('a missing file and a bad chunk size fail as buildManifest says, and nothing is cached', async (t) => {
  const w = await world(t);
  const cache = new ManifestCache({ store: w.store, logger: log, now: later });
  await assert.rejects(cache.manifest(join(w.dir, 'nope.bin'), CHUNK), { code: 'INPUT_NOT_FOUND' });
  await assert.rejects(cache.manifest(w.file('x.bin'), 1000), { code: 'TRANSFER_MANIFEST_INVALID' });
  assert.deepEqual(cache.stats, { hashed: 0, reused: 0 });
  assert.deepEqual(await w.store.keys(w.store.manifestCache), []);
});

test('a damaged cache entry is dropped and the file hashed again', async (t) => {
  const w = await world(t);
  const path = w.file('image.bin');
  const cache = new ManifestCache({ store: w.store, logger: log, now: later });
  const good = await cache.manifest(path, CHUNK);
  const [key] = await w.store.keys(w.store.manifestCache);
  const record = await w.store.manifestCache.get(key ?? '');
  assert.ok(record && key);
  const chunks = [...record.manifest.chunks];
  chunks[2] = 'f'.repeat(64);
  await w.store.commit([
    w.store.put(w.store.manifestCache, key, { ...record, manifest: { ...record.manifest, chunks } }),
  ]);
  const again = await cache.manifest(path, CHUNK);
  assert.deepEqual(cache.stats, { hashed: 2, reused: 0 });
  assert.deepEqual(again.manifest, good.manifest);
});
