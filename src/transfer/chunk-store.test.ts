/**
 * The chunk store on real temp directories: verification before visibility,
 * LRU eviction under a quota with pins, crash recovery (simulated by editing
 * the directory, and a real kill -9 of a writer), assemble(), and packs
 * (a distribution's blob as one file: reservation, eviction, serving,
 * fillPack, reopen and recovery).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  appendFileSync,
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, type TestContext, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { blake3 } from 'hash-wasm';
import { isCanopyError } from '../errors/index.js';
import { ChunkStore, type ChunkStoreOptions } from './chunk-store.js';
import { buildManifest, chunkRange, type Manifest, manifestId } from './manifest.js';
import { Pack } from './pack.js';

const CS = 64 * 1024;

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'canopy-chunks-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Opens a store that the test closes, with a clock that ticks once per reading. */
async function openStore(t: TestContext, dir: string, options: Partial<ChunkStoreOptions> = {}) {
  let clock = 1_000;
  const store = await ChunkStore.open(dir, { quotaBytes: 1 << 30, now: () => clock++, ...options });
  t.after(() => store.close());
  return store;
}

interface Chunk {
  data: Buffer;
  digest: string;
}

async function chunk(fill: string, size = 100): Promise<Chunk> {
  const data = Buffer.alloc(size, fill);
  return { data, digest: await blake3(data) };
}

/** One 100-byte chunk per fill character, as a tuple of the same length. */
function chunks<const T extends readonly string[]>(...fills: T): Promise<{ [K in keyof T]: Chunk }> {
  return Promise.all(fills.map((f) => chunk(f))) as Promise<{ [K in keyof T]: Chunk }>;
}

/** The digest of chunk `i` of a manifest (a test bug if absent). */
function digestAt(m: Manifest, i: number): string {
  const d = m.chunks[i];
  assert.ok(d !== undefined, `manifest has no chunk ${i}`);
  return d;
}

const pathOf = (dir: string, digest: string) => join(dir, 'chunks', digest.slice(0, 2), digest);
const shardFiles = (dir: string, digest: string) => readdirSync(join(dir, 'chunks', digest.slice(0, 2)));
const md5 = (data: Uint8Array) => createHash('md5').update(data).digest('hex');

function codeOf(code: string, ...patterns: RegExp[]) {
  return (err: unknown) => {
    assert.ok(isCanopyError(err), String(err));
    assert.equal(err.code, code, err.message);
    for (const p of patterns) assert.match(err.message, p);
    return true;
  };
}

test('put then get returns the bytes, stored under chunks/<first 2 hex>/<digest>', async (t) => {
  const dir = tempDir(t);
  const store = await openStore(t, dir);
  const a = await chunk('a');
  assert.equal(store.has(a.digest), false);
  await store.put(a.digest, a.data);
  assert.equal(store.has(a.digest), true);
  assert.deepEqual(await store.get(a.digest), a.data);
  assert.deepEqual(await store.get(a.digest, { verify: true }), a.data);
  assert.deepEqual(readFileSync(pathOf(dir, a.digest)), a.data);
  assert.deepEqual(shardFiles(dir, a.digest), [a.digest]);
  assert.equal(store.usedBytes, 100);
  assert.equal(store.count, 1);
});

test('a chunk whose bytes do not match its digest is refused and nothing becomes visible', async (t) => {
  const dir = tempDir(t);
  const store = await openStore(t, dir);
  const a = await chunk('a');
  const b = await chunk('b');
  await assert.rejects(
    store.put(a.digest, b.data),
    codeOf(
      'TRANSFER_DIGEST_MISMATCH',
      new RegExp(`expected digest ${a.digest}`),
      new RegExp(`hash to ${b.digest}`),
    ),
  );
  assert.equal(store.has(a.digest), false);
  assert.deepEqual(shardFiles(dir, a.digest), []);
  assert.equal(store.usedBytes, 0);
  await assert.rejects(store.get(a.digest), codeOf('TRANSFER_CHUNK_MISSING', new RegExp(a.digest)));
});

test('a malformed digest is refused before it can name a path', async (t) => {
  const dir = tempDir(t);
  const store = await openStore(t, dir);
  const evil = '../../../escaped';
  await assert.rejects(
    store.put(evil, Buffer.from('x')),
    codeOf('TRANSFER_DIGEST_MISMATCH', /not a BLAKE3-256/),
  );
  await assert.rejects(store.get(evil), codeOf('TRANSFER_DIGEST_MISMATCH', /not a BLAKE3-256/));
  assert.equal(store.has(evil), false);
  assert.equal(existsSync(join(dir, '..', 'escaped')), false);
});

test('get of an absent chunk names the digest and the store', async (t) => {
  const dir = tempDir(t);
  const store = await openStore(t, dir);
  const a = await chunk('a');
  await assert.rejects(
    store.get(a.digest),
    codeOf('TRANSFER_CHUNK_MISSING', new RegExp(`chunk ${a.digest} is not in the chunk store ${dir}`)),
  );
});

