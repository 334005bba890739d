/**
 * The peer channel on loopback: a real PeerServer and PeerClient with
 * certificates of a CA made here, a real ChunkStore on a temp directory, and
 * test-only servers and raw TLS clients for the misbehaving peers (a server
 * that never answers, a client that sends garbage or never reads). Every
 * refusal is checked on both sides: what the client is told and that the
 * server served nothing.
 */
import 'reflect-metadata';

import assert from 'node:assert/strict';
import { KeyObject, randomBytes, webcrypto } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import tls from 'node:tls';
import * as x509 from '@peculiar/x509';
import type { Logger } from 'pino';
import { isCanopyError } from '../errors/index.js';
import {
  agentSan,
  type CertAndKey,
  COORDINATOR_SAN,
  certInfo,
  createCa,
  createKeyAndCsr,
  issueServerCert,
  normalizeSerial,
  signCsr,
} from '../pki/index.js';
import { ChunkPool } from './chunk-pool.js';
import { ChunkStore } from './chunk-store.js';
import {
  buildManifest,
  chunkRange,
  encodeManifest,
  type Manifest,
  manifestId,
  parseManifest,
} from './manifest.js';
import { PeerClient, type PeerClientOptions } from './peer-client.js';
import { type PeerLog, PeerServer, type PeerServerOptions } from './peer-server.js';
import {
  decodeReply,
  encodeFrame,
  FrameDecoder,
  PEER_ALPN,
  PEER_CODES,
  type PeerReply,
} from './peer-wire.js';
import { RateLimiter } from './rate-limit.js';

x509.cryptoProvider.set(webcrypto);

const HOUR = 3_600_000;
const CS = 64 * 1024;
const ECDSA = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

// A pino logger must fit where a PeerLog is asked for (checked by tsc).
const _pinoFits = (logger: Logger): PeerLog => logger;

async function agentCert(ca: CertAndKey, name: string): Promise<CertAndKey & { serial: string }> {
  const { keyPem, csrPem } = await createKeyAndCsr(name);
  const { certPem, serial } = await signCsr(ca, csrPem, { name, ttlMs: HOUR });
  return { certPem, keyPem, serial };
}

/**
 * A certificate of the fleet CA for client auth whose only name is the
 * coordinator's: valid for TLS, but not an agent. src/pki never issues one
 * (signCsr always writes an agent SAN), so it is made here.
 */
async function nonAgentClientCert(ca: CertAndKey): Promise<CertAndKey> {
  const caCert = new x509.X509Certificate(ca.certPem);
  const der = Buffer.from(ca.keyPem.replace(/-----[A-Z ]+-----|\s+/g, ''), 'base64');
  const caKey = await webcrypto.subtle.importKey('pkcs8', der, ECDSA, false, ['sign']);
  const keys = await webcrypto.subtle.generateKey(ECDSA, true, ['sign', 'verify']);
  const ski = caCert.getExtension(x509.SubjectKeyIdentifierExtension);
  assert.ok(ski);
  const cert = await x509.X509CertificateGenerator.create({
    subject: `CN=${COORDINATOR_SAN}`,
    issuer: caCert.subjectName,
    publicKey: keys.publicKey,
    signingKey: caKey,
    serialNumber: `4${randomBytes(15).toString('hex').slice(1)}`,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + HOUR),
    signingAlgorithm: ECDSA,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension([{ type: 'dns', value: COORDINATOR_SAN }]),
      new x509.AuthorityKeyIdentifierExtension(ski.keyId),
    ],
  });
  const keyPem = KeyObject.from(keys.privateKey).export({ type: 'pkcs8', format: 'pem' }).toString();
  return { certPem: `${cert.toString('pem')}\n`, keyPem };
}

const ca = await createCa({ commonName: 'canopy test CA' });
const otherCa = await createCa({ commonName: 'canopy test CA' }); // same name, other key
const web01 = await agentCert(ca, 'web01'); // serves
const web02 = await agentCert(ca, 'web02'); // fetches
const web03 = await agentCert(ca, 'web03');

// --- fixtures

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'canopy-peer-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

interface Blob {
  path: string;
  data: Buffer;
  manifest: Manifest;
  id: string;
}

async function makeBlob(t: TestContext, size: number, chunkSize = CS): Promise<Blob> {
  const path = join(tempDir(t), 'blob.bin');
  const data = randomBytes(size);
  writeFileSync(path, data);
  const manifest = await buildManifest(path, { chunkSize });
  return { path, data, manifest, id: await manifestId(manifest) };
}

function chunkOf(blob: Blob, i: number): Buffer {
  const { offset, length } = chunkRange(blob.manifest, i);
  return blob.data.subarray(offset, offset + length);
}

