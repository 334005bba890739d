// Distribution faults end to end, with real coordinator and agent processes
// on loopback: an interior relay killed with SIGKILL halfway (its children
// are re-parented and finish; restarted, it resumes from its verified chunks,
// fetching only what it lacked), a coordinator restarted halfway, a peer
// serving corrupted chunks (detected, fetched again elsewhere, reported,
// nothing corrupt installed), and a chunk store over its quota (a clear
// error, nothing half installed). --rate-limit slows the agents down enough
// to act halfway; it is itself checked (the transfer cannot beat the cap).
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { apiOf, startFleet, type TestFleet, waitFor } from './helpers/fleet.js';

const MiB = 1024 * 1024;

interface HostResult {
  host: string;
  state: string;
  error?: string;
  durationMs: number;
  transfer?: {
    fetchedBytes: number;
    reusedChunks: number;
    fromPeers: Record<string, number>;
    badPeers: string[];
  };
}

interface DistView {
  run: { finishedAt?: number };
  results: HostResult[];
  summary: { finished: boolean };
  progress: { failedPeers: string[]; bytes: number } | null;
  tree: { parents: Record<string, string[]>; bytes: Record<string, number> } | null;
}

async function peerFleet(t: Parameters<typeof startFleet>[0], names: string[], extra: string[] = []) {
  const fleet = await startFleet(t);
  for (const name of names) {
    await fleet.addAgent(name, { wait: false, extra: ['--peer-listen', '127.0.0.1:0', ...extra] });
  }
  await fleet.waitPeers(names);
  return fleet;
}

function sourceFile(fleet: TestFleet, size: number) {
  const data = randomBytes(size);
  const path = join(fleet.dir, `image-${size}.bin`);
  writeFileSync(path, data);
  return { path, data, md5: createHash('md5').update(data).digest('hex') };
}

const destOf = (fleet: TestFleet, host: string, name = 'image.bin') =>
  join(fleet.dir, 'agents', host, 'root', name);

function md5Of(path: string): string {
  return createHash('md5').update(readFileSync(path)).digest('hex');
}

async function startDist(fleet: TestFleet, body: Record<string, unknown>): Promise<string> {
  const r = await apiOf(fleet)('POST', '/v1/dists', body);
  assert.equal(r.status, 201, r.text);
  return (JSON.parse(r.text) as { id: string }).id;
}

async function view(fleet: TestFleet, id: string): Promise<DistView> {
  const r = await apiOf(fleet)('GET', `/v1/dists/${id}`);
  assert.equal(r.status, 200, r.text);
  return JSON.parse(r.text) as DistView;
}

test('kill -9 of an interior relay halfway: its children are re-parented and finish; restarted, it resumes from its verified chunks', async (t) => {
  const names = ['r1', 'r2', 'r3', 'r4', 'r5', 'r6'];
  const fleet = await peerFleet(t, names);
  const size = 24 * MiB;
  const src = sourceFile(fleet, size);
  const rate = 3 * MiB;
  const started = Date.now();
  const id = await startDist(fleet, {
    path: src.path,
    dest: destOf(fleet, '{host}'),
    targets: ['all'],
    rateLimit: rate,
  });
  const first = await view(fleet, id);
  const tree = first.tree?.parents ?? {};
  // The victim: the host most others fetch a stripe from.
  const children = new Map<string, number>();
  for (const ps of Object.values(tree)) for (const p of ps) children.set(p, (children.get(p) ?? 0) + 1);
  const victim = names
    .filter((n) => children.has(n))
    .sort((a, b) => (children.get(b) ?? 0) - (children.get(a) ?? 0))[0];
  assert.ok(victim, `no interior host in ${JSON.stringify(tree)}`);
  const agent = fleet.agents.get(victim);
  assert.ok(agent);
  await waitFor(`${victim} to hold a third of the file`, async () => {
    const v = await view(fleet, id);
    return (v.tree?.bytes[victim] ?? 0) >= size / 3;
  });
  await agent.kill('SIGKILL');
  const heldAtKill = (await view(fleet, id)).tree?.bytes[victim] ?? 0;
  await waitFor('the peers to give up on the killed relay', async () => {
    const v = await view(fleet, id);
    return v.progress?.failedPeers.includes(victim) ?? false;
  });
  agent.restart();
  const done = await waitFor(
    'the distribution to finish',
    async () => {
      const v = await view(fleet, id);
      return v.run.finishedAt ? v : undefined;
    },
    120_000,
  );
  for (const r of done.results) {
    assert.equal(r.state, 'ok', `${r.host}: ${r.error}`);
    assert.equal(md5Of(destOf(fleet, r.host)), src.md5, `${r.host} has a wrong file`);
  }
  const v = done.results.find((r) => r.host === victim);
  assert.ok(v?.transfer);
  // Resumed: what it had verified before the kill was not fetched again.
  assert.ok(v.transfer.reusedChunks > 0, `nothing reused: ${JSON.stringify(v.transfer)}`);
  assert.ok(
    v.transfer.fetchedBytes <= size - heldAtKill + 4 * MiB,
    `fetched ${v.transfer.fetchedBytes} after holding ${heldAtKill} of ${size}`,
  );
  assert.match(agent.log(), /distribution was running when the agent stopped; resuming it/);
  // Its children fetched the rest of their stripe elsewhere.
  const orphans = Object.entries(tree).filter(([h, ps]) => h !== victim && ps.includes(victim));
  assert.ok(orphans.length > 0);
  for (const [h, ps] of orphans) {
    const got = done.results.find((r) => r.host === h)?.transfer;
    const planned = (size / ps.length) * ps.filter((p) => p === victim).length;
    const fromVictim = got?.fromPeers[victim] ?? 0;
    assert.ok(fromVictim < planned, `${h} got all of ${victim}'s stripes from it: ${JSON.stringify(got)}`);
    assert.equal(got?.fetchedBytes, size);
  }
  // --rate-limit held: no host fetched faster than the cap (plus a second's burst).
  const wall = (Date.now() - started) / 1000;
  assert.ok(wall >= size / rate - 1, `the whole file moved in ${wall} s under a cap of ${rate} B/s`);
});

