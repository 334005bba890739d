/**
 * An agent's connection to one peer agent, for fetching chunks (wire format:
 * peer-wire.ts). It owns one TLS socket and the requests in flight on it; it
 * never stores a chunk and never picks a peer (the caller does both, and
 * reports a peer whose chunk failed its digest).
 *
 * The server must present a certificate of the fleet CA naming the expected
 * agent (`<peer>.agent.canopy`), whatever address was dialled. fetch() sends
 * a request at once, so many chunks are in flight on one connection, and
 * answers are matched by id. A chunk's payload is copied once, into a buffer
 * of its announced size, and hashed (BLAKE3) as it streams in; it is handed
 * over only if it matches the digest the caller expects. So the client holds
 * at most one partly received chunk plus those the caller still holds.
 *
 * Failure: a connection that receives no byte for `stallTimeoutMs` while
 * requests are pending is destroyed, and every pending fetch fails naming the
 * peer. A refused request fails alone, and so does a chunk with the wrong
 * digest; the connection carries on. A malformed frame, a hang-up or a TLS
 * alert fails everything pending and closes the client.
 * Invariant: only socket events and fetch()/abort/close touch `pending`, all
 * on the event loop; a settled fetch is removed from `pending` first, so it
 * is settled once.
 */
import type net from 'node:net';
import tls from 'node:tls';
import { createBLAKE3, type IHasher } from 'hash-wasm';
import { CanopyError, isCanopyError } from '../errors/index.js';
import { agentSan, type CertAndKey, checkSan, normalizeSerial } from '../pki/index.js';
import type { ChunkPool } from './chunk-pool.js';
import { isChunkDigest } from './manifest.js';
import {
  decodeReply,
  type ErrorReply,
  encodeFrame,
  FrameDecoder,
  knownCode,
  MAX_PAYLOAD_BYTES,
  PEER_ALPN,
  PEER_CODES,
  type PeerReply,
  WireError,
} from './peer-wire.js';
import type { RateLimiter } from './rate-limit.js';

export interface PeerClientOptions {
  /** Address to dial (an IP or a host name). */
  host: string;
  port: number;
  /** The agent expected there: its certificate must name `<peer>.agent.canopy`. */
  peer: string;
  /** This agent's certificate and key (PEM). */
  identity: CertAndKey;
  /** The fleet CA's certificate (PEM). */
  caPem: string;
  /** No byte received for this long while fetches are pending fails them all; default 30 s. Also bounds connecting. */
  stallTimeoutMs?: number;
  /** Largest chunk accepted; default 64 MiB (the largest chunk size). */
  maxChunkBytes?: number;
  /** Download cap shared with the agent's other clients: reading pauses (and TCP pushes back) when over it. */
  limiter?: RateLimiter;
  /**
   * Chunks are received into buffers from this pool; a fetch's buffer is
   * then the caller's, to give back with `pool.release` once done with it.
   */
  pool?: ChunkPool;
  /** Aborts connecting. */
  signal?: AbortSignal;
  /** True if a certificate serial (lowercase hex, no leading zeros) is revoked: such a server is hung up on. */
  isRevoked?: (serial: string) => boolean;
}

export interface FetchOptions {
  signal?: AbortSignal;
  /** The chunk's length from the manifest; an answer of another length fails at once. */
  length?: number;
}

interface Pending {
  id: number;
  blob: string;
  /** The chunk's index; undefined for the manifest. */
  chunk: number | undefined;
  digest: string;
  length: number | undefined;
  resolve: (data: Buffer) => void;
  reject: (err: unknown) => void;
  cleanup: () => void;
}

/** The chunk arriving now: where its bytes go, or nowhere (an answer nobody waits for). */
interface Incoming {
  pending: Pending | undefined;
  data: Buffer | undefined;
  filled: number;
}

