// A distribution's manifest is stored once, not once per host: the run manager
// with a fake courier and a real store in a temp dir, a distribution to 200
// hosts with a 4,096-chunk manifest, the store's keys and bytes counted. Guards
// against each host's plan and queued task carrying its own copy (for a 20 GB
// file at 256 KiB chunks that was ~5.5 MB per host). The agent's view must not
// change: every task sent, also after a restart, carries the whole manifest.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { pino } from 'pino';
import {
  type DistSpec,
  decodeCoordinatorMessage,
  encode,
  NO_OUTPUT,
  type Task,
  type TaskResult,
} from '../protocol/index.js';
import { type AgentStatus, type Courier, RunManager } from './runs.js';
import { type DistRunSpec, type RunRecord, Store, type WireManifest } from './store.js';

const log = pino({ level: 'silent' });
const CHUNKS = 4096;
const BLOB = 'b'.repeat(64);

class FakeCourier implements Courier {
  readonly sent: Task[] = [];
  send(_agent: string, m: { type: string; task?: Task }): boolean {
    if (m.type === 'task' && m.task) this.sent.push(m.task);
    return true;
  }
  status(): AgentStatus {
    return 'online';
  }
  lastSeen(): number {
    return 0;
  }
}

function manifestOf(chunks: number): WireManifest {
  const digests = Array.from({ length: chunks }, () => randomBytes(32).toString('hex'));
  return { version: 1, size: chunks * 262_144, chunkSize: 262_144, chunks: digests, md5: 'a'.repeat(32) };
}

function runSpec(hosts: number, blob = BLOB, size = CHUNKS * 262_144): DistRunSpec {
  return {
    kind: 'dist',
    targets: ['all'],
    path: '/src/image.bin',
    dest: '/srv/{host}/image.bin',
    blob,
    size,
    chunkSize: 262_144,
    stripes: 1,
    timeoutMs: 600_000,
    concurrency: hosts,
  };
}

/** Each host's spec as dists.ts builds it: one manifest object shared by all of them. */
function plans(hosts: string[], manifest: WireManifest, blob = BLOB): Map<string, DistSpec> {
  return new Map(
    hosts.map((h, i) => [
      h,
      {
        blob,
        manifest,
        dest: `/srv/${h}/image.bin`,
        parents: [
          { name: i === 0 ? 'canopy-source' : (hosts[i - 1] ?? ''), address: `127.0.0.1:${7000 + i}` },
        ],
        fallbacks: [{ name: 'canopy-source', address: '127.0.0.1:7000' }],
        serveForMs: 600_000,
        stallMs: 5_000,
      },
    ]),
  );
}

function done(taskId: string, dest: string): TaskResult {
  return {
    taskId,
    runId: taskId.split(':')[0] ?? '',
    state: 'ok',
    ...NO_OUTPUT,
    startedAt: 1,
    endedAt: 2,
    durationMs: 1,
    files: [{ dest, state: 'changed', oldMd5: null, newMd5: 'a'.repeat(32), content: true }],
  };
}

