// The agent's directory distribution task, its progress and --rate-limit,
// with the pull replaced (TreeContext.sync): what runTree hands rsync and
// what it reports while rsync reports. The real rsync over the peer channel
// is tested in src/transfer/rsync.test.ts and test/dist-tree.test.ts.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { CanopyError } from '../errors/index.js';
import type { DistTask } from '../protocol/index.js';
import { PEER_CODES, type SyncFromPeerOptions, type SyncResult } from '../transfer/index.js';
import type { DistProgress } from './dist-task.js';
import { runTree, Throttle, type TreeContext, treeProgressBytes } from './tree-task.js';

const MiB = 1024 * 1024;
const SIZE = 10_000;

function world(t: TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'canopy-tree-task-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const root = join(dir, 'root');
  mkdirSync(root);
  return { root, dest: join(root, 'app') };
}

function task(dest: string, extra: Partial<DistTask['spec']> = {}): DistTask {
  return {
    id: 'r1:leaf',
    runId: 'r1',
    host: 'leaf',
    kind: 'dist',
    expiresInMs: 60_000,
    spec: {
      blob: 'a'.repeat(64),
      manifest: {
        version: 1,
        size: SIZE,
        chunkSize: 262_144,
        chunks: [],
        md5: 'd41d8cd98f00b204e9800998ecf8427e',
      },
      dest,
      parents: [{ name: 'p1', address: '127.0.0.1:1' }],
      fallbacks: [{ name: 'canopy-source', address: '127.0.0.1:2' }],
      serveForMs: 60_000,
      stallMs: 5_000,
      tree: { id: 'tree1' },
      ...extra,
    },
  };
}

function stats(bytesReceived: number): SyncResult {
  return {
    exitCode: 0,
    files: 2,
    filesTotal: 3,
    bytesReceived,
    bytesSent: 100,
    literalBytes: SIZE,
    matchedBytes: 0,
    totalFileSize: SIZE,
    stderr: '',
    argv: [],
  };
}

function context(root: string, sync: TreeContext['sync'], reports: DistProgress[]): TreeContext {
  return {
    policy: { roots: [root], runAs: [], defaultCwd: root },
    dataDir: '/nonexistent',
    canopy: ['canopy'],
    ready: () => {},
    retryMs: 1,
    // Every growth is reported at once here; the agent's default is once a second.
    progressEveryMs: 0,
    progress: (p) => reports.push(p),
    ...(sync ? { sync } : {}),
  };
}

test('a pull reports rsync progress below the tree size, then the whole size; --rate-limit reaches rsync', async (t) => {
  const { root, dest } = world(t);
  const reports: DistProgress[] = [];
  const asked: SyncFromPeerOptions[] = [];
  const sync = async (o: SyncFromPeerOptions) => {
    asked.push(o);
    // rsync at 100% before its --delay-updates renames, then a source that grew since the scan.
    for (const bytes of [0, 100, 5_000, 4_000, SIZE, SIZE + 10]) o.progress?.({ bytes });
    return stats(SIZE + 321);
  };
  const r = await runTree(task(dest, { rateLimit: 2 * MiB }), context(root, sync, reports));
  assert.equal(r.state, 'ok', r.error);
  assert.equal(asked.length, 1);
  assert.equal(asked[0]?.rateLimit, 2 * MiB);
  assert.equal(typeof asked[0]?.progress, 'function');
  assert.deepEqual(
    reports.map((p) => p.bytes),
    [100, 5_000, SIZE - 1, SIZE],
    'never back, never complete before the pull ended',
  );
  assert.deepEqual(reports.at(-1), { chunks: 0, bytes: SIZE, fetchedBytes: SIZE + 321, failedPeers: [] });
  assert.equal(r.transfer?.rsync?.bwlimitKiB, 2048);
  assert.equal(r.transfer?.fetchedBytes, SIZE + 321);
});

test('without --rate-limit no bwlimit; without a progress listener rsync is not asked for progress', async (t) => {
  const { root, dest } = world(t);
  const asked: SyncFromPeerOptions[] = [];
  const ctx = context(
    root,
    async (o) => {
      asked.push(o);
      return stats(10);
    },
    [],
  );
  delete ctx.progress;
  const r = await runTree(task(dest), ctx);
  assert.equal(r.state, 'ok', r.error);
  assert.equal(asked[0]?.rateLimit, undefined);
  assert.equal(asked[0]?.progress, undefined);
  assert.equal(r.transfer?.rsync?.bwlimitKiB, undefined);
});

test('a pull that fails and starts over elsewhere never reports fewer bytes, and names the peer it gave up on', async (t) => {
  const { root, dest } = world(t);
  const reports: DistProgress[] = [];
  const sync = async (o: SyncFromPeerOptions) => {
    if (o.peer.name === 'p1') {
      // Both attempts at the parent break on the link; the second counts again from 0.
      o.progress?.({ bytes: 0 });
      o.progress?.({ bytes: 3_000 });
      throw new CanopyError(PEER_CODES.lost, 'peer p1 hung up');
    }
    for (const bytes of [0, 2_000, 6_000]) o.progress?.({ bytes });
    return stats(7_000);
  };
  const r = await runTree(task(dest), context(root, sync, reports));
  assert.equal(r.state, 'ok', r.error);
  assert.equal(r.transfer?.rsync?.peer, 'canopy-source');
  assert.deepEqual(
    reports.map((p) => [p.bytes, p.failedPeers.join(',')]),
    [
      [3_000, ''],
      [3_000, 'p1'],
      [6_000, 'p1'],
      [SIZE, 'p1'],
    ],
  );
});

test('a rate limit rsync cannot express is refused with the reason, before any pull', async (t) => {
  const { root, dest } = world(t);
  let pulls = 0;
  const r = await runTree(
    task(dest, { rateLimit: 1000 }),
    context(root, async () => {
      pulls++;
      return stats(0);
    }, []),
  );
  assert.equal(r.state, 'refused');
  assert.match(r.error ?? '', /rate limit 1000 bytes\/s is below rsync's smallest --bwlimit/);
  assert.equal(pulls, 0);
});

test('the bytes of a host still pulling stay below the size', () => {
  assert.equal(treeProgressBytes(0, 0), 0);
  assert.equal(treeProgressBytes(5, 0), 0);
  assert.equal(treeProgressBytes(5, 10), 5);
  assert.equal(treeProgressBytes(10, 10), 9);
  assert.equal(treeProgressBytes(50, 10), 9);
});

test('the throttle sends the first value at once, then only the latest per interval; stop drops what waits', async () => {
  const sent: number[] = [];
  // The clock stands still: every value after the first waits for the timer.
  const th = new Throttle<number>(
    (v) => sent.push(v),
    40,
    () => 1_000,
  );
  th.update(1);
  th.update(2);
  th.update(3);
  assert.deepEqual(sent, [1]);
  await new Promise((r) => setTimeout(r, 80)); // set after the throttle's timer: fires after it
  assert.deepEqual(sent, [1, 3]);
  th.update(4);
  th.stop();
  await new Promise((r) => setTimeout(r, 80));
  assert.deepEqual(sent, [1, 3]);
});
