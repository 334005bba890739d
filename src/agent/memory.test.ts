import assert from 'node:assert/strict';
import { test } from 'node:test';
import { exposeCollector, MemoryGovernor } from './memory.js';

const MiB = 1024 * 1024;

test('the governor looks every 4 MiB fetched and collects only over budget, one collection at a time', async () => {
  let buffers = 10 * MiB;
  let finish: (() => void) | undefined;
  const g = new MemoryGovernor({
    budgetBytes: 24 * MiB,
    arrayBuffers: () => buffers,
    collect: () =>
      new Promise<void>((resolve) => {
        finish = resolve;
      }),
  });
  for (let i = 0; i < 64; i++) g.received(256 * 1024); // 16 MiB under budget: four looks, nothing to do
  assert.equal(g.collections, 0);
  buffers = 40 * MiB;
  g.received(3 * MiB);
  assert.equal(g.collections, 0, 'collected before 4 MiB more were fetched');
  g.received(MiB);
  assert.equal(g.collections, 1);
  g.received(8 * MiB); // one is running: no second
  assert.equal(g.collections, 1);
  finish?.();
  await new Promise((resolve) => setImmediate(resolve));
  g.received(4 * MiB);
  assert.equal(g.collections, 2);
});

test("V8's collector is exposed at run time and really collects dead ArrayBuffers", async () => {
  const collect = exposeCollector();
  assert.equal(
    typeof (globalThis as { gc?: unknown }).gc,
    'undefined',
    'a global gc leaked into this context',
  );
  const before = process.memoryUsage().arrayBuffers;
  // 40 MiB of buffers that live long enough to reach the old generation (as chunks in the store's
  // cache do), then die: under the 64 MB of new external memory at which V8 would collect by itself,
  // and out of reach of the young-generation collections.
  let held: Buffer[] = [];
  for (let i = 0; i < 10; i++) held.push(Buffer.alloc(4 * MiB).fill(i));
  let churn: object[] = [];
  for (let i = 0; i < 400_000; i++) churn = [{ i }, churn.length > 1000 ? [] : churn];
  assert.equal(held.length, 10);
  held = [];
  const dead = process.memoryUsage().arrayBuffers;
  assert.ok(
    dead >= before + 36 * MiB,
    `V8 collected on its own (${before} -> ${dead}): this test proves nothing`,
  );
  // The backing stores are freed by a sweeper that may finish after the collection: look a few times.
  let after = dead;
  for (let i = 0; i < 5 && after >= before + 8 * MiB; i++) {
    await collect();
    await new Promise((resolve) => setTimeout(resolve, 50));
    after = process.memoryUsage().arrayBuffers;
  }
  assert.ok(after < before + 8 * MiB, `ArrayBuffers ${before} -> ${after} bytes: not collected`);
});
