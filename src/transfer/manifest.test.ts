/**
 * Manifests: built from real temp files and checked against independent
 * digests (node:crypto MD5, hash-wasm's one-shot blake3 on slices), id
 * stability, and every kind of bad input parseManifest must refuse.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { blake3 } from 'hash-wasm';
import { isCanopyError } from '../errors/index.js';
import {
  buildManifest,
  chunkDigest,
  chunkRange,
  DEFAULT_CHUNK_SIZE,
  encodeManifest,
  type Manifest,
  manifestId,
  parseManifest,
  SIDE_MD5_MIN_BYTES,
  validateManifest,
} from './manifest.js';
import { SideMd5 } from './side-md5.js';

const CS = 64 * 1024;

function tempFile(t: TestContext, data: Uint8Array): string {
  const dir = mkdtempSync(join(tmpdir(), 'canopy-manifest-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'blob');
  writeFileSync(path, data);
  return path;
}

const md5 = (data: Uint8Array) => createHash('md5').update(data).digest('hex');

async function expectedChunks(data: Buffer, chunkSize: number): Promise<string[]> {
  const out: string[] = [];
  for (let o = 0; o < data.length; o += chunkSize) out.push(await blake3(data.subarray(o, o + chunkSize)));
  return out;
}

for (const [name, size] of [
  ['empty', 0],
  ['one byte', 1],
  ['chunkSize - 1', CS - 1],
  ['exactly chunkSize', CS],
  ['chunkSize + 1', CS + 1],
  ['several chunks with a short tail', 5 * CS + 123],
] as const) {
  test(`buildManifest of a ${name} file (${size} bytes) matches independent digests`, async (t) => {
    const data = randomBytes(size);
    const m = await buildManifest(tempFile(t, data), { chunkSize: CS });
    assert.equal(m.version, 1);
    assert.equal(m.size, size);
    assert.equal(m.chunkSize, CS);
    assert.equal(m.md5, md5(data));
    assert.deepEqual(m.chunks, await expectedChunks(data, CS));
    assert.equal(m.chunks.length, Math.ceil(size / CS));
    // The ranges tile the file exactly.
    let next = 0;
    for (let i = 0; i < m.chunks.length; i++) {
      const r = chunkRange(m, i);
      assert.equal(r.offset, next);
      assert.equal(await chunkDigest(data.subarray(r.offset, r.offset + r.length)), m.chunks[i]);
      next += r.length;
    }
    assert.equal(next, size);
  });
}

test('an empty file has no chunks and the MD5 of nothing', async (t) => {
  const m = await buildManifest(tempFile(t, Buffer.alloc(0)));
  assert.deepEqual(m.chunks, []);
  assert.equal(m.md5, 'd41d8cd98f00b204e9800998ecf8427e');
  assert.deepEqual(await parseManifest(encodeManifest(m)), m);
});

test('the default chunk size is 4 MiB, and repeated content gives repeated chunk digests', async (t) => {
  const data = Buffer.alloc(2 * DEFAULT_CHUNK_SIZE + 10, 7);
  const m = await buildManifest(tempFile(t, data));
  assert.equal(m.chunkSize, 4 * 1024 * 1024);
  assert.equal(m.chunks.length, 3);
  assert.equal(m.chunks[0], m.chunks[1]);
  assert.notEqual(m.chunks[1], m.chunks[2]);
  assert.equal(m.md5, md5(data));
});

test('buildManifest refuses a chunk size that is not a power of two in [64 KiB, 64 MiB]', async (t) => {
  const path = tempFile(t, Buffer.from('x'));
  for (const chunkSize of [1000, 32 * 1024, 128 * 1024 * 1024, 3 * 64 * 1024, 0]) {
    await assert.rejects(buildManifest(path, { chunkSize }), (err) => {
      assert.ok(isCanopyError(err, 'TRANSFER_MANIFEST_INVALID'));
      assert.match(err.message, new RegExp(`${path} with chunk size ${chunkSize}: .*power of two`));
      return true;
    });
  }
});

test('buildManifest of a missing file names the path', async (t) => {
  const path = `${tempFile(t, Buffer.alloc(0))}-absent`;
  await assert.rejects(buildManifest(path), (err) => {
    assert.ok(isCanopyError(err, 'INPUT_NOT_FOUND'));
    assert.match(err.message, /blob-absent does not exist/);
    return true;
  });
});

test('buildManifest honours an aborted signal', async (t) => {
  const path = tempFile(t, randomBytes(3 * CS));
  const ac = new AbortController();
  ac.abort(new Error('stop now'));
  await assert.rejects(buildManifest(path, { chunkSize: CS, signal: ac.signal }), /stop now/);
});

test('a file from SIDE_MD5_MIN_BYTES on gets the same manifest with its MD5 on a worker thread', async (t) => {
  // 1 MiB chunks and a short tail: more chunks than the worker's ring has slots, so slots are reused.
  const chunkSize = 1024 * 1024;
  for (const size of [SIDE_MD5_MIN_BYTES, SIDE_MD5_MIN_BYTES + 3 * chunkSize + 17]) {
    const data = randomBytes(size);
    const m = await buildManifest(tempFile(t, data), { chunkSize });
    assert.equal(m.size, size);
    assert.equal(m.md5, md5(data));
    assert.deepEqual(m.chunks, await expectedChunks(data, chunkSize));
  }
});

test('buildManifest with a worker honours an abort mid-way and stops its worker', async (t) => {
  const path = tempFile(t, randomBytes(SIDE_MD5_MIN_BYTES));
  const ac = new AbortController();
  setImmediate(() => ac.abort(new Error('stop now')));
  await assert.rejects(buildManifest(path, { chunkSize: CS, signal: ac.signal }), /stop now/);
  assert.equal(SideMd5.running, 0, 'the worker was stopped');
});

test('the side MD5 hands out each slot once, waits while all are in use, and rejects once closed', async () => {
  const side = new SideMd5(2, 4);
  const a = await side.take();
  const b = await side.take();
  assert.notEqual(a, b);
  let third: number | undefined;
  const waiting = side.take().then((s) => {
    third = s;
  });
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(third, undefined, 'a third slot while both are in use');
  side.view(a).write('abcd');
  side.update(a, 4);
  await waiting;
  assert.equal(third, a, 'the slot the MD5 is done with comes back');
  side.view(b).write('ef');
  side.update(b, 2);
  assert.equal(await side.digest(), md5(Buffer.from('abcdef')));
  await side.close();
  await assert.rejects(side.take(), /closed/);
  await assert.rejects(side.digest(), /closed/);
});

const SAMPLE: Manifest = {
  version: 1,
  size: CS + 1,
  chunkSize: CS,
  chunks: ['a'.repeat(64), 'b'.repeat(64)],
  md5: 'c'.repeat(32),
};

test('the canonical encoding has a fixed key order and the id is pinned', async () => {
  const shuffled = {
    md5: SAMPLE.md5,
    chunks: SAMPLE.chunks,
    size: SAMPLE.size,
    chunkSize: CS,
    version: 1 as const,
  };
  const json = `{"version":1,"size":65537,"chunkSize":65536,"chunks":["${'a'.repeat(64)}","${'b'.repeat(64)}"],"md5":"${'c'.repeat(32)}"}`;
  assert.equal(encodeManifest(shuffled), json);
  assert.equal(await manifestId(shuffled), await blake3(json));
  // Pinned so that a change of encoding, which would orphan every stored id, fails here.
  assert.equal(await manifestId(SAMPLE), '4a25c4f1312dc6118f43d89bb5578f508bb61d4ff6584a98512745190a53b7e7');
});

test('the id of a file is stable across builds and survives re-formatting of the JSON', async (t) => {
  const path = tempFile(t, randomBytes(2 * CS + 5));
  const a = await buildManifest(path, { chunkSize: CS });
  const b = await buildManifest(path, { chunkSize: CS });
  const id = await manifestId(a);
  assert.match(id, /^[0-9a-f]{64}$/);
  assert.equal(await manifestId(b), id);
  const parsed = await parseManifest(JSON.stringify(a, null, 2), { id, source: 'peer h7' });
  assert.deepEqual(parsed, a);
});

test('any change to the content changes the id, and parseManifest detects it', async () => {
  const id = await manifestId(SAMPLE);
  const tampered: Manifest[] = [
    { ...SAMPLE, chunks: ['a'.repeat(64), `${'b'.repeat(63)}c`] },
    { ...SAMPLE, chunks: ['b'.repeat(64), 'a'.repeat(64)] },
    { ...SAMPLE, size: CS + 2 },
    { ...SAMPLE, md5: `${'c'.repeat(31)}d` },
    { ...SAMPLE, chunkSize: 2 * CS, size: 2 * CS + 1 },
  ];
  for (const m of tampered) {
    assert.notEqual(await manifestId(m), id);
    await assert.rejects(parseManifest(encodeManifest(m), { id, source: 'peer h7' }), (err) => {
      assert.ok(isCanopyError(err, 'TRANSFER_MANIFEST_INVALID'));
      assert.match(err.message, new RegExp(`^peer h7 does not match its id: it was announced as ${id}`));
      assert.match(err.message, /fetch the manifest again/);
      return true;
    });
  }
  assert.deepEqual(await parseManifest(encodeManifest(SAMPLE), { id }), SAMPLE);
});

const HEX64 = 'a'.repeat(64);
const BAD: [string, string, RegExp][] = [
  ['not JSON', '{"version":1,', /^m\.json is not JSON/],
  ['an array', '[]', /must be a JSON object/],
  ['null', 'null', /must be a JSON object/],
  ['an unknown key', JSON.stringify({ ...SAMPLE, extra: 1 }), /unknown key "extra"/],
  ['a missing key', JSON.stringify({ ...SAMPLE, md5: undefined }), /lacks the key "md5"/],
  ['version 2', JSON.stringify({ ...SAMPLE, version: 2 }), /version 2, but this canopy reads version 1/],
  ['version as a string', JSON.stringify({ ...SAMPLE, version: '1' }), /version "1"/],
  ['a negative size', JSON.stringify({ ...SAMPLE, size: -1 }), /size -1, not a whole number/],
  ['a fractional size', JSON.stringify({ ...SAMPLE, size: 1.5 }), /size 1.5, not a whole number/],
  ['a size as a string', JSON.stringify({ ...SAMPLE, size: '65537' }), /size "65537"/],
  [
    'an unsafe size',
    '{"version":1,"size":9007199254740993,"chunkSize":65536,"chunks":[],"md5":"x"}',
    /size 9007199254740992/,
  ],
  [
    'a chunk size not a power of two',
    JSON.stringify({ ...SAMPLE, chunkSize: 100000 }),
    /chunkSize 100000, not a power of two/,
  ],
  ['a chunk size below 64 KiB', JSON.stringify({ ...SAMPLE, chunkSize: 32768 }), /chunkSize 32768/],
  ['a chunk size above 64 MiB', JSON.stringify({ ...SAMPLE, chunkSize: 2 ** 27 }), /chunkSize 134217728/],
  ['a short md5', JSON.stringify({ ...SAMPLE, md5: 'c'.repeat(31) }), /md5 "c{31}", not 32 lowercase hex/],
  ['an upper-case md5', JSON.stringify({ ...SAMPLE, md5: 'C'.repeat(32) }), /md5 "C{32}"/],
  ['chunks not an array', JSON.stringify({ ...SAMPLE, chunks: HEX64 }), /chunks that are not an array/],
  [
    'a short chunk digest',
    JSON.stringify({ ...SAMPLE, chunks: [HEX64, 'b'.repeat(63)] }),
    /chunks\[1\] = "b{63}"/,
  ],
  [
    'a non-hex chunk digest',
    JSON.stringify({ ...SAMPLE, chunks: ['g'.repeat(64), HEX64] }),
    /chunks\[0\] = "g{64}"/,
  ],
  [
    'an upper-case chunk digest',
    JSON.stringify({ ...SAMPLE, chunks: [HEX64, 'B'.repeat(64)] }),
    /chunks\[1\]/,
  ],
  ['a numeric chunk digest', JSON.stringify({ ...SAMPLE, chunks: [HEX64, 5] }), /chunks\[1\] = 5,/],
  [
    'too few chunks',
    JSON.stringify({ ...SAMPLE, chunks: [HEX64] }),
    /lists 1 chunks, but size 65537 at chunkSize 65536 makes 2/,
  ],
  [
    'too many chunks',
    JSON.stringify({ ...SAMPLE, size: CS, chunks: [HEX64, HEX64] }),
    /lists 2 chunks, but size 65536 .* makes 1/,
  ],
  [
    'chunks for an empty file',
    JSON.stringify({ ...SAMPLE, size: 0, chunks: [HEX64] }),
    /lists 1 chunks, but size 0 .* makes 0/,
  ],
];

for (const [what, json, message] of BAD) {
  test(`parseManifest refuses ${what}`, async () => {
    await assert.rejects(parseManifest(json, { source: 'm.json' }), (err) => {
      assert.ok(isCanopyError(err, 'TRANSFER_MANIFEST_INVALID'), String(err));
      assert.match(err.message, message);
      assert.match(err.message, /^m\.json /);
      assert.equal(err.subject.path, 'm.json');
      return true;
    });
  });
}

test('validateManifest accepts a decoded value and copies its chunk list', async () => {
  const value = JSON.parse(encodeManifest(SAMPLE)) as { chunks: string[] };
  const m = await validateManifest(value);
  value.chunks[0] = 'f'.repeat(64);
  assert.equal(m.chunks[0], HEX64);
});

test('chunkRange refuses an index outside the manifest', () => {
  assert.deepEqual(chunkRange(SAMPLE, 1), { offset: CS, length: 1 });
  for (const i of [-1, 2, 0.5]) assert.throws(() => chunkRange(SAMPLE, i), RangeError);
});