test('concurrent puts of the same digest store it once', async (t) => {
  const dir = tempDir(t);
  const store = await openStore(t, dir, { quotaBytes: 150 });
  const a = await chunk('a');
  await Promise.all([1, 2, 3, 4].map(() => store.put(a.digest, Buffer.from(a.data))));
  assert.equal(store.count, 1);
  assert.equal(store.usedBytes, 100);
  assert.deepEqual(shardFiles(dir, a.digest), [a.digest]);
});

test('concurrent puts of different chunks never overrun the quota', async (t) => {
  const dir = tempDir(t);
  const store = await openStore(t, dir, { quotaBytes: 250 });
  const cs = await chunks('a', 'b', 'c', 'd', 'e');
  await Promise.all(cs.map((c) => store.put(c.digest, c.data)));
  assert.equal(store.count, 2);
  assert.equal(store.usedBytes, 200);
  const onDisk = cs.filter((c) => existsSync(pathOf(dir, c.digest)));
  assert.equal(onDisk.length, 2);
  assert.deepEqual(
    onDisk.map((c) => c.digest),
    cs.filter((c) => store.has(c.digest)).map((c) => c.digest),
  );
});

test('eviction takes the least recently used chunk, and get() counts as a use', async (t) => {
  const dir = tempDir(t);
  const store = await openStore(t, dir, { quotaBytes: 300 });
  const [a, b, c, d, e] = await chunks('a', 'b', 'c', 'd', 'e');
  for (const x of [a, b, c]) await store.put(x.digest, x.data);
  await store.get(a.digest);
  await store.put(d.digest, d.data);
  assert.deepEqual(
    [a, b, c, d].map((x) => store.has(x.digest)),
    [true, false, true, true],
  );
  assert.equal(existsSync(pathOf(dir, b.digest)), false);
  await store.put(e.digest, e.data);
  assert.deepEqual(
    [a, c, d, e].map((x) => store.has(x.digest)),
    [true, false, true, true],
  );
  assert.equal(store.usedBytes, 300);
});

test('the use order survives a reopen', async (t) => {
  const dir = tempDir(t);
  const [a, b, c, d] = await chunks('a', 'b', 'c', 'd');
  const first = await ChunkStore.open(dir, { quotaBytes: 300 });
  for (const x of [a, b, c]) await first.put(x.digest, x.data);
  await first.get(a.digest);
  await first.close();
  await first.close(); // twice is harmless
  const store = await openStore(t, dir, { quotaBytes: 300 });
  assert.equal(store.usedBytes, 300);
  await store.put(d.digest, d.data);
  assert.deepEqual(
    [a, b, c, d].map((x) => store.has(x.digest)),
    [true, false, true, true],
  );
});

test('pinned chunks are never evicted; unpin makes them evictable again', async (t) => {
  const dir = tempDir(t);
  const store = await openStore(t, dir, { quotaBytes: 300 });
  const [a, b, c, d, e, f] = await chunks('a', 'b', 'c', 'd', 'e', 'f');
  for (const x of [a, b, c]) await store.put(x.digest, x.data);
  store.pin('dist-1', [a.digest, b.digest]);
  store.pin('dist-2', [a.digest]);
  await store.put(d.digest, d.data); // a is the oldest but pinned: c goes
  assert.deepEqual(
    [a, b, c, d].map((x) => store.has(x.digest)),
    [true, true, false, true],
  );
  await store.put(e.digest, e.data); // only d is unpinned
  assert.deepEqual(
    [a, b, d, e].map((x) => store.has(x.digest)),
    [true, true, false, true],
  );
  store.unpin('dist-1'); // a is still pinned by dist-2, b is free and older than e
  await store.put(f.digest, f.data);
  assert.deepEqual(
    [a, b, e, f].map((x) => store.has(x.digest)),
    [true, false, true, true],
  );
});

test('when only pinned chunks are left the put fails with TRANSFER_QUOTA and evicts nothing', async (t) => {
  const dir = tempDir(t);
  const store = await openStore(t, dir, { quotaBytes: 300 });
  const [a, b, c, d] = await chunks('a', 'b', 'c', 'd');
  for (const x of [a, b, c]) await store.put(x.digest, x.data);
  store.pin('dist-7', [a.digest, c.digest]);
  store.pin('dist-8', [b.digest]);
  await assert.rejects(
    store.put(d.digest, d.data),
    codeOf(
      'TRANSFER_QUOTA',
      new RegExp(`chunk store ${dir} is full: quota 300 bytes, 300 bytes used`),
      /300 bytes pinned by running distributions: dist-7, dist-8/,
      new RegExp(`chunk ${d.digest} needs 100 bytes more`),
      /Raise the store's quota to at least 400 bytes/,
    ),
  );
  assert.deepEqual(
    [a, b, c, d].map((x) => store.has(x.digest)),
    [true, true, true, false],
  );
  assert.equal(store.usedBytes, 300);
  assert.deepEqual(shardFiles(dir, d.digest), []);
});

test('a chunk larger than the whole quota is refused with TRANSFER_QUOTA', async (t) => {
  const store = await openStore(t, tempDir(t), { quotaBytes: 99 });
  const a = await chunk('a');
  await assert.rejects(store.put(a.digest, a.data), codeOf('TRANSFER_QUOTA', /quota 99 bytes/));
  assert.equal(store.count, 0);
});

