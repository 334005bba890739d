// The agent's distribution task against real peers over mutual TLS on
// loopback (in one process): a source serving the original file, a peer
// that serves a corrupted chunk, and a dead address.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { CanopyError } from '../errors/index.js';
import { type CertAndKey, createCa, createKeyAndCsr, signCsr } from '../pki/index.js';
import type { DistTask, PeerAddress } from '../protocol/index.js';
import {
  buildManifest,
  ChunkPool,
  ChunkStore,
  chunkRange,
  type Manifest,
  manifestId,
  PeerClient,
  PeerServer,
} from '../transfer/index.js';
import { candidatesFor, runDist } from './dist-task.js';

const quiet = { debug() {}, info() {}, warn() {} };
const CHUNK = 64 * 1024;

interface World {
  dir: string;
  ca: CertAndKey;
  ids: Map<string, CertAndKey>;
  file: string;
  data: Buffer;
  manifest: Manifest;
  blob: string;
}

async function world(t: TestContext): Promise<World> {
  const dir = mkdtempSync(join(tmpdir(), 'canopy-dist-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const ca = await createCa({ commonName: 'fleet' });
  const ids = new Map<string, CertAndKey>();
  for (const name of ['src', 'bad', 'leaf']) {
    const { keyPem, csrPem } = await createKeyAndCsr(name);
    ids.set(name, { certPem: (await signCsr(ca, csrPem, { name, ttlMs: 3_600_000 })).certPem, keyPem });
  }
  const data = randomBytes(16 * CHUNK + 1234);
  const file = join(dir, 'image.bin');
  writeFileSync(file, data);
  const manifest = await buildManifest(file, { chunkSize: CHUNK });
  return { dir, ca, ids, file, data, manifest, blob: await manifestId(manifest) };
}

/**
 * A peer serving the original file's chunks (as the distribution's source
 * does); `mangle` corrupts some, or throws to refuse them.
 */
async function sourcePeer(t: TestContext, w: World, name: string, mangle?: (i: number, b: Buffer) => Buffer) {
  const server = new PeerServer({
    identity: w.ids.get(name) as CertAndKey,
    caPem: w.ca.certPem,
    authorize: (_peer, blob) => (blob === w.blob ? w.manifest : undefined),
    isRevoked: () => false,
    log: quiet,
    source: async (_blob, index) => {
      const { offset, length } = chunkRange(w.manifest, index);
      const chunk = Buffer.from(w.data.subarray(offset, offset + length));
      return mangle ? mangle(index, chunk) : chunk;
    },
  });
  const a = await server.listen(0, '127.0.0.1');
  t.after(() => server.close());
  return { name, address: `127.0.0.1:${a.port}`, server };
}

async function leaf(t: TestContext, w: World) {
  const store = await ChunkStore.open(join(w.dir, 'leaf-chunks'), { quotaBytes: 64 * 1024 * 1024 });
  t.after(() => store.close());
  const root = join(w.dir, 'root');
  mkdirSync(root, { recursive: true });
  const served = new Map<string, number>();
  const id = w.ids.get('leaf') as CertAndKey;
  // As the agent runs it: chunks received into pooled buffers, given back once the pack is done.
  const pool = new ChunkPool();
  const ctx = {
    policy: { roots: [root], runAs: [], defaultCwd: root },
    backupDir: join(w.dir, 'backups'),
    store,
    pool,
    connect: (p: PeerAddress) => {
      const [host, port] = p.address.split(':');
      return PeerClient.connect({
        host: host ?? '',
        port: Number(port),
        peer: p.name,
        identity: id,
        caPem: w.ca.certPem,
        stallTimeoutMs: 3000,
        pool,
      });
    },
    serve: (blob: string, _m: Manifest, until: number) => served.set(blob, until),
  };
  return { store, root, served, ctx, pool };
}

function task(
  w: World,
  dest: string,
  parents: PeerAddress[],
  fallbacks: PeerAddress[] = [],
  stallMs = 2000,
): DistTask {
  return {
    id: 'r1:leaf',
    runId: 'r1',
    host: 'leaf',
    kind: 'dist',
    expiresInMs: 60_000,
    spec: {
      blob: w.blob,
      manifest: { ...w.manifest, chunks: [...w.manifest.chunks] },
      dest,
      mode: 0o640,
      parents,
      fallbacks,
      serveForMs: 60_000,
      stallMs,
    },
  };
}

test('fetches every chunk over two stripes, verifies, installs atomically, and serves the blob on', async (t) => {
  const w = await world(t);
  const src = await sourcePeer(t, w, 'src');
  const l = await leaf(t, w);
  const dest = join(l.root, 'image.bin');
  const r = await runDist(task(w, dest, [src, src]), l.ctx);
  assert.equal(r.state, 'ok', r.error);
  assert.deepEqual(readFileSync(dest), w.data);
  assert.equal(r.files?.[0]?.state, 'changed');
  assert.equal(r.files?.[0]?.newMd5, w.manifest.md5);
  assert.equal(r.transfer?.fetchedBytes, w.data.length);
  assert.equal(r.transfer?.reusedChunks, 0);
  // Every chunk's buffer came back to the pool (the last, short chunk's too), and buffers were reused.
  const { allocated, reused, freeBytes } = l.pool.stats;
  assert.equal(allocated + reused, w.manifest.chunks.length);
  assert.ok(reused > 0, 'no buffer was reused');
  assert.equal(freeBytes, (allocated - 1) * CHUNK + 1234, 'a buffer was not given back');
  assert.ok((l.served.get(w.blob) ?? 0) > Date.now(), 'the blob is served on after the install');
  // Again: everything is in the store and the file is right.
  const again = await runDist(task(w, dest, [src]), l.ctx);
  assert.equal(again.state, 'ok');
  assert.equal(again.files?.[0]?.state, 'unchanged');
  assert.equal(again.transfer?.fetchedBytes, 0);
  assert.equal(again.transfer?.reusedChunks, w.manifest.chunks.length);
});

test('a task without the manifest gets it from its peers: a wrong one is refused, the next candidate serves', {
  timeout: 60_000,
}, async (t) => {
  const w = await world(t);
  const src = await sourcePeer(t, w, 'src');
  // 'bad' serves a manifest that is not the blob's (another file's): its bytes do not hash to the blob id.
  const other = await buildManifest(w.file, { chunkSize: 2 * CHUNK });
  const bad = new PeerServer({
    identity: w.ids.get('bad') as CertAndKey,
    caPem: w.ca.certPem,
    authorize: () => other,
    isRevoked: () => false,
    log: quiet,
  });
  const a = await bad.listen(0, '127.0.0.1');
  t.after(() => bad.close());
  const l = await leaf(t, w);
  const dest = join(l.root, 'image.bin');
  const { manifest: _, ...bare } = task(
    w,
    dest,
    [{ name: 'bad', address: `127.0.0.1:${a.port}` }],
    [src],
  ).spec;
  const r = await runDist({ ...task(w, dest, [src]), spec: { ...bare, md5: w.manifest.md5 } }, l.ctx);
  assert.equal(r.state, 'ok', r.error);
  assert.deepEqual(readFileSync(dest), w.data);
  assert.equal(r.files?.[0]?.newMd5, w.manifest.md5);

  // Nobody serves it: failed naming each candidate, the file's MD5 still in the report.
  const l2 = await leaf(t, { ...w, dir: join(w.dir, 'second') });
  const dest2 = join(l2.root, 'image.bin');
  const none = {
    ...bare,
    dest: dest2,
    parents: [{ name: 'src', address: '127.0.0.1:1' }],
    fallbacks: [],
    stallMs: 100,
    md5: w.manifest.md5,
  };
  const r2 = await runDist({ ...task(w, dest2, [src]), spec: none }, l2.ctx);
  assert.equal(r2.state, 'failed');
  assert.match(
    r2.error ?? '',
    /no peer could serve the manifest of blob [0-9a-f]{64} .*tried src: cannot reach peer src/,
  );
  assert.equal(r2.files?.[0]?.newMd5, w.manifest.md5);

  // A parent that cannot be reached is left at once, not after its stall windows (3 x 60 s here).
  const l3 = await leaf(t, { ...w, dir: join(w.dir, 'third') });
  const dest3 = join(l3.root, 'image.bin');
  const gone = { name: 'gone', address: '127.0.0.1:1' };
  const dead = {
    ...bare,
    dest: dest3,
    parents: [gone],
    fallbacks: [src],
    stallMs: 60_000,
    md5: w.manifest.md5,
  };
  const r3 = await runDist({ ...task(w, dest3, [src]), spec: dead }, l3.ctx);
  assert.equal(r3.state, 'ok', r3.error);
  assert.deepEqual(readFileSync(dest3), w.data);
});

test('resumes from verified chunks: only the missing ones are fetched', async (t) => {
  const w = await world(t);
  const src = await sourcePeer(t, w, 'src');
  const l = await leaf(t, w);
  for (const i of [0, 1, 2, 9]) {
    const { offset, length } = chunkRange(w.manifest, i);
    await l.store.put(w.manifest.chunks[i] ?? '', w.data.subarray(offset, offset + length));
  }
  const r = await runDist(task(w, join(l.root, 'image.bin'), [src]), l.ctx);
  assert.equal(r.state, 'ok', r.error);
  assert.equal(r.transfer?.reusedChunks, 4);
  assert.equal(r.transfer?.fetchedBytes, w.data.length - 4 * CHUNK);
  assert.deepEqual(readFileSync(join(l.root, 'image.bin')), w.data);
});

test('a peer serving a corrupted chunk is reported and replaced; a dead parent falls back; nothing corrupt installed', async (t) => {
  const w = await world(t);
  const src = await sourcePeer(t, w, 'src');
  const bad = await sourcePeer(t, w, 'bad', (i, b) => {
    if (i === 4) b[10] = (b[10] ?? 0) ^ 0xff;
    return b;
  });
  const l = await leaf(t, w);
  const dest = join(l.root, 'image.bin');
  const r = await runDist(task(w, dest, [bad], [src]), l.ctx);
  assert.equal(r.state, 'ok', r.error);
  assert.deepEqual(r.transfer?.badPeers, ['bad']);
  assert.ok((r.transfer?.fromPeers.src ?? 0) > 0);
  assert.deepEqual(readFileSync(dest), w.data);

  // A parent at a closed port: the source serves instead.
  rmSync(dest);
  const l2 = await leaf(t, { ...w, dir: join(w.dir, 'second') });
  const dead = { name: 'src', address: '127.0.0.1:1' };
  const r2 = await runDist(task(w, join(l2.root, 'image.bin'), [dead], [src]), l2.ctx);
  assert.equal(r2.state, 'ok', r2.error);
  assert.deepEqual(readFileSync(join(l2.root, 'image.bin')), w.data);
});

test('no peer can serve: failed, naming what was tried; the destination is untouched', async (t) => {
  const w = await world(t);
  const l = await leaf(t, w);
  const dest = join(l.root, 'image.bin');
  writeFileSync(dest, 'old\n');
  // The last candidate is retried (backing off) for twelve stall windows before the task gives up.
  const r = await runDist(task(w, dest, [{ name: 'src', address: '127.0.0.1:1' }], [], 200), l.ctx);
  assert.equal(r.state, 'failed');
  assert.match(r.error ?? '', /no peer could serve .*; tried src: cannot reach peer src .*ECONNREFUSED/);
  assert.equal(readFileSync(dest, 'utf8'), 'old\n');
});

test('a source that can serve none of the blob any more fails the task at once with its own reason', {
  timeout: 60_000,
}, async (t) => {
  const w = await world(t);
  const refusal = 'agent "s1" no longer serves /srv/image.bin (blob 0123): it was modified';
  const src = await sourcePeer(t, w, 'src', (i, b) => {
    if (i < 3) return b;
    throw new CanopyError('DIST_SOURCE_REFUSED', refusal);
  });
  const l = await leaf(t, w);
  const dest = join(l.root, 'image.bin');
  writeFileSync(dest, 'old\n');
  // Twelve stall windows of 60 s would be 12 minutes: only the refusal can end the task within the timeout.
  const r = await runDist(task(w, dest, [src], [], 60_000), l.ctx);
  assert.equal(r.state, 'failed');
  assert.match(
    r.error ?? '',
    /; tried src: peer src \(127\.0\.0\.1:\d+\) refused chunk \d+ of blob [0-9a-f]{64}: /,
  );
  assert.ok(r.error?.endsWith(`${refusal})`), r.error);
  // The connection the stripe closed itself failed the other lanes' fetches; that is not the reason given.
  assert.doesNotMatch(r.error ?? '', /closed by this agent/);
  assert.equal(readFileSync(dest, 'utf8'), 'old\n');
  // Every lane stopped and closed what it opened.
  for (let waited = 0; src.server.connectionCount > 0 && waited < 5000; waited += 20)
    await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(src.server.connectionCount, 0, 'a connection to the source was left open');
});

test('a destination outside the roots is refused before anything is fetched', async (t) => {
  const w = await world(t);
  const l = await leaf(t, w);
  const r = await runDist(
    task(w, join(w.dir, 'elsewhere.bin'), [{ name: 'src', address: '127.0.0.1:1' }]),
    l.ctx,
  );
  assert.equal(r.state, 'refused');
  assert.match(r.error ?? '', /outside the allowed roots/);
  assert.equal(r.files?.[0]?.code, 'PUSH_DEST_REFUSED');
});

test('candidates: where a restarted host rejoins, then parent, alternate and fallbacks, each once by name and address', () => {
  const a = (name: string, port = 1) => ({ name, address: `127.0.0.1:${port}` });
  const names = (xs: PeerAddress[]) => xs.map((x) => `${x.name}@${x.address.split(':')[1]}`);
  assert.deepEqual(names(candidatesFor(a('p'), a('alt'), [a('src')])), ['p@1', 'alt@1', 'src@1']);
  assert.deepEqual(names(candidatesFor(a('p'), a('alt'), [a('src')], a('tail'))), [
    'tail@1',
    'p@1',
    'alt@1',
    'src@1',
  ]);
  // A rejoin entry that is the parent itself (the host is the tail) adds nothing.
  assert.deepEqual(names(candidatesFor(a('p'), a('p'), [a('src')], a('p'))), ['p@1', 'src@1']);
  // Same name at another address (a restarted peer on a new port) is another candidate.
  assert.deepEqual(names(candidatesFor(a('p'), undefined, [a('p', 2)])), ['p@1', 'p@2']);
});
