/**
 * A running peer server learning what changed after it started: certificates
 * revoked while clients are connected (dropRevoked) and a renewed certificate
 * (setCredentials). Real PeerServer and PeerClient on loopback with
 * certificates of a CA made here; only the callbacks are the test's.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import tls from 'node:tls';
import { isCanopyError } from '../errors/index.js';
import {
  agentSan,
  type CertAndKey,
  certInfo,
  createCa,
  createKeyAndCsr,
  normalizeSerial,
  signCsr,
} from '../pki/index.js';
import { buildManifest, chunkRange, type Manifest, manifestId } from './manifest.js';
import { PeerClient, type PeerClientOptions } from './peer-client.js';
import { type PeerLog, PeerServer, type PeerServerOptions } from './peer-server.js';
import { encodeFrame, PEER_ALPN, PEER_CODES } from './peer-wire.js';

const HOUR = 3_600_000;
const CS = 64 * 1024;

async function agentCert(ca: CertAndKey, name: string): Promise<CertAndKey & { serial: string }> {
  const { keyPem, csrPem } = await createKeyAndCsr(name);
  const { certPem, serial } = await signCsr(ca, csrPem, { name, ttlMs: HOUR });
  return { certPem, keyPem, serial };
}

const ca = await createCa({ commonName: 'canopy test CA' });
const otherCa = await createCa({ commonName: 'canopy other CA' });
const web01 = await agentCert(ca, 'web01'); // serves
const web01renewed = await agentCert(ca, 'web01');
const web02 = await agentCert(ca, 'web02'); // fetches; revoked in the revocation tests
const web03 = await agentCert(ca, 'web03'); // fetches; never revoked

interface Blob {
  data: Buffer;
  manifest: Manifest;
  id: string;
}

async function makeBlob(t: TestContext, size: number): Promise<Blob> {
  const dir = mkdtempSync(join(tmpdir(), 'canopy-peer-upd-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const data = randomBytes(size);
  writeFileSync(join(dir, 'blob.bin'), data);
  const manifest = await buildManifest(join(dir, 'blob.bin'), { chunkSize: CS });
  return { data, manifest, id: await manifestId(manifest) };
}

function chunkOf(blob: Blob, i: number): Buffer {
  const { offset, length } = chunkRange(blob.manifest, i);
  return blob.data.subarray(offset, offset + length);
}

function recordingLog(): PeerLog & { events: (event: string) => Record<string, unknown>[] } {
  const lines: { event: string; fields: Record<string, unknown> }[] = [];
  const at = (fields: object, event: string) => {
    lines.push({ event, fields: fields as Record<string, unknown> });
  };
  return {
    events: (event) => lines.filter((l) => l.event === event).map((l) => l.fields),
    debug: at,
    info: at,
    warn: at,
  };
}

/**
 * web01's peer server: every agent may fetch `blob`, served from memory.
 * `revoked` is the set isRevoked() reads, as the agent keeps it.
 */
async function startServer(t: TestContext, blob: Blob, serve: Partial<PeerServerOptions> = {}) {
  const log = recordingLog();
  const revoked = new Set<string>();
  const server = new PeerServer({
    identity: web01,
    caPem: ca.certPem,
    authorize: (_peer, id) => (id === blob.id ? blob.manifest : undefined),
    isRevoked: (serial) => revoked.has(normalizeSerial(serial)),
    source: async (_id, index) => chunkOf(blob, index),
    log,
    ...serve,
  });
  const { port } = await server.listen(0, '127.0.0.1');
  t.after(() => server.close());
  return { server, port, log, revoked };
}

async function connect(
  t: TestContext,
  port: number,
  identity: CertAndKey,
  options: Partial<PeerClientOptions> = {},
): Promise<PeerClient> {
  const client = await PeerClient.connect({
    host: '127.0.0.1',
    port,
    peer: 'web01',
    identity,
    caPem: ca.certPem,
    stallTimeoutMs: 30_000,
    ...options,
  });
  t.after(() => client.close());
  return client;
}

function fetch0(client: PeerClient, blob: Blob): Promise<Buffer> {
  return client.fetch(blob.id, 0, blob.manifest.chunks[0] as string);
}