test('open refuses a quota that is not a positive whole number', async (t) => {
  const dir = tempDir(t);
  for (const quotaBytes of [0, -5, 1.5, Number.NaN]) {
    await assert.rejects(
      ChunkStore.open(dir, { quotaBytes }),
      codeOf('TRANSFER_QUOTA', /not a positive whole/),
    );
  }
});

test('reopen after a crash removes temp files and drops or adopts what index and directory disagree on', async (t) => {
  const dir = tempDir(t);
  const [a, b, c, e, f] = await chunks('a', 'b', 'c', 'e', 'f');
  const first = await ChunkStore.open(dir, { quotaBytes: 10_000 });
  for (const x of [a, b, c]) await first.put(x.digest, x.data);
  await first.close();
  const temp = join(dir, 'chunks', a.digest.slice(0, 2), `.${a.digest}.4242.1.tmp`);
  writeFileSync(temp, 'half a chunk');
  unlinkSync(pathOf(dir, b.digest)); // index entry for a missing file
  writeFileSync(pathOf(dir, e.digest), e.data); // renamed, crashed before the index append
  writeFileSync(pathOf(dir, f.digest), 'not the bytes of f'); // a file that does not hash to its name
  appendFileSync(join(dir, 'index.log'), `+ ${c.digest} 10`); // torn last record
  const store = await openStore(t, dir, { quotaBytes: 10_000 });
  assert.deepEqual(store.recovered, {
    tempFilesRemoved: 1,
    entriesDropped: 1,
    orphansAdopted: 1,
    orphansRemoved: 1,
    evictedOverQuota: 0,
  });
  assert.deepEqual(
    [a, b, c, e, f].map((x) => store.has(x.digest)),
    [true, false, true, true, false],
  );
  assert.equal(existsSync(temp), false);
  assert.equal(existsSync(pathOf(dir, f.digest)), false);
  assert.equal(store.usedBytes, 300);
  assert.deepEqual(await store.get(e.digest, { verify: true }), e.data);
  await store.close();
  const again = await openStore(t, dir, { quotaBytes: 10_000 });
  assert.deepEqual(Object.values(again.recovered), [0, 0, 0, 0, 0]);
  assert.equal(again.usedBytes, 300);
  const index = readFileSync(join(dir, 'index.log'), 'utf8');
  assert.equal(index.includes(b.digest), false);
});

test('a store lowered below what it holds evicts the least recently used chunks at open', async (t) => {
  const dir = tempDir(t);
  const [a, b, c] = await chunks('a', 'b', 'c');
  const first = await ChunkStore.open(dir, { quotaBytes: 1000 });
  for (const x of [a, b, c]) await first.put(x.digest, x.data);
  await first.get(a.digest);
  await first.close();
  const store = await openStore(t, dir, { quotaBytes: 200 });
  assert.equal(store.recovered.evictedOverQuota, 1);
  assert.deepEqual(
    [a, b, c].map((x) => store.has(x.digest)),
    [true, false, true],
  );
});

test('a long log of uses is compacted and keeps the same state', async (t) => {
  const dir = tempDir(t);
  const [a, b] = await chunks('a', 'b');
  const store = await ChunkStore.open(dir, { quotaBytes: 1000 });
  await store.put(a.digest, a.data);
  for (let i = 0; i < 3000; i++) await store.get(a.digest);
  await store.put(b.digest, b.data);
  await store.close();
  const lines = readFileSync(join(dir, 'index.log'), 'utf8').trimEnd().split('\n');
  assert.ok(lines.length < 1100, `index has ${lines.length} lines`);
  const again = await openStore(t, dir, { quotaBytes: 1000 });
  assert.deepEqual(Object.values(again.recovered), [0, 0, 0, 0, 0]);
  assert.equal(again.count, 2);
});

test('chunks a writer stored survive its kill -9, and everything the store then has verifies', async (t) => {
  const dir = tempDir(t);
  const module = pathToFileURL(join(import.meta.dirname, 'chunk-store.ts')).href;
  const script = `
    import { ChunkStore } from ${JSON.stringify(module)};
    import { blake3 } from 'hash-wasm';
    const store = await ChunkStore.open(${JSON.stringify(dir)}, { quotaBytes: 1 << 30 });
    for (let i = 0; ; i++) {
      const data = Buffer.alloc(${CS}, i % 251);
      data.writeUInt32LE(i);
      const digest = await blake3(data);
      await store.put(digest, data);
      process.stdout.write(digest + '\\n');
    }`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: import.meta.dirname,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.after(() => child.kill('SIGKILL'));
  const stored: string[] = [];
  for await (const line of createInterface({ input: child.stdout })) {
    stored.push(line);
    if (stored.length === 40) break;
  }
  const closed = new Promise((resolve) => child.once('close', resolve));
  child.kill('SIGKILL');
  await closed;
  const store = await openStore(t, dir);
  for (const d of stored) assert.ok(store.has(d), `chunk ${d} acknowledged by the writer is gone`);
  assert.ok(store.count >= 40);
  for (const dirent of readdirSync(join(dir, 'chunks'), { recursive: true })) {
    assert.equal(String(dirent).endsWith('.tmp'), false, `temp file ${dirent} left behind`);
  }
  // The writer stored chunks 0, 1, 2, ... one after another: the store must hold a prefix of them.
  for (let i = 0; i < store.count; i++) {
    const data = Buffer.alloc(CS, i % 251);
    data.writeUInt32LE(i);
    const digest = await blake3(data);
    assert.ok(store.has(digest), `chunk ${i} is missing while later ones are present`);
    assert.deepEqual(await store.get(digest, { verify: true }), data);
  }
});