export class PeerClient {
  private readonly pending = new Map<number, Pending>();
  private readonly decoder: FrameDecoder<PeerReply>;
  private readonly stallTimer: NodeJS.Timeout;
  private readonly where: string;
  private incoming: Incoming | undefined;
  private nextId = 1;
  private failure: CanopyError | undefined;
  private rateWait = false;
  /** Bytes received since the handshake: a hang-up before the first one may be a refused certificate. */
  private received = 0;
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly socket: tls.TLSSocket,
    private readonly hasher: IHasher,
    private readonly options: PeerClientOptions,
    inbox: Inbox,
  ) {
    this.where = `peer ${options.peer} (${options.host}:${options.port})`;
    const maxChunk = Math.min(options.maxChunkBytes ?? MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES);
    this.decoder = new FrameDecoder<PeerReply>(
      decodeReply,
      { bytes: maxChunk, what: `chunks are at most ${maxChunk} bytes` },
      {
        onHeader: (reply, length) => this.onHeader(reply, length),
        onPayload: (slice) => this.onPayload(slice),
        onFrameEnd: () => this.onFrameEnd(),
      },
    );
    this.stallTimer = setTimeout(() => this.onStallTimer(), this.stallMs);
    this.stallTimer.unref();
    inbox.deliver((data) => this.onData(data));
    socket.on('error', (err) => this.fail(this.socketError(err)));
    socket.on('end', () => this.fail(this.lost('hung up')));
    socket.on('close', () => this.fail(this.lost('closed the connection')));
  }

  /**
   * Dials the peer and completes the TLS handshake. Throws PKI_WRONG_PEER when
   * the server is not the expected agent of the fleet, a peer error
   * (PEER_CODES.lost) when it cannot be reached, and the signal's reason.
   */
  static async connect(options: PeerClientOptions): Promise<PeerClient> {
    options.signal?.throwIfAborted();
    const hasher = await createBLAKE3();
    const inbox = new Inbox();
    const socket = await dialPeer(
      { ...options, onRead: (data) => inbox.push(data) },
      options.stallTimeoutMs ?? 30_000,
    );
    return new PeerClient(socket, hasher, options, inbox);
  }

  /** Fetches in flight (sent, not yet answered). */
  get pendingCount(): number {
    return this.pending.size;
  }

  /** True once the connection failed or was closed; every fetch then fails at once. */
  get closed(): boolean {
    return this.failure !== undefined;
  }

  /**
   * Chunk `index` of blob `blobId`, checked against `expectedDigest`. Throws
   * TRANSFER_DIGEST_MISMATCH naming the peer when the bytes are wrong (report
   * the peer and fetch the chunk elsewhere), the peer's refusal as a
   * CanopyError with its code, a peer error when the connection stalls or
   * fails, and the signal's reason when aborted.
   */
  fetch(blobId: string, index: number, expectedDigest: string, options: FetchOptions = {}): Promise<Buffer> {
    checkRequest(blobId, index, expectedDigest);
    return this.request(blobId, index, expectedDigest, options);
  }

  /**
   * The canonical JSON bytes of blob `blobId`'s manifest, checked to hash to
   * the blob id (parse them with parseManifest). Fails as fetch() does; a
   * peer that does not serve the blob (yet) refuses with TRANSFER_PEER_FORBIDDEN.
   */
  fetchManifest(blobId: string, options: Omit<FetchOptions, 'length'> = {}): Promise<Buffer> {
    checkRequest(blobId, 0, blobId);
    return this.request(blobId, undefined, blobId, options);
  }

  private request(
    blob: string,
    chunk: number | undefined,
    digest: string,
    options: FetchOptions,
  ): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      if (this.failure) throw this.failure;
      const { signal } = options;
      signal?.throwIfAborted();
      const id = this.nextId++;
      const onAbort = () => this.abort(id, signal?.reason);
      const p: Pending = {
        id,
        blob,
        chunk,
        digest,
        length: options.length,
        resolve,
        reject,
        cleanup: () => signal?.removeEventListener('abort', onAbort),
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      if (this.pending.size === 0) this.stallTimer.refresh();
      this.pending.set(id, p);
      this.socket.write(
        encodeFrame(chunk === undefined ? { type: 'manifest', id, blob } : { type: 'get', id, blob, chunk }),
      );
    });
  }

  /** Fails pending fetches, hangs up and waits for the socket to close. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const wasOpen = !this.socket.destroyed;
      this.fail(
        new CanopyError(PEER_CODES.lost, `connection to ${this.where} was closed by this agent`, {
          peer: this.options.peer,
        }),
      );
      if (wasOpen && !this.socket.closed) await new Promise((resolve) => this.socket.once('close', resolve));
    })();
    return this.closing;
  }

  private get stallMs(): number {
    return this.options.stallTimeoutMs ?? 30_000;
  }

  private onData(data: Buffer): void {
    if (this.failure) return;
    this.received += data.length;
    this.stallTimer.refresh();
    try {
      this.decoder.push(data);
    } catch (err) {
      this.fail(this.protocolError(err));
      return;
    }
    this.limitRate(data.length);
  }

  /** Over the download cap: stop reading until the bytes just read are paid for. */
  private limitRate(bytes: number): void {
    const { limiter } = this.options;
    const wait = limiter?.reserve(bytes) ?? 0;
    if (!limiter || wait === 0) return;
    this.rateWait = true;
    this.socket.pause();
    limiter.wait(wait).then(
      () => {
        this.rateWait = false;
        if (this.failure) return;
        this.stallTimer.refresh();
        this.socket.resume();
      },
      (err: unknown) => this.fail(this.lost(`could not be read (${(err as Error).message})`)),
    );
  }

  private onHeader(reply: PeerReply, length: number): void {
    const pending = this.pending.get(reply.id ?? 0);
    if (reply.type === 'error') {
      if (length > 0) throw new WireError(`error frame with a payload of ${length} bytes`);
      if (reply.id === undefined) throw new ConnectionRefused(reply);
      if (pending) this.settle(pending, this.refused(pending, reply.code, reply.message));
      this.incoming = { pending: undefined, data: undefined, filled: 0 };
      return;
    }
    if (pending && pending.length !== undefined && pending.length !== length) {
      this.settle(pending, this.mismatch(pending, `${length} bytes, not ${pending.length}`, 'wrong length'));
      this.incoming = { pending: undefined, data: undefined, filled: 0 };
      return;
    }
    if (pending) this.hasher.init();
    const { pool } = this.options;
    const data = !pending
      ? undefined
      : pool && pending.chunk !== undefined
        ? pool.acquire(length)
        : Buffer.allocUnsafe(length);
    this.incoming = { pending, data, filled: 0 };
  }

  private onPayload(slice: Buffer): void {
    const inc = this.incoming;
    if (!inc?.data) return;
    slice.copy(inc.data, inc.filled);
    inc.filled += slice.length;
    this.hasher.update(slice);
  }

  private onFrameEnd(): void {
    const inc = this.incoming;
    this.incoming = undefined;
    if (!inc?.pending || !inc.data) return;
    if (this.pending.get(inc.pending.id) !== inc.pending) {
      this.options.pool?.release(inc.data); // the fetch was cancelled meanwhile
      return;
    }
    const p = inc.pending;
    const actual = this.hasher.digest('hex');
    if (actual === p.digest) {
      this.settle(p, undefined, inc.data);
      return;
    }
    this.options.pool?.release(inc.data);
    this.settle(p, this.mismatch(p, `hashes to ${actual}`, actual));
  }

  /** Removes the fetch from `pending`, then resolves or rejects it. */
  private settle(p: Pending, err: unknown, data?: Buffer): void {
    if (this.pending.get(p.id) !== p) return;
    this.pending.delete(p.id);
    p.cleanup();
    if (err === undefined && data) p.resolve(data);
    else p.reject(err);
  }

  private abort(id: number, reason: unknown): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.settle(p, reason);
    if (!this.failure) this.socket.write(encodeFrame({ type: 'cancel', id }));
  }

  private onStallTimer(): void {
    if (this.failure || this.pending.size === 0 || this.rateWait) return;
    this.fail(
      new CanopyError(
        PEER_CODES.stalled,
        `${this.where} sent nothing for ${this.stallMs} ms with ${this.pending.size} chunk requests pending; ` +
          `the connection was dropped: fetch those chunks from another peer or the source, and report the peer`,
        { peer: this.options.peer, address: `${this.options.host}:${this.options.port}` },
      ),
    );
  }

  /** Fails every pending fetch with `err` (the first failure wins) and destroys the socket. */
  private fail(err: CanopyError): void {
    if (this.failure) return;
    this.failure = err;
    clearTimeout(this.stallTimer);
    // A chunk being received is dropped (nothing reads this socket any more).
    if (this.incoming?.data) this.options.pool?.release(this.incoming.data);
    this.incoming = undefined;
    for (const p of [...this.pending.values()]) this.settle(p, err);
    this.socket.destroy();
  }

  private refused(p: Pending, code: string, message: string): CanopyError {
    return new CanopyError(knownCode(code), `${this.where} refused ${asked(p)}: ${message}`, {
      peer: this.options.peer,
      blob: p.blob,
      chunk: p.chunk,
      remoteCode: code,
    });
  }

  private mismatch(p: Pending, what: string, actual: string): CanopyError {
    return new CanopyError(
      PEER_CODES.mismatch,
      `${asked(p)} from ${this.where} ${what}, expected digest ${p.digest}: the peer's ` +
        `copy or the link is bad; report the peer and fetch it from another peer or the source`,
      { peer: this.options.peer, blob: p.blob, chunk: p.chunk, expected: p.digest, actual },
    );
  }

  private protocolError(err: unknown): CanopyError {
    if (err instanceof ConnectionRefused) {
      const { code, message } = err.reply;
      return new CanopyError(knownCode(code), `${this.where} refused this agent: ${message}`, {
        peer: this.options.peer,
        remoteCode: code,
      });
    }
    return new CanopyError(
      PEER_CODES.protocol,
      `${this.where} sent a malformed frame: ${(err as Error).message}; the connection was dropped. ` +
        `Check both agents run the same canopy version`,
      { peer: this.options.peer, cause: err },
    );
  }

  private lost(what: string): CanopyError {
    // A server refusing a client certificate after the TLS 1.3 handshake just hangs up, without an alert.
    const hint =
      this.received === 0
        ? ` (it hung up before sending anything: it may have refused this agent's certificate; its log says ` +
          `why. Check that the certificate is current and from the fleet CA)`
        : '';
    return new CanopyError(
      PEER_CODES.lost,
      `${this.where} ${what} with ${this.pending.size} chunk requests pending${hint}; ` +
        `fetch them from another peer or the source`,
      { peer: this.options.peer },
    );
  }

  private socketError(err: Error): CanopyError {
    return tlsError(err, this.where, this.options.peer) ?? this.lost(`failed (${err.message})`);
  }
}

