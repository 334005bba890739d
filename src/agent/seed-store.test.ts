// The seeds of `canopy dist --source` on disk: recorded before they are
// served, restored by the next agent process (a kill -9 must not make the
// distribution's root forget its blob), refused with the reason when the
// file changed meanwhile, and removed once their time is up so that none
// pile up. Real files in a temp dir; "a restart" is a second SeedStore.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { pino } from 'pino';
import { isCanopyError } from '../errors/index.js';
import type { SourceTask } from '../protocol/index.js';
import type { Manifest } from '../transfer/index.js';
import { SeedStore } from './seed-store.js';
import { identityOf, prepareSource } from './source-task.js';

const CHUNK = 64 * 1024;
const SIZE = 3 * CHUNK + 100;

function world(t: TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'canopy-seeds-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const root = join(dir, 'root');
  mkdirSync(root);
  const seedsDir = join(dir, 'data', 'seeds');
  const policy = { roots: [root], runAs: [], defaultCwd: root };
  const file = join(root, 'build.bin');
  const data = randomBytes(SIZE);
  writeFileSync(file, data);
  const clock = { now: 1_000_000 };
  /** One agent process's store: what it logged, what it let the peer server serve. */
  const store = (roots = policy.roots) => {
    const lines: { msg: string; [k: string]: unknown }[] = [];
    const log = pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    const served = new Map<string, { manifest: Manifest; until: number; rateLimit?: number }>();
    const ended: string[] = [];
    const s = new SeedStore({
      dir: seedsDir,
      host: 's1',
      policy: { ...policy, roots },
      log,
      now: () => clock.now,
      serve: (blob, manifest, until, rateLimit) =>
        served.set(blob, { manifest, until, ...(rateLimit ? { rateLimit } : {}) }),
      ended: (blob) => ended.push(blob),
    });
    t.after(() => s.close());
    return { s, lines, served, ended, events: () => lines.map((l) => l.msg) };
  };
  const task = (serveForMs = 60_000): SourceTask => ({
    id: 'r1:s1',
    runId: 'r1',
    host: 's1',
    kind: 'source',
    expiresInMs: 60_000,
    spec: { path: file, chunkSize: CHUNK, serveForMs, rateLimit: 1 << 20 },
  });
  /** Hashes the file and records the seed in a first store, as the source task does. */
  const seeded = async (serveForMs?: number) => {
    const first = store();
    const { seed } = await prepareSource(task(serveForMs), policy, () => clock.now);
    assert.ok(seed);
    await first.s.add(seed);
    await first.s.close(); // the process dies: only the record remains
    return { first, blob: seed.blob };
  };
  return { dir, root, seedsDir, file, data, clock, policy, store, seeded };
}

test('a seed is recorded before it is served, and a restarted agent serves it again unchanged', async (t) => {
  const w = world(t);
  const { first, blob } = await w.seeded();
  assert.deepEqual(readdirSync(w.seedsDir), [`${blob}.json`]);
  assert.equal(first.served.get(blob)?.until, w.clock.now + 60_000);
  assert.deepEqual(first.events(), ['dist.source.serving']);

  const again = w.store();
  await again.s.restore();
  assert.ok(again.s.has(blob));
  assert.deepEqual(again.served.get(blob), {
    manifest: first.served.get(blob)?.manifest,
    until: w.clock.now + 60_000,
    rateLimit: 1 << 20,
  });
  assert.deepEqual(again.events(), ['dist.source.restored']);
  // Served again from the file, each chunk checked against its digest on the way.
  for (let i = 3; i >= 0; i--) {
    const got = Buffer.from((await again.s.chunk(blob, i)) ?? []);
    assert.deepEqual(got, w.data.subarray(i * CHUNK, Math.min(SIZE, (i + 1) * CHUNK)), `chunk ${i}`);
  }
  assert.equal(await again.s.chunk('f'.repeat(64), 0), undefined, 'not a seed');
});

test('a file changed while the agent was down is not served: every request is refused, naming agent and path', async (t) => {
  const cases: [string, (w: ReturnType<typeof world>) => void, RegExp][] = [
    ['rewritten in place, same size', (w) => writeFileSync(w.file, randomBytes(SIZE)), /it was modified/],
    ['grown', (w) => writeFileSync(w.file, randomBytes(SIZE + 1)), /its size changed from 196708 to 196709/],
    [
      'replaced by rename',
      (w) => {
        writeFileSync(`${w.file}.new`, w.data); // the same bytes, but another file
        renameSync(`${w.file}.new`, w.file);
      },
      /it was replaced by another file/,
    ],
    ['removed', (w) => rmSync(w.file), /the file no longer exists/],
  ];
  for (const [what, change, why] of cases) {
    const w = world(t);
    const { blob } = await w.seeded();
    change(w);
    const again = w.store();
    await again.s.restore();
    assert.ok(again.s.has(blob), what);
    const logged = again.lines.find((l) => l.msg === 'dist.source.changed');
    assert.match(String(logged?.reason), why, what);
    assert.match(String(logged?.reason), /^agent "s1" no longer serves \/\S+\/root\/build\.bin /, what);
    await assert.rejects(
      again.s.chunk(blob, 0),
      (err: unknown) => {
        assert.ok(isCanopyError(err, 'DIST_SOURCE_REFUSED'), what);
        assert.match(
          err.message,
          /^agent "s1" no longer serves \/\S+\/root\/build\.bin \(blob [0-9a-f]{16}\): /,
        );
        assert.match(err.message, why, what);
        assert.match(err.message, /run canopy dist --source s1 again$/, what);
        return true;
      },
      what,
    );
  }
});