test('get with verify catches a chunk damaged on disk and removes it; a wrong length is caught anyway', async (t) => {
  const dir = tempDir(t);
  const store = await openStore(t, dir);
  const [a, b] = await chunks('a', 'b');
  for (const x of [a, b]) await store.put(x.digest, x.data);
  writeFileSync(pathOf(dir, a.digest), Buffer.alloc(100, 'z'));
  assert.deepEqual(await store.get(a.digest), Buffer.alloc(100, 'z')); // unverified read: same length passes
  await assert.rejects(
    store.get(a.digest, { verify: true }),
    codeOf(
      'TRANSFER_DIGEST_MISMATCH',
      new RegExp(`chunk file ${pathOf(dir, a.digest)}`),
      /removed from the store/,
    ),
  );
  assert.equal(store.has(a.digest), false);
  assert.equal(existsSync(pathOf(dir, a.digest)), false);
  writeFileSync(pathOf(dir, b.digest), b.data.subarray(0, 60));
  await assert.rejects(store.get(b.digest), codeOf('TRANSFER_DIGEST_MISMATCH', /holds 60 bytes/));
  assert.equal(store.usedBytes, 0);
});

/** A random multi-chunk file, its manifest, and a store holding its chunks. */
async function blobInStore(t: TestContext, data: Buffer = randomBytes(3 * CS + 777), quotaBytes = 1 << 30) {
  const dir = tempDir(t);
  const src = join(dir, 'source');
  writeFileSync(src, data);
  const manifest = await buildManifest(src, { chunkSize: CS });
  const store = await openStore(t, join(dir, 'store'), { quotaBytes });
  for (let i = 0; i < manifest.chunks.length; i++) {
    await store.put(digestAt(manifest, i), data.subarray(i * CS, (i + 1) * CS));
  }
  return { dir, data, manifest, store };
}

test('assemble writes a multi-chunk blob to a path, an fd and a FileHandle, and its MD5 is right', async (t) => {
  const { dir, data, manifest, store } = await blobInStore(t);
  const path = join(dir, 'out-path');
  await store.assemble(manifest, path);
  assert.deepEqual(readFileSync(path), data);
  assert.equal(md5(readFileSync(path)), manifest.md5);

  const fdPath = join(dir, 'out-fd');
  writeFileSync(fdPath, Buffer.alloc(data.length + 5000, 1)); // longer garbage gets truncated
  const fd = openSync(fdPath, 'r+');
  await store.assemble(manifest, fd, { verify: true });
  closeSync(fd);
  assert.deepEqual(readFileSync(fdPath), data);

  const fhPath = join(dir, 'out-fh');
  const fh = await open(fhPath, 'w');
  await store.assemble(manifest, fh);
  await fh.close();
  assert.deepEqual(readFileSync(fhPath), data);
});

test('assemble handles repeated chunks and the empty blob', async (t) => {
  const zeros = await blobInStore(t, Buffer.alloc(3 * CS));
  assert.equal(new Set(zeros.manifest.chunks).size, 1);
  assert.equal(zeros.store.count, 1);
  const fresh = await openStore(t, join(zeros.dir, 'fresh'));
  assert.deepEqual(fresh.missing(zeros.manifest), [0, 1, 2]);
  await zeros.store.assemble(zeros.manifest, join(zeros.dir, 'out'));
  assert.deepEqual(readFileSync(join(zeros.dir, 'out')), zeros.data);
  const empty = await blobInStore(t, Buffer.alloc(0));
  await empty.store.assemble(empty.manifest, join(empty.dir, 'out'));
  assert.equal(readFileSync(join(empty.dir, 'out')).length, 0);
});

test('assemble detects a chunk damaged on disk through the MD5, names it, and drops it', async (t) => {
  const { dir, manifest, store } = await blobInStore(t);
  const victim = digestAt(manifest, 2);
  const path = pathOf(join(dir, 'store'), victim);
  const bytes = readFileSync(path);
  bytes[100] = (bytes[100] ?? 0) ^ 0xff;
  writeFileSync(path, bytes);
  await assert.rejects(
    store.assemble(manifest, join(dir, 'out')),
    codeOf(
      'TRANSFER_DIGEST_MISMATCH',
      new RegExp(`but the manifest gives ${manifest.md5}`),
      /chunks 2 were damaged on disk/,
      /fetch the chunk again/,
    ),
  );
  assert.deepEqual(store.missing(manifest), [2]);
});