/** The server refused the connection itself (an error frame without id); it hangs up next. */
class ConnectionRefused extends Error {
  constructor(readonly reply: ErrorReply) {
    super(reply.message);
  }
}

/**
 * Where to dial a peer and as whom; shared by chunk clients and stream (rsync)
 * clients. With `onRead`, the socket emits no 'data' events: every read is
 * handed to it in one buffer the socket reuses, valid only during the call
 * (no Buffer object per TLS record, which at 16 KiB a record is most of a
 * relay's garbage).
 */
export type DialOptions = Pick<
  PeerClientOptions,
  'host' | 'port' | 'peer' | 'identity' | 'caPem' | 'signal' | 'isRevoked'
> & {
  onRead?: (data: Buffer) => void;
};

/** What a fetch asked for, for messages: "chunk 3 of blob B" or "the manifest of blob B". */
function asked(p: Pending): string {
  return p.chunk === undefined ? `the manifest of blob ${p.blob}` : `chunk ${p.chunk} of blob ${p.blob}`;
}

/** The socket's buffer for `onRead`: a few TLS records (16 KiB each). */
const READ_BUFFER_BYTES = 64 * 1024;

/**
 * Reads of a connection before its client exists (a refusal can come right
 * after the handshake): copied and kept, then handed over in order.
 */
