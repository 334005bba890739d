/**
 * Pack on real temp directories: chunks landing in any order assemble to the
 * exact blob with the right MD5, incomplete or inconsistent packs never reach
 * their target, the side log survives a reopen (and a torn record), damaged
 * chunks are found and forgotten, and copyFrom fills a pack from a file.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import {
  appendFileSync,
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { isCanopyError } from '../errors/index.js';
import { buildManifest, chunkRange, type Manifest, manifestId } from './manifest.js';
import { Pack, removePack } from './pack.js';

const CS = 64 * 1024;

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'canopy-pack-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const md5 = (data: Uint8Array) => createHash('md5').update(data).digest('hex');

function codeOf(code: string, ...patterns: RegExp[]) {
  return (err: unknown) => {
    assert.ok(isCanopyError(err), String(err));
    assert.equal(err.code, code, err.message);
    for (const p of patterns) assert.match(err.message, p);
    return true;
  };
}

interface Blob {
  dir: string;
  src: string;
  data: Buffer;
  manifest: Manifest;
  blob: string;
  /** The bytes of chunk `i`. */
  at(i: number): Buffer;
}

/** A blob (4 chunks by default, the last one short) in a source file, with its manifest and id. */
async function makeBlob(t: TestContext, data: Buffer = randomBytes(3 * CS + 777)): Promise<Blob> {
  const dir = tempDir(t);
  const src = join(dir, 'source');
  writeFileSync(src, data);
  const manifest = await buildManifest(src, { chunkSize: CS });
  const at = (i: number) => {
    const { offset, length } = chunkRange(manifest, i);
    return data.subarray(offset, offset + length);
  };
  return { dir, src, data, manifest, blob: await manifestId(manifest), at };
}

/** Opens the pack of `b` in `b.dir` (or under `sub`); the test closes it. */
async function openPack(t: TestContext, b: Blob, manifest = b.manifest, sub = ''): Promise<Pack> {
  const pack = await Pack.open(join(b.dir, sub), b.blob, manifest, true);
  t.after(() => pack.close());
  return pack;
}

async function writeAll(pack: Pack, b: Blob, order: number[]): Promise<void> {
  for (const i of order) await pack.write(i, b.at(i));
}

/** Overwrites bytes of a file in place (a disk that damaged them). */
function damage(path: string, position: number): void {
  const fd = openSync(path, 'r+');
  writeSync(fd, Buffer.from('damaged'), 0, 7, position);
  closeSync(fd);
}

const heldOf = (pack: Pack) => [...pack.held];

/** The indexes a side log lists, as Pack writes them (4 bytes each, little endian). */
function logged(path: string): number[] {
  const bytes = readFileSync(path);
  const out: number[] = [];
  for (let at = 0; at + 4 <= bytes.length; at += 4) out.push(bytes.readUInt32LE(at));
  return out;
}

test('chunks written in order or out of order copy out as the exact blob', async (t) => {
  for (const order of [
    [0, 1, 2, 3],
    [2, 0, 3, 1],
  ]) {
    const b = await makeBlob(t);
    const pack = await openPack(t, b);
    assert.equal(statSync(Pack.dataPath(b.dir, b.blob)).size, b.data.length, 'the pack is sized to the blob');
    await writeAll(pack, b, order);
    assert.equal(pack.complete, true);
    assert.equal(pack.count, 4);
    assert.equal(pack.bytes, b.data.length);
    const out = join(b.dir, 'out');
    await pack.copyTo(out);
    assert.deepEqual(readFileSync(out), b.data, `order ${order}`);
    assert.deepEqual(logged(Pack.logPath(b.dir, b.blob)), order);
  }
});