test('assemble with verify stops at the first damaged chunk and names its digest', async (t) => {
  const { dir, manifest, store } = await blobInStore(t);
  const victim = digestAt(manifest, 1);
  writeFileSync(pathOf(join(dir, 'store'), victim), Buffer.alloc(CS, 9));
  await assert.rejects(
    store.assemble(manifest, join(dir, 'out'), { verify: true }),
    codeOf('TRANSFER_DIGEST_MISMATCH', /chunk 1 of the blob/, new RegExp(`expected ${victim}`)),
  );
  assert.deepEqual(store.missing(manifest), [1]);
});

test('assemble refuses a manifest whose md5 is wrong, and keeps the good chunks', async (t) => {
  const { dir, manifest, store } = await blobInStore(t);
  const lying: Manifest = { ...manifest, md5: '0'.repeat(32) };
  await assert.rejects(
    store.assemble(lying, join(dir, 'out')),
    codeOf(
      'TRANSFER_DIGEST_MISMATCH',
      /every chunk matches its BLAKE3 digest, so the manifest's md5 is wrong/,
    ),
  );
  assert.deepEqual(store.missing(manifest), []);
});

test('missing() lists absent chunk indexes in order, and assemble refuses before writing', async (t) => {
  const { dir, manifest, store } = await blobInStore(t, randomBytes(4 * CS + 1));
  assert.deepEqual(store.missing(manifest), []);
  const partial = await openStore(t, join(dir, 'other'));
  for (const i of [1, 3]) await partial.put(digestAt(manifest, i), await store.get(digestAt(manifest, i)));
  assert.deepEqual(partial.missing(manifest), [0, 2, 4]);
  const out = join(dir, 'out');
  await assert.rejects(
    partial.assemble(manifest, out),
    codeOf('TRANSFER_CHUNK_MISSING', /lacks 3 of the blob's 5 chunks \(0, 2, 4; chunk 0 is [0-9a-f]{64}\)/),
  );
  assert.equal(existsSync(out), false);
});

test('assemble honours an aborted signal and releases its pins', async (t) => {
  const { dir, manifest, store } = await blobInStore(t, randomBytes(3 * CS + 777), 3 * CS + 777);
  const ac = new AbortController();
  ac.abort(new Error('job cancelled'));
  await assert.rejects(store.assemble(manifest, join(dir, 'out'), { signal: ac.signal }), /job cancelled/);
  // Were the assembly's pins left behind, no chunk could be evicted to make room here.
  const other = Buffer.alloc(CS, 3);
  await store.put(await blake3(other), other);
  assert.deepEqual(store.missing(manifest), [0]);
});

describe('packs: a distribution blob as one file in the store', () => {
  interface PackBlob {
    data: Buffer;
    manifest: Manifest;
    blob: string;
    /** The bytes of chunk `i`. */
    at(i: number): Buffer;
    /** The digest of chunk `i`. */
    d(i: number): string;
  }

  /** A blob of `data` (written under `dir` to build its manifest), its id and its chunks. */
  async function packBlob(dir: string, data: Buffer): Promise<PackBlob> {
    const src = join(dir, `source-${randomBytes(4).toString('hex')}`);
    writeFileSync(src, data);
    const manifest = await buildManifest(src, { chunkSize: CS });
    unlinkSync(src);
    const at = (i: number) => {
      const { offset, length } = chunkRange(manifest, i);
      return data.subarray(offset, offset + length);
    };
    return { data, manifest, blob: await manifestId(manifest), at, d: (i) => digestAt(manifest, i) };
  }

  const packFiles = (dir: string, blob: string) => [
    Pack.dataPath(join(dir, 'packs'), blob),
    Pack.logPath(join(dir, 'packs'), blob),
  ];
  const bothExist = (dir: string, blob: string) => packFiles(dir, blob).map((p) => existsSync(p));

  async function putAll(store: ChunkStore, pack: Pack, b: PackBlob, order: number[]): Promise<void> {
    for (const i of order) await store.putInPack(pack, i, b.at(i));
  }

  async function copiesOut(pack: Pack, b: PackBlob, dir: string): Promise<void> {
    const out = join(dir, `out-${randomBytes(4).toString('hex')}`);
    await pack.copyTo(out);
    assert.deepEqual(readFileSync(out), b.data);
  }

  /** Overwrites bytes of a file in place (a disk that damaged them). */
  function damage(path: string, position: number): void {
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.from('damaged'), 0, 7, position);
    closeSync(fd);
  }

  test('openPack reserves the blob size at once, evicting unpinned chunks least recently used first', async (t) => {
    const dir = tempDir(t);
    const b = await packBlob(dir, randomBytes(3 * CS + 777));
    const store = await openStore(t, dir, { quotaBytes: b.manifest.size + 200 });
    const [x, y, z] = await chunks('x', 'y', 'z');
    for (const c of [x, y, z]) await store.put(c.digest, c.data);
    await store.get(x.digest); // y is now the least recently used
    const pack = await store.openPack('dist-1', b.blob, b.manifest);
    assert.equal(store.usedBytes, b.manifest.size + 200);
    assert.deepEqual(
      [x, y, z].map((c) => store.has(c.digest)),
      [true, false, true],
    );
    assert.equal(existsSync(pathOf(dir, y.digest)), false);
    assert.equal(store.count, 3);
    assert.equal(pack.count, 0);
    assert.deepEqual(bothExist(dir, b.blob), [true, true]);
    assert.equal(statSync(Pack.dataPath(join(dir, 'packs'), b.blob)).size, b.manifest.size);
  });

  test('openPack with too small a quota fails with TRANSFER_QUOTA naming the store and the blob, creating nothing', async (t) => {
    const dir = tempDir(t);
    const b = await packBlob(dir, randomBytes(3 * CS + 777));
    const store = await openStore(t, dir, { quotaBytes: b.manifest.size + 50 });
    const x = await chunk('x');
    await store.put(x.digest, x.data);
    store.pin('dist-0', [x.digest]);
    await assert.rejects(
      store.openPack('dist-1', b.blob, b.manifest),
      codeOf(
        'TRANSFER_QUOTA',
        new RegExp(`chunk store ${dir} is full`),
        /100 bytes pinned by running distributions: dist-0/,
        new RegExp(`blob ${b.blob} needs 192.8 KiB \\(${b.manifest.size} bytes\\) more`),
      ),
    );
    assert.deepEqual(readdirSync(join(dir, 'packs')), []);
    assert.equal(store.usedBytes, 100);
    assert.equal(store.has(x.digest), true);
    // The failed open left no pin behind: once x is free, the same owner gets its pack.
    store.unpin('dist-0');
    const pack = await store.openPack('dist-1', b.blob, b.manifest);
    assert.equal(store.has(x.digest), false);
    assert.equal(store.usedBytes, b.manifest.size);
    await putAll(store, pack, b, [0, 1, 2, 3]);
    await copiesOut(pack, b, dir);
  });

  test('a closed pack is evicted least recently used first when another needs room, and its files are removed', async (t) => {
    const dir = tempDir(t);
    const a = await packBlob(dir, randomBytes(2 * CS + 1));
    const b = await packBlob(dir, randomBytes(2 * CS + 2));
    const c = await packBlob(dir, randomBytes(2 * CS + 3));
    const store = await openStore(t, dir, { quotaBytes: 4 * CS + 200 });
    const packA = await store.openPack('dist-a', a.blob, a.manifest);
    await store.putInPack(packA, 0, a.at(0));
    store.unpin('dist-a');
    assert.equal(store.has(a.d(0)), false, 'a closed pack serves nothing');
    await store.openPack('dist-b', b.blob, b.manifest);
    store.unpin('dist-b');
    const againA = await store.openPack('dist-a2', a.blob, a.manifest); // a is now more recent than b
    assert.deepEqual([...againA.held], [1, 0, 0]);
    store.unpin('dist-a2');
    assert.equal(store.usedBytes, a.manifest.size + b.manifest.size);
    const packC = await store.openPack('dist-c', c.blob, c.manifest);
    assert.deepEqual(bothExist(dir, b.blob), [false, false]);
    assert.deepEqual(bothExist(dir, a.blob), [true, true]);
    assert.equal(store.usedBytes, a.manifest.size + c.manifest.size);
    assert.equal(store.count, 2);
    await putAll(store, packC, c, [2, 1, 0]);
    await copiesOut(packC, c, dir);
  });

  test('a pinned pack is never evicted: the blob that needs its room fails with TRANSFER_QUOTA', async (t) => {
    const dir = tempDir(t);
    const a = await packBlob(dir, randomBytes(2 * CS + 1));
    const c = await packBlob(dir, randomBytes(2 * CS + 3));
    const store = await openStore(t, dir, { quotaBytes: 3 * CS });
    const packA = await store.openPack('dist-a', a.blob, a.manifest);
    await store.putInPack(packA, 1, a.at(1));
    await assert.rejects(
      store.openPack('dist-c', c.blob, c.manifest),
      codeOf('TRANSFER_QUOTA', /pinned by running distributions: dist-a/, new RegExp(`blob ${c.blob}`)),
    );
    assert.deepEqual(bothExist(dir, a.blob), [true, true]);
    assert.deepEqual(bothExist(dir, c.blob), [false, false]);
    assert.equal(store.has(a.d(1)), true);
    await putAll(store, packA, a, [0, 2]);
    await copiesOut(packA, a, dir);
    store.unpin('dist-a');
    await store.openPack('dist-c', c.blob, c.manifest);
    assert.deepEqual(bothExist(dir, a.blob), [false, false]);
    assert.equal(store.usedBytes, c.manifest.size);
  });

  test('has, get and waitFor see the chunks of an open pack; waitFor wakes when putInPack lands', async (t) => {
    const dir = tempDir(t);
    const b = await packBlob(dir, randomBytes(3 * CS + 777));
    const store = await openStore(t, dir);
    const pack = await store.openPack('dist-1', b.blob, b.manifest);
    assert.equal(store.has(b.d(1)), false);
    assert.deepEqual(store.missing(b.manifest), [0, 1, 2, 3]);
    let woke: boolean | undefined;
    const waiting = store.waitFor(b.d(1), 60_000).then((ok) => {
      woke = ok;
      return ok;
    });
    await store.putInPack(pack, 0, b.at(0));
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(woke, undefined, 'waitFor woke for another chunk');
    await store.putInPack(pack, 1, b.at(1));
    assert.equal(await waiting, true);
    assert.equal(store.has(b.d(1)), true);
    assert.equal(await store.waitFor(b.d(0), 1), true);
    assert.deepEqual(await store.get(b.d(1)), b.at(1));
    assert.deepEqual(await store.get(b.d(0), { verify: true }), b.at(0));
    assert.deepEqual(store.missing(b.manifest), [2, 3]);
    await assert.rejects(store.get(b.d(3)), codeOf('TRANSFER_CHUNK_MISSING'));
    store.unpin('dist-1');
    assert.equal(store.has(b.d(1)), false);
    await assert.rejects(store.get(b.d(1)), codeOf('TRANSFER_CHUNK_MISSING'));
  });

  test('putInPack fills every index of a chunk digest the blob repeats', async (t) => {
    const dir = tempDir(t);
    const same = Buffer.alloc(CS, 7);
    const b = await packBlob(dir, Buffer.concat([same, randomBytes(CS), same, randomBytes(500)]));
    assert.equal(b.d(0), b.d(2));
    const store = await openStore(t, dir);
    const pack = await store.openPack('dist-1', b.blob, b.manifest);
    await store.putInPack(pack, 2, same);
    assert.deepEqual([...pack.held], [1, 0, 1, 0]);
    assert.deepEqual(store.missing(b.manifest), [1, 3]);
    await putAll(store, pack, b, [3, 1]);
    await copiesOut(pack, b, dir);
  });

  test('putInPack with release: once per buffer, when the pack is done with every index of it; nothing cached', async (t) => {
    const dir = tempDir(t);
    const same = Buffer.alloc(CS, 7);
    const b = await packBlob(dir, Buffer.concat([same, randomBytes(CS), same, randomBytes(500)]));
    const store = await openStore(t, dir);
    const pack = await store.openPack('dist-1', b.blob, b.manifest);
    const released: string[] = [];
    // A buffer scribbled over once released (a pool reusing it): the pack and the store must be done with it.
    const put = (i: number, name: string) => {
      const buf = Buffer.from(b.at(i));
      return store.putInPack(pack, i, buf, () => {
        released.push(name);
        buf.fill(0xee);
      });
    };
    await put(2, 'same'); // indexes 0 and 2: index 2 is past the MD5's prefix, so the pack keeps it
    await put(3, 'last');
    assert.deepEqual([...pack.held], [1, 0, 1, 1]);
    assert.deepEqual(released, []);
    await put(1, 'one'); // the prefix reaches 2 and 3: every buffer released, each once
    assert.deepEqual(released, ['same', 'last', 'one']);
    // Served from the pack file, not from a cached (now scribbled) buffer.
    assert.deepEqual(await store.get(b.d(0)), same);
    assert.deepEqual(await store.get(b.d(3)), b.at(3));
    await copiesOut(pack, b, dir);
    // A store closed meanwhile throws, and still releases the buffer.
    await store.close();
    await assert.rejects(put(1, 'closed'), /is closed/);
    assert.deepEqual(released, ['same', 'last', 'one', 'closed']);
  });

  test('fillPack copies the loose chunks a new pack lacks and skips a damaged one', async (t) => {
    const dir = tempDir(t);
    const b = await packBlob(dir, randomBytes(3 * CS + 777));
    const store = await openStore(t, dir);
    for (const i of [0, 1, 2]) await store.put(b.d(i), b.at(i));
    damage(pathOf(dir, b.d(1)), 10); // same length: only a re-hash catches it
    const pack = await store.openPack('dist-1', b.blob, b.manifest);
    assert.equal(await store.fillPack(pack), 2);
    assert.deepEqual([...pack.held], [1, 0, 1, 0]);
    assert.equal(existsSync(pathOf(dir, b.d(1))), false, 'the damaged loose chunk is dropped');
    assert.deepEqual(store.missing(b.manifest), [1, 3]);
    assert.equal(await store.fillPack(pack), 0);
    await putAll(store, pack, b, [1, 3]);
    await copiesOut(pack, b, dir);
  });

  test('fillPack copies the chunks a blob shares with another open pack, re-hashing them', async (t) => {
    const dir = tempDir(t);
    const old = await packBlob(dir, randomBytes(3 * CS + 10));
    const next = await packBlob(dir, Buffer.concat([old.data.subarray(0, 3 * CS), randomBytes(99)]));
    assert.deepEqual(next.manifest.chunks.slice(0, 3), old.manifest.chunks.slice(0, 3));
    const store = await openStore(t, dir);
    const oldPack = await store.openPack('dist-old', old.blob, old.manifest);
    await putAll(store, oldPack, old, [0, 1, 2, 3]);
    damage(Pack.dataPath(join(dir, 'packs'), old.blob), 2 * CS + 5); // chunk 2 of the old pack
    const pack = await store.openPack('dist-new', next.blob, next.manifest);
    assert.equal(await store.fillPack(pack), 2);
    assert.deepEqual([...pack.held], [1, 1, 0, 0]);
    await putAll(store, pack, next, [3, 2]);
    await copiesOut(pack, next, dir);
  });

  test('two owners opening the same blob at once share one pack and one reservation', async (t) => {
    const dir = tempDir(t);
    const b = await packBlob(dir, randomBytes(3 * CS + 777));
    const store = await openStore(t, dir, { quotaBytes: b.manifest.size + 100 });
    const [p, q] = await Promise.all([
      store.openPack('dist-1', b.blob, b.manifest),
      store.openPack('dist-2', b.blob, b.manifest),
    ]);
    assert.equal(p, q);
    assert.equal(store.usedBytes, b.manifest.size);
    await putAll(store, p, b, [0, 1, 2, 3]);
    // The pack is still the file in DIR/packs (a second open must not have removed it under the first).
    assert.deepEqual(readFileSync(Pack.dataPath(join(dir, 'packs'), b.blob)), b.data);
    store.unpin('dist-1');
    assert.equal(store.has(b.d(0)), true, 'dist-2 still holds the pack open');
    store.unpin('dist-2');
    assert.equal(store.has(b.d(0)), false);
    const x = await chunk('x');
    await store.put(x.digest, x.data); // fits only if the blob was reserved once
    assert.equal(store.usedBytes, b.manifest.size + 100);
  });

  test('a pack survives a store reopen with the chunks it held', async (t) => {
    const dir = tempDir(t);
    const b = await packBlob(dir, randomBytes(3 * CS + 777));
    const first = await ChunkStore.open(dir, { quotaBytes: 1 << 30 });
    const pack = await first.openPack('dist-1', b.blob, b.manifest);
    await putAll(first, pack, b, [2, 0]);
    await first.close();
    const store = await openStore(t, dir);
    assert.deepEqual(Object.values(store.recovered), [0, 0, 0, 0, 0]);
    assert.equal(store.usedBytes, b.manifest.size);
    assert.equal(store.count, 1);
    assert.equal(store.has(b.d(0)), false, 'no pack is open yet');
    const resumed = await store.openPack('dist-2', b.blob, b.manifest);
    assert.deepEqual([...resumed.held], [1, 0, 1, 0]);
    assert.equal(store.usedBytes, b.manifest.size, 'reopening a pack reserves nothing more');
    assert.deepEqual(store.missing(b.manifest), [1, 3]);
    await putAll(store, resumed, b, [3, 1]);
    await copiesOut(resumed, b, dir);
  });

  test('open removes pack files without an index entry and leaves other names alone', async (t) => {
    const dir = tempDir(t);
    const b = await packBlob(dir, randomBytes(2 * CS + 1));
    const first = await ChunkStore.open(dir, { quotaBytes: 1 << 30 });
    const pack = await first.openPack('dist-1', b.blob, b.manifest);
    await first.putInPack(pack, 1, b.at(1));
    await first.close();
    const strayA = 'a'.repeat(64);
    const strayB = 'b'.repeat(64);
    writeFileSync(join(dir, 'packs', `${strayA}.pack`), 'left by a crash');
    writeFileSync(join(dir, 'packs', `${strayA}.have`), Buffer.alloc(4));
    writeFileSync(join(dir, 'packs', `${strayB}.have`), Buffer.alloc(4));
    writeFileSync(join(dir, 'packs', 'notes.txt'), 'not a pack');
    const store = await openStore(t, dir);
    assert.deepEqual(store.recovered, {
      tempFilesRemoved: 0,
      entriesDropped: 0,
      orphansAdopted: 0,
      orphansRemoved: 2,
      evictedOverQuota: 0,
    });
    assert.deepEqual(readdirSync(join(dir, 'packs')).sort(), [
      `${b.blob}.have`,
      `${b.blob}.pack`,
      'notes.txt',
    ]);
    assert.equal(store.usedBytes, b.manifest.size);
    const again = await store.openPack('dist-2', b.blob, b.manifest);
    assert.deepEqual([...again.held], [0, 1, 0]);
  });

  test('open drops a pack entry whose data file is gone, with its side log', async (t) => {
    const dir = tempDir(t);
    const b = await packBlob(dir, randomBytes(2 * CS + 1));
    const first = await ChunkStore.open(dir, { quotaBytes: 1 << 30 });
    const pack = await first.openPack('dist-1', b.blob, b.manifest);
    await putAll(first, pack, b, [0, 1]);
    await first.close();
    const [data, log] = packFiles(dir, b.blob) as [string, string];
    unlinkSync(data);
    const store = await openStore(t, dir);
    assert.deepEqual(store.recovered, {
      tempFilesRemoved: 0,
      entriesDropped: 1,
      orphansAdopted: 0,
      orphansRemoved: 1, // the side log left without its data file
      evictedOverQuota: 0,
    });
    assert.equal(existsSync(log), false);
    assert.equal(store.usedBytes, 0);
    assert.equal(store.count, 0);
    // A fresh pack must not trust the old side log: its chunks' bytes went with the data file.
    const fresh = await store.openPack('dist-2', b.blob, b.manifest);
    assert.equal(fresh.count, 0);
    assert.equal(store.usedBytes, b.manifest.size);
    await store.close();
    const again = await openStore(t, dir);
    assert.deepEqual(Object.values(again.recovered), [0, 0, 0, 0, 0]);
    assert.equal(again.usedBytes, b.manifest.size);
  });
});