class Inbox {
  private readonly early: Buffer[] = [];
  private sink: ((data: Buffer) => void) | undefined;

  push(data: Buffer): void {
    if (this.sink) this.sink(data);
    else this.early.push(Buffer.from(data));
  }

  deliver(sink: (data: Buffer) => void): void {
    this.sink = sink;
    for (const data of this.early.splice(0)) sink(data);
  }
}

/**
 * A TLS socket to the peer, past the handshake and the checks that it is the
 * expected agent of the fleet speaking PEER_ALPN. Throws PKI_WRONG_PEER,
 * AGENT_CERT_REFUSED, a peer error (PEER_CODES.lost, .protocol) naming the
 * peer, or the signal's reason.
 */
export async function dialPeer(options: DialOptions, timeoutMs: number): Promise<tls.TLSSocket> {
  options.signal?.throwIfAborted();
  const socket = tls.connect({
    host: options.host,
    port: options.port,
    servername: agentSan(options.peer),
    key: options.identity.keyPem,
    cert: options.identity.certPem,
    ca: [options.caPem],
    checkServerIdentity: checkSan(agentSan(options.peer)),
    minVersion: 'TLSv1.3',
    ALPNProtocols: [PEER_ALPN],
    ...(options.onRead ? { onread: onRead(options.onRead) } : {}),
  });
  await handshake(socket, options, timeoutMs);
  const serial = normalizeSerial(socket.getPeerX509Certificate()?.serialNumber ?? '');
  if (options.isRevoked?.(serial)) {
    socket.destroy();
    throw new CanopyError(
      PEER_CODES.revoked,
      `peer ${options.peer} (${options.host}:${options.port}) presented a revoked certificate (serial ${serial}); ` +
        `nothing was sent: that agent was revoked, fetch from another peer`,
      { peer: options.peer, serial },
    );
  }
  if (socket.alpnProtocol !== PEER_ALPN) {
    socket.destroy();
    throw new CanopyError(
      PEER_CODES.protocol,
      `peer ${options.peer} (${options.host}:${options.port}) does not speak ${PEER_ALPN} ` +
        `(it chose ${socket.alpnProtocol || 'no ALPN protocol'}): upgrade that agent, or fetch from another peer`,
      { peer: options.peer },
    );
  }
  return socket;
}