test('a written chunk is released once the pack is done with it, and never read afterwards', async (t) => {
  const b = await makeBlob(t);
  const pack = await openPack(t, b);
  const released: number[] = [];
  // Each chunk in a buffer of its own, scribbled over the moment it is released (as a pool reusing it
  // would): a pack that still read it afterwards would write or hash the wrong bytes.
  const write = (i: number) => {
    const buf = Buffer.from(b.at(i));
    return pack.write(i, buf, () => {
      released.push(i);
      buf.fill(0xee);
    });
  };
  await write(2); // past the MD5's prefix: kept for it
  await write(3);
  assert.deepEqual(released, []);
  await write(0); // in order: written, hashed, released; 1 is still missing
  assert.deepEqual(released, [0]);
  await write(1); // the prefix takes 1, then 2 and 3 (kept): all three released
  assert.deepEqual(released, [0, 2, 3, 1]);
  await write(1); // held already: released at once, nothing written
  assert.deepEqual(released, [0, 2, 3, 1, 1]);
  const out = join(b.dir, 'out');
  await pack.copyTo(out);
  assert.deepEqual(readFileSync(out), b.data);

  // A chunk of the wrong length is released too; one kept past the prefix is released at close.
  const c = await makeBlob(t);
  const other = await openPack(t, c);
  const dropped: string[] = [];
  await assert.rejects(
    other.write(0, Buffer.alloc(5), () => dropped.push('short')),
    codeOf('TRANSFER_DIGEST_MISMATCH'),
  );
  await other.write(3, Buffer.from(c.at(3)), () => dropped.push('kept'));
  assert.deepEqual(dropped, ['short']);
  await other.close();
  assert.deepEqual(dropped, ['short', 'kept']);
});

test('the MD5 is right when the chunks arrive last to first', async (t) => {
  const b = await makeBlob(t, randomBytes(6 * CS + 1));
  const pack = await openPack(t, b);
  await writeAll(pack, b, [6, 5, 4, 3, 2, 1, 0]);
  const out = join(b.dir, 'out');
  await pack.copyTo(out); // throws TRANSFER_DIGEST_MISMATCH if the in-order MD5 went wrong
  assert.equal(md5(readFileSync(out)), b.manifest.md5);
  assert.deepEqual(readFileSync(out), b.data);
});

test('copyTo with a chunk missing throws TRANSFER_CHUNK_MISSING and creates no target', async (t) => {
  const b = await makeBlob(t);
  const pack = await openPack(t, b);
  await writeAll(pack, b, [0, 1, 3]);
  assert.equal(pack.complete, false);
  const out = join(b.dir, 'out');
  await assert.rejects(
    pack.copyTo(out),
    codeOf('TRANSFER_CHUNK_MISSING', new RegExp(`1 chunk\\(s\\) of blob ${b.blob} are still missing`)),
  );
  assert.equal(existsSync(out), false);
  await pack.write(2, b.at(2));
  await pack.copyTo(out);
  assert.deepEqual(readFileSync(out), b.data);
});

test('copyTo refuses a blob whose MD5 is not the manifest md5, and creates no target', async (t) => {
  const b = await makeBlob(t);
  const lying: Manifest = { ...b.manifest, md5: '0'.repeat(32) };
  const pack = await openPack(t, b, lying);
  await writeAll(pack, b, [3, 1, 0, 2]);
  const out = join(b.dir, 'out');
  await assert.rejects(
    pack.copyTo(out),
    codeOf(
      'TRANSFER_DIGEST_MISMATCH',
      new RegExp(`has MD5 ${b.manifest.md5}, the manifest says ${'0'.repeat(32)}`),
    ),
  );
  assert.equal(existsSync(out), false);
});

test('a reopened pack keeps the chunks it held, and a torn last record in the side log is ignored', async (t) => {
  const b = await makeBlob(t);
  const first = await Pack.open(b.dir, b.blob, b.manifest, true);
  await writeAll(first, b, [0, 2]);
  await first.close();
  await first.close(); // twice is harmless
  appendFileSync(Pack.logPath(b.dir, b.blob), Buffer.from([1, 0])); // a kill -9 mid-append
  const resumed = await Pack.open(b.dir, b.blob, b.manifest, true);
  assert.deepEqual(heldOf(resumed), [1, 0, 1, 0]);
  assert.equal(resumed.count, 2);
  assert.equal(resumed.bytes, 2 * CS);
  await writeAll(resumed, b, [3, 1]);
  const out = join(b.dir, 'out');
  await resumed.copyTo(out);
  assert.deepEqual(readFileSync(out), b.data);
  await resumed.close();
  // The records appended after the torn one must still read back: the torn bytes may not shift them.
  const again = await openPack(t, b);
  assert.deepEqual(heldOf(again), [1, 1, 1, 1]);
  assert.deepEqual(logged(Pack.logPath(b.dir, b.blob)), [0, 2, 3, 1]);
});