test('a peer serving corrupted chunks: detected, fetched elsewhere, the peer reported, nothing corrupt installed', async (t) => {
  const fleet = await peerFleet(t, ['c1', 'c2']);
  const src = sourceFile(fleet, 8 * MiB);
  const dest = destOf(fleet, '{host}');
  const once = await fleet.cli([
    'dist',
    src.path,
    '--dest',
    dest,
    '--targets',
    'c1',
    '--chunk-size',
    String(MiB),
    '--json',
  ]);
  assert.equal(once.code, 0, once.stderr);
  // Flip one byte in every chunk of c1's pack of the blob (same length: only a digest check can tell).
  const packs = join(fleet.dir, 'agents', 'c1', 'chunks', 'packs');
  const packFiles = readdirSync(packs).filter((f) => f.endsWith('.pack'));
  assert.equal(packFiles.length, 1, `c1 holds one pack: ${readdirSync(packs).join(' ')}`);
  const packPath = join(packs, packFiles[0] as string);
  const b = readFileSync(packPath);
  assert.equal(b.length, 8 * MiB);
  for (let at = MiB >> 1; at < b.length; at += MiB) b[at] = (b[at] ?? 0) ^ 0xff;
  writeFileSync(packPath, b);
  // Restarted, so the chunks come from disk (a relay keeps the chunks it stored last in memory).
  const c1 = fleet.agents.get('c1');
  assert.ok(c1);
  await c1.kill('SIGTERM');
  c1.restart();
  await fleet.waitOnline(['c1']);
  // c1 holds the file (its MD5 matches), so it serves; c2 fetches from it and from the source.
  // Four stripes over two hosts: each is the other's parent in some stripe.
  const id = await startDist(fleet, { path: src.path, dest, targets: ['all'], stripes: 4, chunkSize: MiB });
  const parents = (await view(fleet, id)).tree?.parents.c2 ?? [];
  assert.ok(parents.includes('c1'), `c1 is not a parent of c2: ${parents.join(' ')}`);
  const done = await waitFor('the distribution to finish', async () => {
    const v = await view(fleet, id);
    return v.run.finishedAt ? v : undefined;
  });
  const c2 = done.results.find((x) => x.host === 'c2');
  assert.equal(c2?.state, 'ok', c2?.error);
  assert.equal(md5Of(destOf(fleet, 'c2')), src.md5);
  assert.deepEqual(c2?.transfer?.badPeers, ['c1']);
  assert.equal(c2?.transfer?.fromPeers.c1 ?? 0, 0, 'a corrupt chunk from c1 was accepted');
  assert.equal(c2?.transfer?.fetchedBytes, src.data.length);
});

test('a chunk store over its quota: a clear error naming it, nothing half installed', async (t) => {
  const fleet = await peerFleet(t, ['q1'], ['--chunk-quota', '2M']);
  const src = sourceFile(fleet, 6 * MiB);
  const r = await fleet.cli([
    'dist',
    src.path,
    '--dest',
    destOf(fleet, '{host}'),
    '--targets',
    'all',
    '--json',
  ]);
  assert.equal(r.code, 1, r.stderr);
  const j = JSON.parse(r.stdout) as { results: HostResult[] };
  assert.equal(j.results[0]?.state, 'failed');
  assert.match(j.results[0]?.error ?? '', /quota/);
  assert.match(j.results[0]?.error ?? '', /chunks/);
  assert.equal(existsSync(destOf(fleet, 'q1')), false);
  const leftovers = readdirSync(join(fleet.dir, 'agents', 'q1', 'root'));
  assert.deepEqual(leftovers, [], `left in the root: ${leftovers.join(', ')}`);
});

test('a coordinator restarted halfway: the distribution resumes from its stored plan and finishes', async (t) => {
  const names = ['k1', 'k2', 'k3'];
  const fleet = await peerFleet(t, names);
  const size = 12 * MiB;
  const src = sourceFile(fleet, size);
  const id = await startDist(fleet, {
    path: src.path,
    dest: destOf(fleet, '{host}'),
    targets: ['all'],
    rateLimit: 2 * MiB,
  });
  await waitFor('a quarter of the fleet bytes', async () => {
    const v = await view(fleet, id);
    return (v.progress?.bytes ?? 0) >= (size * names.length) / 4;
  });
  await fleet.coordinator.kill('SIGKILL');
  fleet.coordinator.restart();
  const done = await waitFor(
    'the distribution to finish after the restart',
    async () => {
      const v = await view(fleet, id).catch(() => undefined);
      return v?.run.finishedAt ? v : undefined;
    },
    120_000,
  );
  for (const r of done.results) {
    assert.equal(r.state, 'ok', `${r.host}: ${r.error}`);
    assert.equal(md5Of(destOf(fleet, r.host)), src.md5);
  }
  assert.match(fleet.coordinator.log(), /distribution resumed: serving its blob again/);
});