async function world(t: TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'canopy-plans-'));
  const store = new Store(join(dir, 'db'));
  await store.open();
  const managers: RunManager[] = [];
  t.after(async () => {
    for (const m of managers) m.stop();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const manager = (courier: Courier) => {
    const m = new RunManager({ store, courier, logger: log });
    managers.push(m);
    return m;
  };
  /** Every stored key and value (raw JSON), over all sublevels. */
  const dump = async () =>
    (await store.db.iterator({ valueEncoding: 'utf8' }).all()) as unknown as [string, string][];
  return { store, manager, dump };
}

const hostNames = (n: number, prefix = 'h') => Array.from({ length: n }, (_, i) => `${prefix}${i + 1}`);

test('a distribution to 200 hosts stores its manifest once, and sends none: each task carries the blob id and MD5', async (t) => {
  const w = await world(t);
  const hosts = hostNames(200);
  const manifest = manifestOf(CHUNKS);
  const manifestBytes = JSON.stringify(manifest).length;
  const courier = new FakeCourier();
  const runs = w.manager(courier);
  const record = await runs.create(runSpec(hosts.length), hosts, { plans: plans(hosts, manifest) });

  assert.equal(courier.sent.length, 200);
  for (const task of courier.sent) {
    // What the agent decodes: a valid dist task, small whatever the manifest (the agent gets it from its peers).
    const raw = encode({ type: 'task', task });
    const decoded = decodeCoordinatorMessage(raw);
    assert.ok(decoded.ok, decoded.ok ? '' : decoded.reason);
    assert.ok(task.kind === 'dist');
    assert.equal(task.spec.manifest, undefined);
    assert.equal(task.spec.blob, BLOB);
    assert.equal(task.spec.md5, manifest.md5);
    assert.ok(raw.length < 2048, `a task of ${raw.length} bytes for a ${manifestBytes}-byte manifest`);
  }

  const stored = await w.dump();
  const digest = manifest.chunks[1234] ?? '';
  const copies = stored.filter(([, v]) => v.includes(digest)).map(([k]) => k);
  assert.deepEqual(copies, [`!manifests!${BLOB}`], 'one stored copy of the manifest, under its blob');
  const bytes = stored.reduce((n, [k, v]) => n + k.length + v.length, 0);
  // Per host: its plan and its queued task without the manifest, about 1 KB together.
  assert.ok(
    bytes < manifestBytes + hosts.length * 2048,
    `stored ${bytes} bytes for a ${manifestBytes}-byte manifest and ${hosts.length} hosts`,
  );
  assert.equal(stored.filter(([k]) => k.startsWith('!plans!')).length, 200);
  assert.equal(stored.filter(([k]) => k.startsWith('!queue!')).length, 200);

  // A restarted coordinator holds the manifest once (its source serves it) and re-sends the tasks.
  runs.stop();
  const again = w.manager(new FakeCourier());
  await again.load();
  const [a, b] = [again.queuedFor('h1')[0], again.queuedFor('h200')[0]];
  assert.ok(a?.kind === 'dist' && b?.kind === 'dist');
  assert.equal(a.spec.manifest, undefined);
  assert.equal(b.spec.md5, manifest.md5);
  assert.equal(a.spec.dest, '/srv/h1/image.bin');
  assert.deepEqual(again.manifestOf(record.id), manifest);

  for (const h of hosts) {
    assert.equal(await again.onResult(h, done(`${record.id}:${h}`, `/srv/${h}/image.bin`)), true);
  }
  assert.equal((await again.get(record.id))?.summary.finished, true);
  const left = (await w.dump()).filter(([k]) => /^!(plans|manifests|queue)!/.test(k));
  assert.deepEqual(left, [], 'a finished distribution leaves no plan, queued task or manifest');
});

test('runs of the same blob share one stored manifest until the last one finishes; a stale one is swept at start', async (t) => {
  const w = await world(t);
  const manifest = manifestOf(16);
  const courier = new FakeCourier();
  const runs = w.manager(courier);
  const first = await runs.create(runSpec(2, BLOB, 16 * 262_144), ['a1', 'a2'], {
    plans: plans(['a1', 'a2'], manifest),
  });
  const second = await runs.create(runSpec(2, BLOB, 16 * 262_144), ['b1', 'b2'], {
    plans: plans(['b1', 'b2'], manifest),
  });
  const manifests = async () => w.store.keys(w.store.manifests);
  assert.deepEqual(await manifests(), [BLOB]);
  for (const h of ['a1', 'a2']) await runs.onResult(h, done(`${first.id}:${h}`, `/srv/${h}/image.bin`));
  assert.deepEqual(await manifests(), [BLOB], 'still used by the second run');

  // The second run resumes from the shared record after a restart.
  runs.stop();
  const again = w.manager(new FakeCourier());
  await again.load();
  const task = again.queuedFor('b2')[0];
  assert.ok(task?.kind === 'dist');
  assert.equal(task.spec.md5, manifest.md5);
  assert.deepEqual(again.manifestOf(second.id), manifest);
  for (const h of ['b1', 'b2']) await again.onResult(h, done(`${second.id}:${h}`, `/srv/${h}/image.bin`));
  assert.deepEqual(await manifests(), []);

  // A manifest no unfinished run uses (a crash after a run finished, before its clean-up) goes at load.
  const stale = 'f'.repeat(64);
  await w.store.commit([w.store.put(w.store.manifests, stale, { manifest })]);
  again.stop();
  await w.manager(new FakeCourier()).load();
  assert.deepEqual(await manifests(), []);
});

test('plans stored with their manifest inline (before it was stored once) still resume', async (t) => {
  const w = await world(t);
  const manifest = manifestOf(8);
  const hosts = ['o1', 'o2'];
  const id = 'rold0000000001';
  const record: RunRecord = {
    id,
    createdAt: Date.now(),
    deadline: Date.now() + 600_000,
    spec: runSpec(2, BLOB, 8 * 262_144),
    hosts,
  };
  const old = plans(hosts, manifest);
  await w.store.commit([
    w.store.put(w.store.runs, id, record),
    ...hosts.map((h) => w.store.put(w.store.plans, `${id}/${h}`, { spec: old.get(h) as DistSpec })),
  ]);
  const courier = new FakeCourier();
  const runs = w.manager(courier);
  await runs.load();
  assert.deepEqual(
    courier.sent.map((task) => [task.id, task.kind === 'dist' && task.spec.md5]),
    hosts.map((h) => [`${id}:${h}`, manifest.md5]),
  );
  assert.deepEqual(runs.manifestOf(id), manifest);
  const queued = (await w.dump()).filter(([k]) => k.startsWith('!queue!'));
  assert.equal(queued.length, 2);
  assert.ok(
    queued.every(([, v]) => !v.includes(manifest.chunks[3] ?? '')),
    'the queue does not copy the manifest',
  );
  // Stored once under its blob from now on: a new run of the same blob shares it.
  assert.deepEqual(await w.store.keys(w.store.manifests), [BLOB]);
});