test('indexes past the manifest in the side log are ignored', async (t) => {
  const b = await makeBlob(t);
  const log = Buffer.alloc(8);
  log.writeUInt32LE(1, 0);
  log.writeUInt32LE(99, 4);
  writeFileSync(Pack.logPath(b.dir, b.blob), log);
  writeFileSync(Pack.dataPath(b.dir, b.blob), b.data);
  const pack = await openPack(t, b);
  assert.deepEqual(heldOf(pack), [0, 1, 0, 0]);
});

test('verifyHeld forgets a chunk damaged on disk, and after it is rewritten copyTo is right', async (t) => {
  const b = await makeBlob(t);
  const pack = await openPack(t, b);
  await writeAll(pack, b, [0, 1, 2, 3]); // the MD5 prefix now covers every chunk
  assert.deepEqual(await pack.verifyHeld(), []);
  damage(Pack.dataPath(b.dir, b.blob), CS + 100);
  assert.deepEqual(await pack.verifyHeld(), [1]);
  assert.equal(pack.has(1), false);
  assert.equal(pack.count, 3);
  assert.equal(pack.bytes, b.data.length - CS);
  assert.deepEqual(logged(Pack.logPath(b.dir, b.blob)), [0, 2, 3]);
  const out = join(b.dir, 'out');
  await assert.rejects(pack.copyTo(out), codeOf('TRANSFER_CHUNK_MISSING'));
  assert.equal(existsSync(out), false);
  await pack.write(1, b.at(1));
  await pack.copyTo(out);
  assert.deepEqual(readFileSync(out), b.data);
});

test('after a copyTo that read a damaged chunk, verifyHeld drops it and the MD5 starts over', async (t) => {
  const b = await makeBlob(t);
  const first = await Pack.open(b.dir, b.blob, b.manifest, false);
  await writeAll(first, b, [0, 1, 2, 3]);
  await first.close();
  damage(Pack.dataPath(b.dir, b.blob), CS + 100); // a power loss on a non-durable pack
  const pack = await openPack(t, b);
  assert.equal(pack.complete, true); // the side log still lists chunk 1
  const out = join(b.dir, 'out');
  await assert.rejects(pack.copyTo(out), codeOf('TRANSFER_DIGEST_MISMATCH', /the disk damaged it/));
  assert.equal(existsSync(out), false);
  assert.deepEqual(await pack.verifyHeld(), [1]);
  await pack.write(1, b.at(1));
  await pack.copyTo(out); // an MD5 that kept the damaged bytes it read would fail here
  assert.deepEqual(readFileSync(out), b.data);
});

test('verifyHeld finds a damaged chunk past the MD5 prefix, and a reopen does not list it', async (t) => {
  const b = await makeBlob(t);
  const pack = await Pack.open(b.dir, b.blob, b.manifest, true);
  await writeAll(pack, b, [0, 2, 3]);
  const fd = openSync(Pack.dataPath(b.dir, b.blob), 'r+');
  writeSync(fd, Buffer.from([0xff ^ (b.at(3)[5] ?? 0)]), 0, 1, 3 * CS + 5);
  closeSync(fd);
  assert.deepEqual(await pack.verifyHeld(), [3]);
  await pack.close();
  const again = await openPack(t, b);
  assert.deepEqual(heldOf(again), [1, 0, 1, 0]);
  await writeAll(again, b, [3, 1]);
  const out = join(b.dir, 'out');
  await again.copyTo(out);
  assert.deepEqual(readFileSync(out), b.data);
});