async function storeWith(t: TestContext, blob: Blob, indexes?: number[]): Promise<ChunkStore> {
  const store = await ChunkStore.open(tempDir(t), { quotaBytes: 1 << 30 });
  t.after(() => store.close());
  for (const i of indexes ?? blob.manifest.chunks.map((_, k) => k)) {
    await store.put(blob.manifest.chunks[i] as string, chunkOf(blob, i));
  }
  return store;
}

interface LogLine {
  level: string;
  event: string;
  fields: Record<string, unknown>;
}

function recordingLog(): PeerLog & { lines: LogLine[]; events: (event: string) => LogLine[] } {
  const lines: LogLine[] = [];
  const at = (level: string) => (fields: object, event: string) => {
    lines.push({ level, event, fields: fields as Record<string, unknown> });
  };
  return {
    lines,
    events: (event) => lines.filter((l) => l.event === event),
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
  };
}

interface Harness {
  server: PeerServer;
  port: number;
  log: ReturnType<typeof recordingLog>;
  /** (peer, blob) pairs authorize() was asked about. */
  asked: string[];
}

/**
 * web01's peer server: web02 may fetch the blobs in `allowed`. `serve`
 * overrides any option.
 */
async function startServer(
  t: TestContext,
  allowed: Blob[],
  serve: Partial<PeerServerOptions> = {},
): Promise<Harness> {
  const log = recordingLog();
  const asked: string[] = [];
  const server = new PeerServer({
    identity: web01,
    caPem: ca.certPem,
    authorize: (peer, blobId) => {
      asked.push(`${peer} ${blobId}`);
      return peer === 'web02' ? allowed.find((b) => b.id === blobId)?.manifest : undefined;
    },
    isRevoked: () => false,
    log,
    ...serve,
  });
  const { port } = await server.listen(0, '127.0.0.1');
  t.after(() => server.close());
  return { server, port, log, asked };
}

async function connect(
  t: TestContext,
  port: number,
  options: Partial<PeerClientOptions> = {},
): Promise<PeerClient> {
  const client = await PeerClient.connect({
    host: '127.0.0.1',
    port,
    peer: 'web01',
    identity: web02,
    caPem: ca.certPem,
    ...options,
  });
  t.after(() => client.close());
  return client;
}

