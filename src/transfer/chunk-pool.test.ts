/** ChunkPool: buffers come back only through release, once, up to the byte cap, by size. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ChunkPool } from './chunk-pool.js';

test('a released buffer is handed out again for the same size, never twice at once', () => {
  const pool = new ChunkPool(1024);
  const a = pool.acquire(256);
  const b = pool.acquire(256);
  assert.notEqual(a.buffer, b.buffer, 'two buffers out at once share memory');
  assert.equal(a.length, 256);
  pool.release(a);
  pool.release(a); // released twice: the second is ignored (else it could go out twice)
  assert.deepEqual(pool.stats, { allocated: 2, reused: 0, freeBytes: 256 });
  const c = pool.acquire(256);
  assert.equal(c, a);
  const d = pool.acquire(256);
  assert.notEqual(d, a, 'the doubly released buffer went out twice');
  assert.equal(pool.acquire(100).length, 100, 'another size is not served from the 256-byte list');
  assert.deepEqual(pool.stats, { allocated: 4, reused: 1, freeBytes: 0 });
});

test('buffers the pool did not hand out are ignored, and it keeps at most its cap free', () => {
  const pool = new ChunkPool(512);
  pool.release(Buffer.alloc(256));
  assert.equal(pool.stats.freeBytes, 0);
  const out = [pool.acquire(256), pool.acquire(256), pool.acquire(256)];
  for (const b of out) pool.release(b);
  assert.equal(pool.stats.freeBytes, 512, 'more than the cap kept free');
  // Odd sizes (each blob's short last chunk) do not crowd the common size out: the oldest go first.
  const odd = [pool.acquire(100), pool.acquire(200), pool.acquire(300)];
  for (const b of odd) pool.release(b);
  const common = pool.acquire(256);
  pool.release(common);
  assert.ok(pool.stats.freeBytes <= 512);
  assert.equal(pool.acquire(256), common, 'the buffer released last was dropped');
  // Not a slice of Node's shared 8 KiB pool: releasing one cannot hand out memory another Buffer uses.
  assert.equal(pool.acquire(64).buffer.byteLength, 64);
});

test('clear drops the free buffers; buffers still out can be released afterwards', () => {
  const pool = new ChunkPool();
  const [a, b] = [pool.acquire(256), pool.acquire(256)];
  pool.release(a);
  pool.clear();
  assert.equal(pool.stats.freeBytes, 0);
  assert.notEqual(pool.acquire(256), a, 'a cleared buffer was handed out again');
  pool.release(b);
  assert.equal(pool.stats.freeBytes, 256);
});