test('copyFrom fills the pack from a file holding the blob, and it is complete', async (t) => {
  const b = await makeBlob(t);
  const pack = await Pack.open(b.dir, b.blob, b.manifest, true);
  await pack.write(2, b.at(2)); // one chunk already there: copyFrom still lists each chunk once
  await pack.copyFrom(b.src);
  assert.equal(pack.complete, true);
  assert.equal(pack.count, 4);
  assert.equal(pack.bytes, b.data.length);
  assert.deepEqual(await pack.verifyHeld(), []);
  const out = join(b.dir, 'out');
  await pack.copyTo(out);
  assert.deepEqual(readFileSync(out), b.data);
  await pack.close();
  const again = await openPack(t, b);
  assert.equal(again.complete, true);
  assert.deepEqual(await again.read(1), b.at(1));
});

test('a chunk of the wrong length is refused, is not listed, and the pack stays usable', async (t) => {
  const b = await makeBlob(t);
  const pack = await openPack(t, b);
  await assert.rejects(
    pack.write(1, b.at(1).subarray(0, 100)),
    codeOf(
      'TRANSFER_DIGEST_MISMATCH',
      new RegExp(`chunk 1 of blob ${b.blob} has 100 bytes, the manifest says ${CS}`),
    ),
  );
  await assert.rejects(
    pack.write(3, Buffer.concat([b.at(3), Buffer.from('x')])),
    codeOf('TRANSFER_DIGEST_MISMATCH', /chunk 3 .* has 778 bytes, the manifest says 777/),
  );
  await assert.rejects(pack.write(4, b.at(0)), RangeError);
  assert.equal(pack.has(1), false);
  assert.equal(pack.has(3), false);
  assert.equal(pack.count, 0);
  assert.deepEqual(logged(Pack.logPath(b.dir, b.blob)), []);
  await writeAll(pack, b, [1, 3, 0, 2]);
  const out = join(b.dir, 'out');
  await pack.copyTo(out); // a refused chunk must not poison the pack
  assert.deepEqual(readFileSync(out), b.data);
});

test('a held chunk written again is left alone and listed once', async (t) => {
  const b = await makeBlob(t);
  const pack = await openPack(t, b);
  await pack.write(0, b.at(0));
  await pack.write(0, Buffer.alloc(CS, 1));
  assert.equal(pack.count, 1);
  assert.deepEqual(await pack.read(0), b.at(0));
  assert.deepEqual(logged(Pack.logPath(b.dir, b.blob)), [0]);
});

test('copyTo onto an existing file is refused and leaves that file as it was', async (t) => {
  const b = await makeBlob(t);
  const pack = await openPack(t, b);
  await writeAll(pack, b, [0, 1, 2, 3]);
  const out = join(b.dir, 'out');
  writeFileSync(out, 'keep me');
  await assert.rejects(pack.copyTo(out), (err: NodeJS.ErrnoException) => err.code === 'EEXIST');
  assert.equal(readFileSync(out, 'utf8'), 'keep me');
  const other = join(b.dir, 'other');
  await pack.copyTo(other); // the refusal did not break the pack
  assert.deepEqual(readFileSync(other), b.data);
});

test('the empty blob is a complete pack that copies out as an empty file', async (t) => {
  const b = await makeBlob(t, Buffer.alloc(0));
  const pack = await openPack(t, b);
  assert.equal(pack.complete, true);
  const out = join(b.dir, 'out');
  await pack.copyTo(out);
  assert.equal(readFileSync(out).length, 0);
});

test('removePack removes both files of a pack, and absent files are fine', async (t) => {
  const b = await makeBlob(t);
  const pack = await Pack.open(b.dir, b.blob, b.manifest, true);
  await pack.write(0, b.at(0));
  await pack.close();
  assert.ok(existsSync(Pack.dataPath(b.dir, b.blob)));
  assert.ok(existsSync(Pack.logPath(b.dir, b.blob)));
  await removePack(b.dir, b.blob);
  assert.equal(existsSync(Pack.dataPath(b.dir, b.blob)), false);
  assert.equal(existsSync(Pack.logPath(b.dir, b.blob)), false);
  await removePack(b.dir, b.blob);
});