/** Connects and fetches one chunk; for identities the server refuses (which may fail either step). */
async function connectAndFetch(
  t: TestContext,
  port: number,
  blob: Blob,
  options: Partial<PeerClientOptions>,
): Promise<Buffer> {
  const client = await connect(t, port, options);
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

/** Polls `cond` until it holds, failing after `ms`. */
async function until(cond: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// --- serving

test('a client fetches several chunks pipelined on one connection and each matches its digest', async (t) => {
  const blob = await makeBlob(t, 8 * CS + 1234);
  const store = await storeWith(t, blob);
  const { server, port, log } = await startServer(t, [blob], { store });
  const client = await connect(t, port);
  const indexes = blob.manifest.chunks.map((_, i) => i).reverse();
  const fetches = indexes.map((i) => client.fetch(blob.id, i, blob.manifest.chunks[i] as string));
  // Every request is on the wire before any answer could have arrived: that is the pipelining.
  assert.equal(client.pendingCount, indexes.length);
  const chunks = await Promise.all(fetches);
  for (const [k, i] of indexes.entries()) assert.deepEqual(chunks[k], chunkOf(blob, i), `chunk ${i}`);
  assert.equal(chunks[0]?.length, 1234);
  assert.equal(server.connectionCount, 1);
  assert.equal(log.events('transfer.peer.served').length, indexes.length);
  assert.equal(client.pendingCount, 0);
});

test('chunks served from a pack reuse the connection buffers only after each is written, and all arrive intact', async (t) => {
  // readAhead 2: answers are read ahead of the one being written, so a buffer recycled while its
  // answer still waits or is being written (1 MiB chunks go out in slices) is overwritten by a later
  // read, and the client's digest check fails.
  const blob = await makeBlob(t, 12 * 1024 * 1024 + 777, 1024 * 1024);
  const store = await ChunkStore.open(tempDir(t), { quotaBytes: 1 << 30 });
  t.after(() => store.close());
  const pack = await store.openPack('test', blob.id, blob.manifest);
  for (let i = 0; i < blob.manifest.chunks.length; i++) await store.putInPack(pack, i, chunkOf(blob, i));
  const lent = new Set<Buffer>();
  const get = store.get.bind(store);
  store.get = (digest, options) => {
    if (options?.into) lent.add(options.into);
    return get(digest, options);
  };
  const { server, port } = await startServer(t, [blob], { store, readAhead: 2 });
  const client = await connect(t, port);
  for (let round = 0; round < 2; round++) {
    const fetches = blob.manifest.chunks.map((d, i) => client.fetch(blob.id, i, d));
    const chunks = await Promise.all(fetches);
    for (const [i, c] of chunks.entries())
      assert.deepEqual(c, chunkOf(blob, i), `round ${round}, chunk ${i}`);
  }
  assert.equal(server.stats.chunksServed, 2 * blob.manifest.chunks.length);
  // readAhead 2 + the one being written: three buffers at most, for 26 chunks read from the pack.
  assert.ok(lent.size >= 1 && lent.size <= 3, `${lent.size} buffers lent for 26 reads`);
});

test("a blob's manifest is served as its canonical bytes, on the same terms as its chunks, or once awaited", async (t) => {
  const blob = await makeBlob(t, 3 * CS + 5);
  const other = await makeBlob(t, CS);
  let late: Manifest | undefined;
  const { port, log } = await startServer(t, [blob], {
    awaitManifest: async (_peer, id) => {
      await new Promise((resolve) => setTimeout(resolve, 100));
      return id === other.id ? late : undefined;
    },
  });
  const client = await connect(t, port);
  const bytes = await client.fetchManifest(blob.id);
  assert.equal(bytes.toString('utf8'), encodeManifest(blob.manifest));
  assert.deepEqual(await parseManifest(bytes.toString('utf8'), { id: blob.id }), blob.manifest);
  // Not authorized, and nothing awaited: refused naming the manifest; the connection carries on.
  await assert.rejects(
    client.fetchManifest(other.id),
    assertCanopy('TRANSFER_PEER_FORBIDDEN', /refuses the manifest of blob [0-9a-f]{64} to agent web02/),
  );
  assert.equal(log.events('transfer.peer.request_refused')[0]?.level, 'info');
  // A relay still getting it answers once it has it.
  late = other.manifest;
  assert.equal((await client.fetchManifest(other.id)).toString('utf8'), encodeManifest(other.manifest));
  assert.equal(client.closed, false);
});

test('a manifest whose bytes do not hash to the blob id is refused by the client', async (t) => {
  const blob = await makeBlob(t, 2 * CS);
  const forged = { ...blob.manifest, size: blob.manifest.size - 1 };
  const { port } = await startServer(t, [], { authorize: () => forged });
  const client = await connect(t, port);
  await assert.rejects(
    client.fetchManifest(blob.id),
    assertCanopy(
      'TRANSFER_DIGEST_MISMATCH',
      /^the manifest of blob [0-9a-f]{64} from peer web01 .* hashes to /,
    ),
  );
});

test('a seed serves chunks from its source callback when it has no store', async (t) => {
  const blob = await makeBlob(t, 3 * CS);
  const reads: number[] = [];
  const { port } = await startServer(t, [blob], {
    source: async (blobId, index, manifest) => {
      assert.equal(blobId, blob.id);
      reads.push(index);
      const { offset, length } = chunkRange(manifest, index);
      const fh = await open(blob.path, 'r');
      try {
        const buf = Buffer.alloc(length);
        await fh.read(buf, 0, length, offset);
        return buf;
      } finally {
        await fh.close();
      }
    },
  });
  const client = await connect(t, port);
  assert.deepEqual(await client.fetch(blob.id, 2, blob.manifest.chunks[2] as string), chunkOf(blob, 2));
  assert.deepEqual(reads, [2]);
});

// --- who may connect

test('the server refuses a client certificate from another CA and serves nothing', async (t) => {
  const blob = await makeBlob(t, CS);
  const { server, port, log, asked } = await startServer(t, [blob], { store: await storeWith(t, blob) });
  const stranger = await agentCert(otherCa, 'web02');
  // Node's server hangs up without a TLS alert, so the client can only suggest why.
  await assert.rejects(
    connectAndFetch(t, port, blob, { identity: stranger }),
    assertCanopy(PEER_CODES.lost, /peer web01/, /may have refused this agent's certificate/),
  );
  await until(() => log.events('transfer.peer.tls_refused').length > 0, 5000, 'the refusal log');
  assert.equal(log.events('transfer.peer.tls_refused')[0]?.fields.reason, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE');
  assert.deepEqual(asked, []);
  assert.equal(server.stats.chunksServed, 0);
  assert.equal(server.stats.connectionsRefused, 1);
});

test('the client hangs up on a server whose certificate serial it knows revoked, and sends nothing', async (t) => {
  const blob = await makeBlob(t, CS);
  const { port, asked } = await startServer(t, [blob], { store: await storeWith(t, blob) });
  const revoked = normalizeSerial(web01.serial);
  await assert.rejects(
    connect(t, port, { isRevoked: (serial) => serial === revoked }),
    assertCanopy(
      'AGENT_REVOKED',
      /peer web01 \(127\.0\.0\.1:\d+\) presented a revoked certificate/,
      new RegExp(`serial ${revoked}`),
    ),
  );
  assert.deepEqual(asked, []);
  // Another revoked serial does not matter.
  const client = await connect(t, port, { isRevoked: (serial) => serial === normalizeSerial(web03.serial) });
  assert.deepEqual(await client.fetch(blob.id, 0, blob.manifest.chunks[0] as string), chunkOf(blob, 0));
});

test("the coordinator's server certificate is refused as a client certificate", async (t) => {
  const blob = await makeBlob(t, CS);
  const { port, log, asked } = await startServer(t, [blob], { store: await storeWith(t, blob) });
  const coordinator = await issueServerCert(ca, { commonName: COORDINATOR_SAN });
  await assert.rejects(
    connectAndFetch(t, port, blob, { identity: coordinator }),
    assertCanopy(PEER_CODES.lost, /peer web01/, /may have refused this agent's certificate/),
  );
  await until(() => log.events('transfer.peer.tls_refused').length > 0, 5000, 'the refusal log');
  assert.equal(log.events('transfer.peer.tls_refused')[0]?.fields.reason, 'INVALID_PURPOSE');
  assert.deepEqual(asked, []);
});

test('a client certificate of the fleet CA that names no agent is refused with an error frame', async (t) => {
  const blob = await makeBlob(t, CS);
  const { server, port, log, asked } = await startServer(t, [blob], { store: await storeWith(t, blob) });
  const notAgent = await nonAgentClientCert(ca);
  await assert.rejects(
    connectAndFetch(t, port, blob, { identity: notAgent }),
    assertCanopy(PEER_CODES.notAnAgent, /web01 serves chunks to agents only/, /DNS coordinator\.canopy/),
  );
  assert.deepEqual(asked, []);
  const [refused] = log.events('transfer.peer.refused');
  assert.equal(refused?.level, 'warn');
  assert.equal(refused?.fields.code, PEER_CODES.notAnAgent);
  assert.equal(server.stats.chunksServed, 0);
});

test('a client whose certificate serial is revoked is refused, naming the serial', async (t) => {
  const blob = await makeBlob(t, CS);
  const seen: string[] = [];
  const { port, log, asked } = await startServer(t, [blob], {
    store: await storeWith(t, blob),
    isRevoked: (serial) => {
      seen.push(serial);
      return serial === web02.serial;
    },
  });
  await assert.rejects(
    connectAndFetch(t, port, blob, {}),
    assertCanopy('AGENT_REVOKED', new RegExp(`serial ${web02.serial}`), /refuses agent web02/),
  );
  assert.deepEqual(seen, [certInfo(web02.certPem).serial]);
  assert.deepEqual(asked, []);
  assert.equal(log.events('transfer.peer.refused').length, 1);
  // Another agent's certificate is still served.
  const other = await connect(t, port, { identity: web03 });
  await assert.rejects(
    other.fetch(blob.id, 0, blob.manifest.chunks[0] as string),
    assertCanopy(PEER_CODES.forbidden, /to agent web03/),
  );
});

test('the client refuses a server whose certificate names another agent, and sends nothing', async (t) => {
  const blob = await makeBlob(t, CS);
  const { port, asked } = await startServer(t, [blob], { identity: web03, store: await storeWith(t, blob) });
  await assert.rejects(
    connect(t, port, { peer: 'web01' }),
    assertCanopy('PKI_WRONG_PEER', /web01\.agent\.canopy/, /DNS:web03\.agent\.canopy/),
  );
  assert.deepEqual(asked, []);
});

test('the client refuses a server certificate from another CA', async (t) => {
  const blob = await makeBlob(t, CS);
  const impostor = await agentCert(otherCa, 'web01');
  const { port } = await startServer(t, [blob], { identity: impostor, store: await storeWith(t, blob) });
  await assert.rejects(
    connect(t, port),
    assertCanopy('PKI_WRONG_PEER', /peer web01/, /fleet CA did not issue/),
  );
});

// --- what is served

test('a blob not authorized is refused naming it, and the same connection then serves an authorized one', async (t) => {
  const blob = await makeBlob(t, 2 * CS);
  const secret = await makeBlob(t, 2 * CS);
  const store = await storeWith(t, blob);
  for (const [i, d] of secret.manifest.chunks.entries()) await store.put(d, chunkOf(secret, i));
  const { server, port, log } = await startServer(t, [blob], { store });
  const client = await connect(t, port);
  await assert.rejects(
    client.fetch(secret.id, 1, secret.manifest.chunks[1] as string),
    assertCanopy(PEER_CODES.forbidden, new RegExp(`chunk 1 of blob ${secret.id}`), /peer web01/),
  );
  assert.equal(client.closed, false);
  assert.deepEqual(await client.fetch(blob.id, 1, blob.manifest.chunks[1] as string), chunkOf(blob, 1));
  const [refused] = log.events('transfer.peer.request_refused');
  assert.equal(refused?.fields.blob, secret.id);
  assert.equal(refused?.fields.peer, 'web02');
  assert.equal(log.events('transfer.peer.served').length, 1);
  assert.deepEqual(server.stats, {
    chunksServed: 1,
    bytesServed: CS,
    requestsRefused: 1,
    connectionsRefused: 0,
  });
});

test('a chunk the server lacks fails with TRANSFER_CHUNK_MISSING naming the chunk', async (t) => {
  const blob = await makeBlob(t, 3 * CS);
  const { port } = await startServer(t, [blob], { store: await storeWith(t, blob, [0, 2]) });
  const client = await connect(t, port);
  await assert.rejects(
    client.fetch(blob.id, 1, blob.manifest.chunks[1] as string),
    assertCanopy(
      'TRANSFER_CHUNK_MISSING',
      new RegExp(`chunk 1 \\(${blob.manifest.chunks[1]}\\) of blob ${blob.id}`),
    ),
  );
  await assert.rejects(
    client.fetch(blob.id, 3, blob.manifest.chunks[1] as string),
    assertCanopy('TRANSFER_CHUNK_MISSING', /has 3 chunks, so there is no chunk 3/),
  );
  assert.deepEqual(await client.fetch(blob.id, 2, blob.manifest.chunks[2] as string), chunkOf(blob, 2));
});

test('a chunk damaged on the server disk fails with TRANSFER_DIGEST_MISMATCH naming the peer', async (t) => {
  const blob = await makeBlob(t, 3 * CS);
  const store = await storeWith(t, blob);
  const digest = blob.manifest.chunks[1] as string;
  const file = join(store.dir, 'chunks', digest.slice(0, 2), digest);
  const bytes = readFileSync(file);
  bytes[100] = (bytes[100] ?? 0) ^ 0xff; // same length: only the digest can tell
  writeFileSync(file, bytes);
  const { port } = await startServer(t, [blob], { store });
  const pool = new ChunkPool();
  const client = await connect(t, port, { pool });
  await assert.rejects(client.fetch(blob.id, 1, digest), (err) => {
    assertCanopy(
      'TRANSFER_DIGEST_MISMATCH',
      /from peer web01/,
      new RegExp(`chunk 1 of blob ${blob.id}`),
    )(err);
    assert.ok(isCanopyError(err));
    assert.equal(err.subject.peer, 'web01');
    assert.equal(err.subject.expected, digest);
    return true;
  });
  // The bad chunk's pooled buffer went back (no caller holds it); the next fetch gets that buffer.
  assert.deepEqual(pool.stats, { allocated: 1, reused: 0, freeBytes: CS });
  // The connection is fine; only that chunk was bad.
  const good = await client.fetch(blob.id, 2, blob.manifest.chunks[2] as string);
  assert.deepEqual(good, chunkOf(blob, 2));
  assert.deepEqual(pool.stats, { allocated: 1, reused: 1, freeBytes: 0 }, "a good chunk is the caller's");
});

test('an answer of another length than the manifest gives fails without waiting for its bytes', async (t) => {
  const blob = await makeBlob(t, 2 * CS);
  const { port } = await startServer(t, [blob], { store: await storeWith(t, blob) });
  const client = await connect(t, port);
  await assert.rejects(
    client.fetch(blob.id, 0, blob.manifest.chunks[0] as string, { length: CS - 1 }),
    assertCanopy('TRANSFER_DIGEST_MISMATCH', /65536 bytes, not 65535/),
  );
  assert.deepEqual(
    await client.fetch(blob.id, 1, blob.manifest.chunks[1] as string, { length: CS }),
    chunkOf(blob, 1),
  );
});

// --- client failure handling

/**
 * A TLS server with web01's certificate that completes handshakes, reads, and never answers
 * (with `onData`, answers what that writes back, e.g. half a chunk).
 */
async function silentServer(
  t: TestContext,
  onData?: (s: tls.TLSSocket, d: Buffer) => void,
): Promise<{ port: number; received: () => number }> {
  let received = 0;
  const sockets = new Set<Socket>();
  const server = tls.createServer({
    key: web01.keyPem,
    cert: web01.certPem,
    ca: [ca.certPem],
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.3',
    ALPNProtocols: [PEER_ALPN],
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('secureConnection', (s: tls.TLSSocket) => {
    s.on('data', (d: Buffer) => {
      received += d.length;
      onData?.(s, d);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { port: (server.address() as AddressInfo).port, received: () => received };
}

test('a server that never answers fails every pending fetch after the stall timeout, naming the peer', {
  timeout: 30_000,
}, async (t) => {
  const blob = await makeBlob(t, 3 * CS);
  const { port, received } = await silentServer(t);
  const client = await connect(t, port, { stallTimeoutMs: 300 });
  const started = Date.now();
  const fetches = [0, 1, 2].map((i) => client.fetch(blob.id, i, blob.manifest.chunks[i] as string));
  for (const f of fetches) {
    await assert.rejects(f, assertCanopy(PEER_CODES.stalled, /peer web01/, /sent nothing for 300 ms/));
  }
  assert.ok(Date.now() - started < 10_000, 'stall detected in time');
  assert.ok(received() > 0, 'the requests were sent');
  assert.equal(client.closed, true);
  await assert.rejects(
    client.fetch(blob.id, 0, blob.manifest.chunks[0] as string),
    assertCanopy(PEER_CODES.stalled),
  );
});

test('an idle client is not stalled: the timeout runs only while fetches are pending', async (t) => {
  const blob = await makeBlob(t, CS);
  const { port } = await startServer(t, [blob], { store: await storeWith(t, blob) });
  const client = await connect(t, port, { stallTimeoutMs: 50 });
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(client.closed, false);
  assert.deepEqual(await client.fetch(blob.id, 0, blob.manifest.chunks[0] as string), chunkOf(blob, 0));
});

test('an aborted fetch rejects with the reason and the connection serves the next one', async (t) => {
  const blob = await makeBlob(t, 3 * CS);
  const { port } = await startServer(t, [blob], { store: await storeWith(t, blob) });
  const client = await connect(t, port);
  const ac = new AbortController();
  const aborted = client.fetch(blob.id, 0, blob.manifest.chunks[0] as string, { signal: ac.signal });
  ac.abort(new Error('re-parented'));
  await assert.rejects(aborted, /re-parented/);
  await assert.rejects(
    client.fetch(blob.id, 1, blob.manifest.chunks[1] as string, {
      signal: AbortSignal.abort(new Error('early')),
    }),
    /early/,
  );
  assert.deepEqual(await client.fetch(blob.id, 2, blob.manifest.chunks[2] as string), chunkOf(blob, 2));
  assert.equal(client.pendingCount, 0);
});

test('a pooled chunk buffer goes back when its fetch is aborted or the connection closes mid-chunk', async (t) => {
  const blob = await makeBlob(t, CS);
  // Answers request 1 with a frame announcing the whole chunk and half its bytes; `rest` sends the other half.
  let rest = () => {};
  const { port } = await silentServer(t, (s) => {
    s.write(Buffer.concat([encodeFrame({ type: 'chunk', id: 1 }, CS), chunkOf(blob, 0).subarray(0, CS / 2)]));
    rest = () => s.write(chunkOf(blob, 0).subarray(CS / 2));
  });
  const digest = blob.manifest.chunks[0] as string;
  const pools = new Map<PeerClient, ChunkPool>();
  const pool0 = (client: PeerClient) => pools.get(client)?.stats.freeBytes;
  const half = async (
    run: (client: PeerClient, fetch: Promise<Buffer>, ac: AbortController) => Promise<void>,
  ) => {
    const pool = new ChunkPool();
    const client = await connect(t, port, { pool, stallTimeoutMs: 60_000 });
    pools.set(client, pool);
    const ac = new AbortController();
    const fetch = client.fetch(blob.id, 0, digest, { signal: ac.signal });
    await until(() => pool.stats.allocated === 1, 5000, 'the frame header (the buffer taken)');
    assert.equal(pool.stats.freeBytes, 0);
    await run(client, fetch, ac);
    assert.deepEqual(pool.stats, { allocated: 1, reused: 0, freeBytes: CS });
  };
  await half(async (client, fetch) => {
    await client.close();
    await assert.rejects(fetch, assertCanopy(PEER_CODES.lost, /closed by this agent/));
  });
  // Aborted mid-chunk, the connection is kept and the frame's other bytes still come: the buffer
  // goes back when the frame ends.
  await half(async (client, fetch, ac) => {
    ac.abort(new Error('re-parented'));
    await assert.rejects(fetch, /re-parented/);
    assert.equal(pool0(client), 0, 'given back before its frame ended');
    rest();
    await until(() => pool0(client) === CS, 5000, 'the rest of the frame');
    assert.equal(client.closed, false);
  });
});

test('close() fails pending fetches naming the peer, and is idempotent', async (t) => {
  const blob = await makeBlob(t, CS);
  const { port } = await silentServer(t);
  const client = await connect(t, port, { stallTimeoutMs: 60_000 });
  const pending = client.fetch(blob.id, 0, blob.manifest.chunks[0] as string);
  const [a, b] = [client.close(), client.close()];
  await assert.rejects(pending, assertCanopy(PEER_CODES.lost, /peer web01/, /closed by this agent/));
  await Promise.all([a, b]);
  assert.equal(client.closed, true);
});

test('the server closing fails the client pending fetches, and a dead port fails connect naming the peer', async (t) => {
  const blob = await makeBlob(t, CS);
  const { server, port } = await startServer(t, [], { store: await storeWith(t, blob) });
  const client = await connect(t, port);
  await until(() => server.connectionCount === 1, 5000, 'the connection');
  await server.close();
  await server.close();
  await assert.rejects(
    client.fetch(blob.id, 0, blob.manifest.chunks[0] as string),
    assertCanopy(PEER_CODES.lost),
  );
  await assert.rejects(connect(t, port), assertCanopy(PEER_CODES.lost, /cannot reach peer web01/));
});

// --- malformed input and backpressure

/** A raw TLS connection to the peer server with web02's certificate (no canopy framing on top). */
function dialRaw(port: number, alpn: string[] = [PEER_ALPN]): tls.TLSSocket {
  return tls.connect({
    host: '127.0.0.1',
    port,
    key: web02.keyPem,
    cert: web02.certPem,
    ca: [ca.certPem],
    servername: agentSan('web01'),
    checkServerIdentity: () => undefined,
    ALPNProtocols: alpn,
  });
}

/** A raw TLS client with web02's certificate: writes `bytes`, returns the frames received until the server hangs up. */
async function rawExchange(
  port: number,
  bytes: Buffer,
  alpn: string[] = [PEER_ALPN],
): Promise<{ frames: PeerReply[]; error?: Error }> {
  const socket = dialRaw(port, alpn);
  const frames: PeerReply[] = [];
  const decoder = new FrameDecoder(
    decodeReply,
    { bytes: 1 << 20, what: 'x' },
    { onHeader: (m) => frames.push(m), onPayload: () => {}, onFrameEnd: () => {} },
  );
  let error: Error | undefined;
  socket.on('data', (d: Buffer) => decoder.push(d));
  socket.on('error', (err) => {
    error = err;
  });
  await once(socket, 'secureConnect');
  socket.write(bytes);
  await once(socket, 'close');
  return error ? { frames, error } : { frames };
}

function prefix(headerLength: number, payloadLength: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(headerLength, 0);
  b.writeUInt32BE(payloadLength, 4);
  return b;
}

test('malformed frames from a client get an error frame and a hang-up, and do not crash the server', async (t) => {
  const blob = await makeBlob(t, CS);
  const { port, log } = await startServer(t, [blob], { store: await storeWith(t, blob) });
  const good = encodeFrame({ type: 'get', id: 1, blob: blob.id, chunk: 0 });
  const json = (s: string) => Buffer.concat([prefix(Buffer.byteLength(s), 0), Buffer.from(s)]);
  const cases: [string, Buffer, RegExp][] = [
    ['huge header', prefix(0xffffffff, 0), /header of 4294967295 bytes/],
    ['request with a payload', prefix(24, 1 << 30), /requests carry no payload/],
    ['not JSON', json('{"type":"get",'), /not JSON/],
    ['unknown type', json('{"type":"put","id":1}'), /unknown message type "put"/],
    ['bad blob id', json('{"type":"get","id":1,"blob":"../../etc/passwd","chunk":0}'), /invalid at \/blob/],
    ['negative chunk', json(`{"type":"get","id":1,"blob":"${blob.id}","chunk":-1}`), /invalid at \/chunk/],
    ['garbage after a good frame', Buffer.concat([good, Buffer.from('GET / HTTP/1.1\r\n\r\n')]), /header of/],
  ];
  for (const [what, bytes, pattern] of cases) {
    const { frames } = await rawExchange(port, bytes);
    const last = frames.at(-1);
    assert.equal(last?.type, 'error', what);
    assert.equal(last?.type === 'error' && last.id, undefined, what);
    assert.equal(last?.type === 'error' && last.code, PEER_CODES.protocol, what);
    assert.match(last?.type === 'error' ? last.message : '', pattern, what);
  }
  assert.equal(log.events('transfer.peer.protocol_invalid').length, cases.length);
  // A client cut off mid-frame is just a closed connection.
  const cut = dialRaw(port);
  await once(cut, 'secureConnect');
  cut.end(good.subarray(0, 10));
  await once(cut, 'close');
  // The server still serves.
  const client = await connect(t, port);
  assert.deepEqual(await client.fetch(blob.id, 0, blob.manifest.chunks[0] as string), chunkOf(blob, 0));
});

test('a client without the peer ALPN protocol is refused with an error frame', async (t) => {
  const blob = await makeBlob(t, CS);
  const { port, asked } = await startServer(t, [blob], { store: await storeWith(t, blob) });
  const { frames } = await rawExchange(
    port,
    encodeFrame({ type: 'get', id: 1, blob: blob.id, chunk: 0 }),
    [],
  );
  assert.equal(frames.length, 1);
  assert.equal(frames[0]?.type === 'error' && frames[0].code, PEER_CODES.notAnAgent);
  assert.match(frames[0]?.type === 'error' ? frames[0].message : '', /canopy-peer\/1 only/);
  assert.deepEqual(asked, []);
});

test('the server reads no more requests than it answers while the client does not read', async (t) => {
  // Guards against a server that parses every request at once and queues answers in memory.
  const blob = await makeBlob(t, 4 << 20, 1 << 20);
  let reads = 0;
  const { port } = await startServer(t, [blob], {
    source: async (_blob, index) => {
      reads++;
      return chunkOf(blob, index);
    },
  });
  const socket = dialRaw(port);
  t.after(() => socket.destroy());
  await once(socket, 'secureConnect');
  const requests = 100;
  for (let id = 1; id <= requests; id++)
    socket.write(encodeFrame({ type: 'get', id, blob: blob.id, chunk: id % 4 }));
  // The client reads nothing: wait until the server stops reading chunks, then check how far it got.
  await until(() => reads > 0, 5000, 'the first read');
  let last = -1;
  await until(
    () => {
      const settled = reads === last;
      last = reads;
      return settled;
    },
    10_000,
    'the server to stop',
  );
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(reads < 40, `the server read ${reads} chunks of 1 MiB for a client that reads nothing`);
  // Now read: every request is answered, in full.
  let chunks = 0;
  const decoder = new FrameDecoder(
    decodeReply,
    { bytes: 1 << 20, what: 'x' },
    { onHeader: (m) => assert.equal(m.type, 'chunk'), onPayload: () => {}, onFrameEnd: () => chunks++ },
  );
  socket.on('data', (d: Buffer) => decoder.push(d));
  await until(() => chunks === requests, 30_000, 'every answer');
  assert.equal(reads, requests);
});

// --- rate limits

/** A fake clock whose sleep moves time and records the waits. */
function fakeClock() {
  let now = 0;
  const waits: number[] = [];
  return {
    now: () => now,
    waits,
    sleep: async (ms: number) => {
      waits.push(ms);
      now += ms;
    },
  };
}

test('the upload cap makes the server wait the token bucket time for what it sends', async (t) => {
  const blob = await makeBlob(t, 4 * CS);
  const clock = fakeClock();
  const limiter = new RateLimiter({
    bytesPerSecond: 1 << 20,
    burstBytes: CS,
    now: clock.now,
    sleep: clock.sleep,
  });
  const { port } = await startServer(t, [blob], { store: await storeWith(t, blob), limiter });
  const client = await connect(t, port);
  for (let i = 0; i < 4; i++) await client.fetch(blob.id, i, blob.manifest.chunks[i] as string);
  // 256 KiB through a 64 KiB burst at 1 MiB/s: 192 KiB of debt, 187.5 ms, paid in 64 KiB slices.
  // Each wait is rounded up to a whole millisecond.
  const total = clock.waits.reduce((a, b) => a + b, 0);
  assert.ok(total >= 187.5 && total <= 187.5 + clock.waits.length, `waited ${total} ms: ${clock.waits}`);
});

test('the download cap pauses reading for the token bucket time of what arrived', async (t) => {
  const blob = await makeBlob(t, 4 * CS);
  const clock = fakeClock();
  const limiter = new RateLimiter({
    bytesPerSecond: 1 << 20,
    burstBytes: CS,
    now: clock.now,
    sleep: clock.sleep,
  });
  const { port } = await startServer(t, [blob], { store: await storeWith(t, blob) });
  const client = await connect(t, port, { limiter });
  for (let i = 0; i < 4; i++) await client.fetch(blob.id, i, blob.manifest.chunks[i] as string);
  // At least the payloads' debt (187.5 ms); the frame headers add a few bytes more.
  const total = clock.waits.reduce((a, b) => a + b, 0);
  assert.ok(total >= 187.5 && total <= 188 + clock.waits.length, `waited ${total} ms: ${clock.waits}`);
});