function onRead(callback: (data: Buffer) => void): net.OnReadOpts {
  const buffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);
  // The socket hands back `buffer` itself; returning true keeps it reading (pause() still stops it).
  return {
    buffer,
    callback: (n) => {
      callback(buffer.subarray(0, n));
      return true;
    },
  };
}

/** Waits for the handshake; turns its failures into errors naming the peer. */
async function handshake(socket: tls.TLSSocket, options: DialOptions, timeoutMs: number): Promise<void> {
  const where = `peer ${options.peer} (${options.host}:${options.port})`;
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no TLS handshake within ${timeoutMs} ms`)), timeoutMs);
      const onAbort = () => reject(options.signal?.reason);
      options.signal?.addEventListener('abort', onAbort, { once: true });
      const done = () => {
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
      };
      socket.once('secureConnect', () => {
        done();
        resolve();
      });
      socket.once('error', (err) => {
        done();
        reject(err);
      });
    });
  } catch (err) {
    socket.destroy();
    if (options.signal?.aborted && err === options.signal.reason) throw err;
    if (isCanopyError(err)) throw err;
    throw (
      tlsError(err as Error, where, options.peer) ??
      new CanopyError(
        PEER_CODES.lost,
        `cannot reach ${where}: ${(err as Error).message}; check the peer agent is running and its peer ` +
          `port is open, or fetch from another peer`,
        { peer: options.peer, address: `${options.host}:${options.port}`, cause: err },
      )
    );
  }
}

/** A TLS failure as an operator reads it, or undefined when it is not one. */
export function tlsError(err: Error, where: string, peer: string): CanopyError | undefined {
  if (isCanopyError(err)) return err;
  const code = (err as NodeJS.ErrnoException).code ?? '';
  if (code.startsWith('ERR_SSL_') && code.includes('ALERT')) {
    return new CanopyError(
      'AGENT_CERT_REFUSED',
      `${where} refused this agent's certificate (${err.message.trim()}): check that the agent's ` +
        `certificate is current and from the fleet CA, or join the agent again`,
      { peer, cause: err },
    );
  }
  if (/CERT|SIGNATURE|ISSUER|SELF_SIGNED/.test(code)) {
    return new CanopyError(
      'PKI_WRONG_PEER',
      `${where} presented a certificate the fleet CA did not issue (${code}); nothing was sent. Check that ` +
        `this address reaches a canopy agent of this fleet`,
      { peer, cause: err },
    );
  }
  return undefined;
}

function checkRequest(blobId: string, index: number, digest: string): void {
  const bad = !isChunkDigest(blobId)
    ? `blob id ${JSON.stringify(blobId)}`
    : !Number.isInteger(index) || index < 0 || index > 2 ** 31
      ? `chunk index ${index}`
      : !isChunkDigest(digest)
        ? `expected digest ${JSON.stringify(digest)}`
        : undefined;
  if (!bad) return;
  throw new CanopyError(
    'TRANSFER_MANIFEST_INVALID',
    `cannot fetch: ${bad} is not valid (blob ids and digests are 64 lowercase hex characters, indexes ` +
      `whole numbers from 0); the manifest it came from is damaged: fetch it again`,
    { blob: blobId, chunk: index },
  );
}