test('a root the agent no longer has: the restored seed is refused', async (t) => {
  const w = world(t);
  const { blob } = await w.seeded();
  const other = join(w.dir, 'other-root');
  mkdirSync(other);
  const again = w.store([other]);
  await again.s.restore();
  await assert.rejects(again.s.chunk(blob, 0), /the file is no longer allowed: .*outside the allowed roots/);
});

test('same identity, other bytes: a restored seed checks each chunk against its digest before serving it', async (t) => {
  const w = world(t);
  const { blob } = await w.seeded();
  // Chunk 1 rewritten, and the record made to match the new inode times: only the digest can tell.
  const changed = Buffer.from(w.data);
  changed[CHUNK + 7] = (changed[CHUNK + 7] ?? 0) ^ 0xff;
  writeFileSync(w.file, changed);
  const recordPath = join(w.seedsDir, `${blob}.json`);
  const record = JSON.parse(readFileSync(recordPath, 'utf8'));
  record.identity = identityOf(statSync(w.file, { bigint: true }));
  writeFileSync(recordPath, JSON.stringify(record));

  const again = w.store();
  await again.s.restore();
  assert.deepEqual(again.events(), ['dist.source.restored']);
  assert.deepEqual(Buffer.from((await again.s.chunk(blob, 0)) ?? []), w.data.subarray(0, CHUNK));
  await assert.rejects(again.s.chunk(blob, 1), /chunk 1 no longer matches its digest/);
  assert.ok(again.events().includes('dist.source.changed'));
  // Broken for good: chunk 0, fine a moment ago, is refused too.
  await assert.rejects(again.s.chunk(blob, 0), /no longer serves/);
});

test('records past their time, damaged or left half-written are removed at start', async (t) => {
  const w = world(t);
  const { blob } = await w.seeded(60_000);
  writeFileSync(join(w.seedsDir, `${'a'.repeat(64)}.json`), '{"v":1,"blob":');
  writeFileSync(join(w.seedsDir, `${'b'.repeat(64)}.json`), JSON.stringify({ v: 2 }));
  writeFileSync(join(w.seedsDir, `.${blob}.9.1.tmp`), 'partial');
  // A valid record under another blob's name is not trusted either.
  const record = readFileSync(join(w.seedsDir, `${blob}.json`), 'utf8');
  writeFileSync(join(w.seedsDir, `${'c'.repeat(64)}.json`), record);
  w.clock.now += 60_001;
  const again = w.store();
  await again.s.restore();
  assert.deepEqual(readdirSync(w.seedsDir), []);
  assert.equal(again.s.has(blob), false);
  assert.equal(again.served.size, 0);
  const events = again.events().sort();
  assert.deepEqual(events, [
    'dist.source.expired',
    'dist.source.record_invalid',
    'dist.source.record_invalid',
    'dist.source.record_invalid',
  ]);
});

test("a seed's record is removed when its time is up, and the peer server told", async (t) => {
  const w = world(t);
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const one = w.store();
  const { seed } = await prepareSource(
    {
      id: 'r1:s1',
      runId: 'r1',
      host: 's1',
      kind: 'source',
      expiresInMs: 60_000,
      spec: { path: w.file, chunkSize: CHUNK, serveForMs: 5_000 },
    },
    w.policy,
    () => w.clock.now,
  );
  assert.ok(seed);
  await one.s.add(seed);
  const record = join(w.seedsDir, `${seed.blob}.json`);
  assert.ok(existsSync(record));
  // A second distribution of the same blob extends it: the later end wins.
  const { seed: later } = await prepareSource(
    {
      id: 'r2:s1',
      runId: 'r2',
      host: 's1',
      kind: 'source',
      expiresInMs: 60_000,
      spec: { path: w.file, chunkSize: CHUNK, serveForMs: 9_000 },
    },
    w.policy,
    () => w.clock.now,
  );
  assert.ok(later);
  await one.s.add(later);
  w.clock.now += 6_001;
  t.mock.timers.tick(6_001);
  await settle();
  assert.ok(one.s.has(seed.blob), 'ended before the later distribution did');
  assert.ok(existsSync(record));
  w.clock.now += 4_000;
  t.mock.timers.tick(4_000);
  await settle(() => one.events().includes('dist.source.ended'));
  assert.equal(one.s.has(seed.blob), false);
  assert.deepEqual(one.ended, [seed.blob]);
  assert.deepEqual(readdirSync(w.seedsDir), []);
});

/** Lets pending I/O run (setTimeout is mocked): until `done()`, or a few turns when nothing is awaited. */
async function settle(done?: () => boolean): Promise<void> {
  const end = Date.now() + 10_000;
  for (let i = 0; done ? !done() && Date.now() < end : i < 50; i++) {
    await new Promise((r) => setImmediate(r));
  }
}