function assertCanopy(code: string, ...patterns: RegExp[]) {
  return (err: unknown) => {
    assert.ok(isCanopyError(err), `not a CanopyError: ${String(err)}`);
    assert.equal(err.code, code, err.message);
    for (const p of patterns) assert.match(err.message, p);
    return true;
  };
}

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The serial of the certificate the server presents to a new TLS client (web03's certificate). */
async function presentedSerial(port: number, options: tls.ConnectionOptions = {}): Promise<string> {
  const socket = tls.connect({
    host: '127.0.0.1',
    port,
    key: web03.keyPem,
    cert: web03.certPem,
    ca: [ca.certPem],
    servername: agentSan('web01'),
    ALPNProtocols: [PEER_ALPN],
    checkServerIdentity: () => undefined,
    ...options,
  });
  try {
    await once(socket, 'secureConnect');
    const cert = socket.getPeerX509Certificate();
    assert.ok(cert, 'the server presented no certificate');
    return normalizeSerial(cert.serialNumber);
  } finally {
    socket.destroy();
  }
}

// --- revocation while connected

test('dropRevoked hangs up an idle connection of a newly revoked agent with AGENT_REVOKED, and only that one', async (t) => {
  const blob = await makeBlob(t, 2 * CS);
  const { server, port, log, revoked } = await startServer(t, blob);
  const x = await connect(t, port, web02);
  const other = await connect(t, port, web03);
  assert.deepEqual(await fetch0(x, blob), chunkOf(blob, 0));
  assert.deepEqual(await fetch0(other, blob), chunkOf(blob, 0));
  assert.equal(server.connectionCount, 2);

  // Nothing revoked yet: nothing is dropped.
  assert.equal(await server.dropRevoked(), 0);
  revoked.add(normalizeSerial(web02.serial));
  assert.equal(await server.dropRevoked(), 1);

  // web02 sends nothing: the server's frame alone tells it, long before any idle timeout.
  await until(() => x.closed, 'the revoked connection to close');
  await assert.rejects(
    fetch0(x, blob),
    assertCanopy(PEER_CODES.revoked, /peer web01/, new RegExp(`serial ${web02.serial}`), /join it again/),
  );
  assert.deepEqual(
    log.events('transfer.peer.revoked_closed').map((f) => f.peer),
    ['web02'],
  );
  await until(() => server.connectionCount === 1, 'the server to forget the connection');

  // The other agent's connection serves on; a new connection of web02 is refused at once.
  assert.deepEqual(await other.fetch(blob.id, 1, blob.manifest.chunks[1] as string), chunkOf(blob, 1));
  await assert.rejects(
    (async () => fetch0(await connect(t, port, web02), blob))(),
    assertCanopy(PEER_CODES.revoked, /refuses agent web02/),
  );
  // Asking again drops nothing more.
  assert.equal(await server.dropRevoked(), 0);
});

test('dropRevoked fails a fetch in flight with AGENT_REVOKED and never sends its chunk', async (t) => {
  const blob = await makeBlob(t, 2 * CS);
  let release: () => void = () => {};
  const held = new Promise<void>((resolve) => {
    release = resolve;
  });
  t.after(() => release()); // before the server's own hook: close() waits for this read
  let reads = 0;
  const { server, port, revoked } = await startServer(t, blob, {
    // The chunk is "still being fetched" until the test releases it (a relay's long poll).
    source: async (_id, index) => {
      reads++;
      await held;
      return chunkOf(blob, index);
    },
  });
  const x = await connect(t, port, web02);
  const pending = fetch0(x, blob);
  await until(() => reads === 1, 'the server to start preparing the chunk');
  revoked.add(normalizeSerial(web02.serial));
  assert.equal(await server.dropRevoked(), 1);
  await assert.rejects(pending, assertCanopy(PEER_CODES.revoked, /refuses agent web02/));
  release();
  await until(() => server.connectionCount === 0, 'the connection to end');
  assert.equal(server.stats.chunksServed, 0);
});

test('dropRevoked cuts an rsync pull of a newly revoked agent before rsync starts', async (t) => {
  const blob = await makeBlob(t, CS);
  let asked = 0;
  let release: (v: { root: string } | undefined) => void = () => {};
  const { server, port, revoked, log } = await startServer(t, blob, {
    // Held open: the connection is a stream connection, its checks not finished.
    authorizeTree: () => {
      asked++;
      return new Promise((resolve) => {
        release = resolve;
      });
    },
  });
  const socket = tls.connect({
    host: '127.0.0.1',
    port,
    key: web02.keyPem,
    cert: web02.certPem,
    ca: [ca.certPem],
    servername: agentSan('web01'),
    ALPNProtocols: [PEER_ALPN],
    checkServerIdentity: () => undefined,
  });
  t.after(() => socket.destroy());
  socket.on('error', () => {});
  socket.resume();
  await once(socket, 'secureConnect');
  socket.write(
    encodeFrame({
      type: 'rsync',
      id: 1,
      tree: 'tree-1',
      args: ['rsync', '--server', '--sender', '-logDtprce.LsfxCIvu', '.', 'sub/'],
    }),
  );
  await until(() => asked === 1, 'the tree to be asked for');
  revoked.add(normalizeSerial(web02.serial));
  assert.equal(await server.dropRevoked(), 1);
  await until(() => socket.closed, 'the server to hang up');
  release({ root: tmpdir() });
  await until(() => server.connectionCount === 0, 'the connection to end');
  assert.equal(server.rsyncStats.started, 0);
  assert.equal(log.events('transfer.peer.revoked_closed').length, 1);
});

// --- a renewed certificate

test('setCredentials: new connections get the renewed certificate, an open one serves on with the old', async (t) => {
  const blob = await makeBlob(t, 2 * CS);
  const { server, port } = await startServer(t, blob);
  const before = await connect(t, port, web02);
  assert.deepEqual(await fetch0(before, blob), chunkOf(blob, 0));
  assert.equal(await presentedSerial(port), normalizeSerial(web01.serial));

  server.setCredentials(web01renewed);

  assert.equal(await presentedSerial(port), normalizeSerial(web01renewed.serial));
  // The connection opened before the swap is not dropped and still serves.
  assert.deepEqual(await before.fetch(blob.id, 1, blob.manifest.chunks[1] as string), chunkOf(blob, 1));
  assert.equal(before.closed, false);
  // A new client of the fleet CA is served (the client CA survived the swap).
  const after = await connect(t, port, web02);
  assert.deepEqual(await fetch0(after, blob), chunkOf(blob, 0));
  // Still TLS 1.3 only: Node's setSecureContext resets every option it is not given.
  await assert.rejects(presentedSerial(port, { maxVersion: 'TLSv1.2' }));
  // A certificate of another CA is still refused.
  const stranger = await agentCert(otherCa, 'web02');
  await assert.rejects(
    (async () => fetch0(await connect(t, port, stranger), blob))(),
    assertCanopy(PEER_CODES.lost),
  );
});

test('setCredentials refuses a certificate of another agent or a key that does not match, and keeps the old', async (t) => {
  const blob = await makeBlob(t, CS);
  const { server, port } = await startServer(t, blob);
  assert.throws(
    () => server.setCredentials(web03),
    assertCanopy('PKI_WRONG_PEER', /peer server of web01/, /for web03/),
  );
  assert.throws(
    () => server.setCredentials({ certPem: web01renewed.certPem, keyPem: web03.keyPem }),
    assertCanopy('PKI_BAD_CERT', /peer server of web01/, /keeps serving with its current one/),
  );
  assert.throws(
    () => server.setCredentials({ certPem: 'not a certificate', keyPem: web01renewed.keyPem }),
    assertCanopy('PKI_BAD_CERT'),
  );
  assert.equal(await presentedSerial(port), normalizeSerial(web01.serial));
  assert.deepEqual(await fetch0(await connect(t, port, web02), blob), chunkOf(blob, 0));
});

test("setCredentials with another CA bundle admits that CA's agents and no longer the old one's", async (t) => {
  const blob = await makeBlob(t, CS);
  const { server, port } = await startServer(t, blob);
  const rotated = await agentCert(otherCa, 'web02');
  server.setCredentials(web01renewed, otherCa.certPem);
  // The server's own certificate is still the fleet CA's: clients verify it against that.
  assert.deepEqual(await fetch0(await connect(t, port, rotated), blob), chunkOf(blob, 0));
  await assert.rejects(
    (async () => fetch0(await connect(t, port, web02), blob))(),
    assertCanopy(PEER_CODES.lost),
  );
  assert.equal(certInfo(web01renewed.certPem).commonName, 'web01');
});
