/**
 * An agent's peer server: serves verified chunks to the other agents of the
 * fleet over TLS 1.3 (wire format: peer-wire.ts). It owns the listening
 * socket and its connections; it never decides who may fetch what (the
 * `authorize` and `isRevoked` callbacks do) and never writes a chunk.
 *
 * Who is served: a client whose certificate chains to the fleet CA for
 * client auth (OpenSSL checks that in the handshake; Node then hangs up
 * without an alert, and the server logs `transfer.peer.tls_refused`), names
 * exactly one agent (`<name>.agent.canopy`) and whose serial is not revoked
 * (checked at connect, per request, and for every open connection when
 * dropRevoked() is called); a fleet certificate failing
 * those is answered with one `error` frame and a hang-up. What is served: chunk i of
 * blob B only if authorize(peer, B) returns B's manifest (a running
 * distribution names both) and the chunk store, or else the `source`
 * callback (a seed reading its original file), has the chunk; blob B's
 * manifest (its canonical bytes) on the same terms, or once `awaitManifest`
 * has it (a relay still getting it from its own parent). A refused
 * request gets an `error` frame naming the blob and chunk, is logged, and the
 * connection carries on.
 *
 * Memory per connection is bounded whatever the blob's size: requests are
 * parsed only while fewer than MAX_QUEUED wait (the socket is paused
 * otherwise, so TCP pushes back on the client), at most `readAhead` chunks
 * are read from disk ahead of the one being sent, and the next chunk is
 * written only after the socket drained the previous one. So a connection
 * holds at most readAhead + 1 chunks (2 by default), plus TLS buffers.
 * Invariant: only a connection's own run() loop writes to its socket (besides
 * the refusal sent before the loop starts, and a protocol refusal sent only
 * between frames), so frames never interleave. Connections idle for
 * `idleTimeoutMs` are closed; clients reconnect. setCredentials() swaps the
 * certificate (a renewal) for new connections only.
 *
 * rsync pulls: a connection whose first request is `rsync` becomes a stream
 * connection (peer-stream.ts) if authorizeTree(peer, tree) names a root and
 * rsync.ts accepts the command; the server then runs only the system rsync as
 * `--server --sender` (an argv array, never a shell) in that root, at most
 * `maxRsyncSessions` at once, and kills it when the connection drops. Every
 * refusal is logged (`transfer.peer.rsync_refused`) and answered with one
 * `error` frame and a hang-up.
 */
import { once } from 'node:events';
import type { AddressInfo, Socket } from 'node:net';
import tls from 'node:tls';
import { CanopyError, type ErrorCode, isCanopyError } from '../errors/index.js';
import { agentSan, type CertAndKey, certInfo, checkSan } from '../pki/index.js';
import type { ChunkStore } from './chunk-store.js';
import { chunkRange, encodeManifest, type Manifest } from './manifest.js';
import { RsyncSession, type RsyncStats } from './peer-stream.js';
import {
  decodeRequest,
  decodeStreamInput,
  type ErrorReply,
  encodeFrame,
  errorReply,
  FrameDecoder,
  type Get,
  MAX_STREAM_PAYLOAD_BYTES,
  type ManifestGet,
  PEER_ALPN,
  PEER_CODES,
  type PeerRequest,
  type RsyncRequest,
  type StreamInput,
  WireError,
} from './peer-wire.js';
import type { RateLimiter } from './rate-limit.js';
import { parseServerCommand, serverSpawn } from './rsync.js';

/** The logger a peer server or client writes to; a pino Logger fits. */
export interface PeerLog {
  debug(fields: object, event: string): void;
  info(fields: object, event: string): void;
  warn(fields: object, event: string): void;
}

/** A chunk straight from a seed's original file, or undefined when the seed cannot serve it. */
export type ChunkSource = (
  blobId: string,
  index: number,
  manifest: Manifest,
  /** A buffer of at least the chunk's length the answer may be read into (the connection's own). */
  into?: Buffer,
) => Promise<Uint8Array | undefined>;

/** What a tree pull may read: `root`, and with `filter` (a treeFilter file) only the entries it names. */
export interface TreeGrant {
  root: string;
  filter?: string;
}

export interface PeerServerOptions {
  /** This agent's certificate and key (PEM), as issued by the fleet CA. */
  identity: CertAndKey;
  /** The fleet CA's certificate (PEM): clients must chain to it. */
  caPem: string;
  /**
   * The manifest of blob `blobId` if a running distribution lets agent `peer`
   * fetch it from this agent, else undefined. Called for every request.
   */
  authorize: (peer: string, blobId: string) => Manifest | undefined | Promise<Manifest | undefined>;
  /**
   * For a manifest request `authorize` refused: the manifest once this agent
   * may serve the blob (it is still getting the manifest itself), else
   * undefined; a long poll, so a chain of relays passes the manifest down
   * without each child asking again and again.
   */
  awaitManifest?: (peer: string, blobId: string) => Promise<Manifest | undefined>;
  /** True if the certificate with this serial (lowercase hex) is revoked. Called per connection and request. */
  isRevoked: (serial: string) => boolean | Promise<boolean>;
  log: PeerLog;
  /** Chunks served by digest. */
  store?: ChunkStore;
  /** Chunks the store lacks, read from the original file (a seed). */
  source?: ChunkSource;
  /** Upload cap shared by every connection (and anything else the agent uploads). */
  limiter?: RateLimiter;
  /** Chunks read from disk ahead of the one being sent, per connection; default 1. */
  readAhead?: number;
  /** A connection that moves no byte for this long is closed; default 120 s. */
  idleTimeoutMs?: number;
  /** Most connections at once; more are dropped by the kernel-side accept; default 256. */
  maxConnections?: number;
  /** A TLS handshake not finished after this long is dropped; default 10 s. */
  handshakeTimeoutMs?: number;
  /**
   * The directory (or single file) that a running distribution lets agent
   * `peer` pull as tree `treeId` with rsync, else undefined. Without this
   * option every rsync request is refused.
   */
  authorizeTree?: (peer: string, treeId: string) => TreeGrant | undefined | Promise<TreeGrant | undefined>;
  /** The rsync program a pull runs; default "rsync" from PATH. Never chosen by the peer. */
  rsyncPath?: string;
  /** rsync processes at once; more requests are refused (the peer retries); default 8. */
  maxRsyncSessions?: number;
  /** A stream connection that moves no byte for this long is closed; default 10 min (rsync's own --timeout should fire first). */
  streamIdleTimeoutMs?: number;
}

/** Counters since the server started, for metrics and progress. */
export interface PeerServerStats {
  chunksServed: number;
  bytesServed: number;
  requestsRefused: number;
  connectionsRefused: number;
}

/** Who is at the other end of an accepted connection. */
interface PeerIdentity {
  name: string;
  serial: string;
  address: string;
}

/** A chunk's bytes, and the connection's buffer they were read into, if they were. */
interface Payload {
  data: Uint8Array;
  pooled?: Buffer;
}

/** An answer prepared for one request: the chunk's bytes, or a refusal. */
type Reply = ({ id: number; req: Asked } & Payload) | { id: number; req: Asked; error: ErrorReply };

/** A request answered with a payload: a chunk, or a blob's manifest. */
type Asked = Get | ManifestGet;

/** What a request asks for, as messages name it. */
function asked(req: Asked): string {
  return req.type === 'manifest'
    ? `the manifest of blob ${req.blob}`
    : `chunk ${req.chunk} of blob ${req.blob}`;
}

/** Requests parsed and waiting; past this the socket is paused until the loop catches up. */
const MAX_QUEUED = 32;
/** With a rate limit, payloads are written in slices this big, each taking its tokens. */
const SLICE_BYTES = 64 * 1024;
/**
 * Without a cap, payloads are written in slices this big, waiting for a drain
 * between them: few enough writes that the per-write cost (a promise, a TLS
 * record batch, a wake-up) stays small, and little enough that the socket never
 * holds a whole encrypted chunk.
 */
const UNLIMITED_SLICE_BYTES = 512 * 1024;
/** Manifests' canonical bytes, kept while the manifest object lives (every child of a relay asks for it). */
const ENCODED_MANIFESTS = new WeakMap<Manifest, Buffer>();
/** How long a refused client has to read the refusal before the socket is destroyed. */
const REFUSE_LINGER_MS = 2000;
const AGENT_SUFFIX = agentSan('');

export class PeerServer {
  /** This agent's name, from its own certificate. */
  readonly name: string;
  /** Updated as chunks go out; read, never write. */
  readonly stats: PeerServerStats = {
    chunksServed: 0,
    bytesServed: 0,
    requestsRefused: 0,
    connectionsRefused: 0,
  };
  /** rsync pulls served; read, never write. */
  readonly rsyncStats: RsyncStats = { started: 0, refused: 0, running: 0, bytesSent: 0 };
  private readonly server: tls.Server;
  private readonly connections = new Set<PeerConnection>();
  private readonly sockets = new Set<Socket>();
  private closing: Promise<void> | undefined;
  /** The CA client certificates must chain to, once setCredentials() replaced options.caPem. */
  private caPem: string | undefined;

  constructor(private readonly options: PeerServerOptions) {
    this.name = agentName(certInfo(options.identity.certPem).dnsNames) ?? 'this agent';
    this.server = tls.createServer({
      key: options.identity.keyPem,
      cert: options.identity.certPem,
      ca: [options.caPem],
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.3',
      ALPNProtocols: [PEER_ALPN],
      handshakeTimeout: options.handshakeTimeoutMs ?? 10_000,
    });
    this.server.maxConnections = options.maxConnections ?? 256;
    this.server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    this.server.on('tlsClientError', (err: Error, s: tls.TLSSocket) => {
      this.stats.connectionsRefused++;
      options.log.warn(
        { err, address: s.remoteAddress, reason: s.authorizationError ?? err.message },
        'transfer.peer.tls_refused',
      );
    });
    this.server.on('secureConnection', (s: tls.TLSSocket) => {
      this.accept(s).catch((err: unknown) => {
        options.log.warn({ err, address: s.remoteAddress }, 'transfer.peer.accept_failed');
        s.destroy();
      });
    });
  }

  /** Starts listening (port 0: any free port); resolves with the bound address. */
  async listen(port = 0, host?: string): Promise<AddressInfo> {
    this.server.listen(port, host);
    await once(this.server, 'listening');
    return this.address;
  }

  get address(): AddressInfo {
    return this.server.address() as AddressInfo;
  }

  /** Connections past the handshake and the identity checks. */
  get connectionCount(): number {
    return this.connections.size;
  }

  /**
   * Serves new connections with a renewed certificate and key, and with `caPem` as the CA for
   * client certificates when given (else the CA it had). Connections already open keep what they
   * were accepted with, so running transfers go on. Throws PKI_WRONG_PEER for a certificate that
   * names another agent and PKI_BAD_CERT for one that does not parse or does not match the key;
   * the server then keeps its old credentials.
   */
  setCredentials(identity: CertAndKey, caPem?: string): void {
    const name = agentName(certInfo(identity.certPem).dnsNames);
    if (name !== this.name) {
      throw new CanopyError(
        'PKI_WRONG_PEER',
        `the peer server of ${this.name} cannot serve with a certificate for ${name ?? 'no agent'}: ` +
          `an agent renews only its own certificate; restart it with its own identity`,
      );
    }
    const ca = caPem ?? this.caPem ?? this.options.caPem;
    try {
      // setSecureContext replaces every context option: pass all the constructor set, not only the new ones.
      this.server.setSecureContext({
        key: identity.keyPem,
        cert: identity.certPem,
        ca: [ca],
        minVersion: 'TLSv1.3',
      });
    } catch (err) {
      throw new CanopyError(
        'PKI_BAD_CERT',
        `the peer server of ${this.name} cannot serve with the new certificate: ${(err as Error).message}; ` +
          `it keeps serving with its current one (check the key belongs to the certificate)`,
        { cause: err },
      );
    }
    this.caPem = ca;
  }

  /**
   * Asks `isRevoked` again about every open connection and hangs up those whose certificate is
   * revoked now: a chunk connection gets an AGENT_REVOKED error frame first, an rsync pull is cut
   * (its rsync killed). Call it when the revoked serials change; new connections and every
   * request are checked anyway. Resolves with how many connections it closed.
   */
  async dropRevoked(): Promise<number> {
    let dropped = 0;
    for (const conn of [...this.connections]) {
      if (await this.options.isRevoked(conn.peer.serial)) {
        conn.revoke(revokedMessage(this.name, conn.peer.name, conn.peer.serial));
        dropped++;
      }
    }
    return dropped;
  }

  /** Stops accepting, hangs up every connection and waits for their loops. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const closed = this.server.listening ? once(this.server, 'close') : Promise.resolve();
      this.server.close();
      for (const s of this.sockets) s.destroy();
      await Promise.all([...this.connections].map((c) => c.done));
      await closed;
    })();
    return this.closing;
  }

  /** Checks who connected; starts serving an agent, or refuses anyone else. */
  private async accept(socket: tls.TLSSocket): Promise<void> {
    const address = `${socket.remoteAddress}:${socket.remotePort}`;
    const checked = await this.identify(socket, address);
    if ('refusal' in checked) {
      const { refusal } = checked;
      this.stats.connectionsRefused++;
      this.options.log.warn(
        { address, code: refusal.code, reason: refusal.message },
        'transfer.peer.refused',
      );
      socket.setTimeout(REFUSE_LINGER_MS, () => socket.destroy());
      socket.end(encodeFrame(refusal));
      socket.resume();
      return;
    }
    if (this.closing || socket.destroyed) {
      socket.destroy();
      return;
    }
    const conn = new PeerConnection(socket, checked, this.options, this.name, this.stats, this.rsyncStats);
    this.connections.add(conn);
    this.options.log.debug({ peer: checked.name, address }, 'transfer.peer.connected');
    await conn.done;
    this.connections.delete(conn);
  }

  private async identify(
    socket: tls.TLSSocket,
    address: string,
  ): Promise<PeerIdentity | { refusal: ErrorReply }> {
    const refuse = (code: ErrorCode, message: string) => ({ refusal: errorReply(code, message) });
    if (socket.alpnProtocol !== PEER_ALPN) {
      return refuse(
        PEER_CODES.notAnAgent,
        `${this.name} speaks ${PEER_ALPN} only; the client at ${address} offered ` +
          `${socket.alpnProtocol || 'no ALPN protocol'}: upgrade the client agent`,
      );
    }
    const cert = socket.getPeerX509Certificate();
    const info = cert ? certInfo(cert.toString()) : undefined;
    const name = info ? agentName(info.dnsNames) : undefined;
    const sanError = name ? checkSan(agentSan(name))(address, socket.getPeerCertificate()) : undefined;
    if (!info || !name || sanError) {
      return refuse(
        PEER_CODES.notAnAgent,
        `${this.name} serves chunks to agents only; the certificate from ${address} ` +
          `(CN=${info?.commonName ?? '?'}, DNS ${info?.dnsNames.join(', ') || 'none'}) names no agent ` +
          `(<name>${AGENT_SUFFIX}): connect with the agent's own certificate`,
      );
    }
    if (await this.options.isRevoked(info.serial))
      return refuse(PEER_CODES.revoked, revokedMessage(this.name, name, info.serial));
    return { name, serial: info.serial, address };
  }
}

/**
 * One accepted agent connection. run() is its only writer: it takes parsed
 * requests in order, prepares up to `readAhead` answers ahead, and writes one
 * answer at a time, waiting for the socket to drain between them.
 */
class PeerConnection {
  readonly done: Promise<void>;
  private readonly queue: Asked[] = [];
  private readonly aborted = new AbortController();
  private readonly decoder: FrameDecoder<PeerRequest | StreamInput>;
  private readonly readAhead: number;
  /** Set by an `rsync` first request: from then on every frame is the stream's. */
  private stream: RsyncSession | undefined;
  private requests = 0;
  private wake: (() => void) | undefined;
  private paused = false;
  private closed = false;
  /** True while send() has written part of a frame: nothing else may be written until the rest is. */
  private writing = false;
  /**
   * Chunk buffers written out and free again: packed chunks are read into
   * them, so a connection streaming a blob allocates readAhead + 1 buffers
   * once instead of one per chunk (which the GC would reclaim only late).
   */
  private readonly spare: Buffer[] = [];

  constructor(
    private readonly socket: tls.TLSSocket,
    readonly peer: PeerIdentity,
    private readonly options: PeerServerOptions,
    private readonly self: string,
    private readonly stats: PeerServerStats,
    private readonly rsyncStats: RsyncStats,
  ) {
    this.readAhead = Math.max(1, options.readAhead ?? 1);
    this.decoder = new FrameDecoder<PeerRequest | StreamInput>(
      (header) => (this.stream ? decodeStreamInput(header) : decodeRequest(header)),
      {
        bytes: MAX_STREAM_PAYLOAD_BYTES,
        what: `requests carry no payload; stdin frames of an rsync stream at most ${MAX_STREAM_PAYLOAD_BYTES}`,
      },
      {
        onHeader: (m, length) =>
          this.stream
            ? this.stream.onHeader(m as StreamInput, length)
            : this.onRequest(m as PeerRequest, length),
        onPayload: (slice) => this.stream?.onPayload(slice),
        onFrameEnd: () => this.stream?.onFrameEnd(),
      },
    );
    socket.setTimeout(options.idleTimeoutMs ?? 120_000, () => {
      options.log.info({ peer: peer.name, address: peer.address }, 'transfer.peer.idle_timeout');
      socket.destroy();
    });
    socket.on('data', (data: Buffer) => this.onData(data));
    socket.on('error', (err) => options.log.debug({ err, peer: peer.name }, 'transfer.peer.socket_error'));
    socket.on('close', () => this.onClose());
    this.done = this.run();
  }

  private onData(data: Buffer): void {
    if (this.closed) return;
    try {
      this.decoder.push(data);
    } catch (err) {
      this.protocolError(err);
      return;
    }
    if (this.queue.length >= MAX_QUEUED && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
    this.notify();
  }

  private onRequest(req: PeerRequest, length: number): void {
    if (length > 0)
      throw new WireError(
        `${req.type} request with a payload of ${length} bytes (requests carry no payload)`,
      );
    if (req.type === 'rsync') {
      if (this.requests > 0)
        throw new WireError('an rsync request must be the first frame of its connection');
      this.startStream(req);
      return;
    }
    this.requests++;
    if (req.type === 'get' || req.type === 'manifest') {
      this.queue.push(req);
      return;
    }
    const at = this.queue.findIndex((q) => q.id === req.id);
    if (at >= 0) this.queue.splice(at, 1);
  }

  /**
   * Turns this connection into an rsync stream: input is held (the socket
   * paused) while the tree, the command and its paths are checked, then the
   * session spawns rsync or refuses. run() stops; the session writes from now on.
   */
  private startStream(req: RsyncRequest): void {
    const o = this.options;
    const session = new RsyncSession({
      socket: this.socket,
      peer: this.peer.name,
      self: this.self,
      tree: req.tree,
      log: o.log,
      stats: this.rsyncStats,
      ...(o.limiter ? { limiter: o.limiter } : {}),
    });
    this.stream = session;
    this.socket.pause();
    this.socket.setTimeout(o.streamIdleTimeoutMs ?? 600_000);
    this.notify();
    const admitted = this.rsyncStats.running < (o.maxRsyncSessions ?? 8);
    if (admitted) this.rsyncStats.running++; // counted from now, so concurrent checks cannot overshoot
    this.checkStream(req, admitted)
      .then(
        (spec) => {
          if (admitted) this.rsyncStats.running--;
          session.start(o.rsyncPath ?? 'rsync', spec);
        },
        (err: unknown) => {
          if (admitted) this.rsyncStats.running--;
          this.rsyncStats.refused++;
          const code: ErrorCode = isCanopyError(err) ? err.code : PEER_CODES.protocol;
          const reason =
            isCanopyError(err) && typeof err.subject.reason === 'string' ? err.subject.reason : undefined;
          const message = `${this.self} refuses to serve tree ${req.tree} to ${this.peer.name}: ${reason ?? (err as Error).message}`;
          o.log.warn(
            { peer: this.peer.name, address: this.peer.address, tree: req.tree, args: req.args, code, err },
            'transfer.peer.rsync_refused',
          );
          session.refuse(errorReply(code, message, req.id));
        },
      )
      .catch((err: unknown) => {
        // Only a synchronous spawn failure gets here (spawn validates its arguments): drop the connection.
        o.log.warn({ err, peer: this.peer.name, tree: req.tree }, 'transfer.peer.rsync_spawn_failed');
        this.socket.destroy();
      });
  }

  /** The argv and directory for a permitted pull; throws a CanopyError saying why not. */
  private async checkStream(req: RsyncRequest, admitted: boolean) {
    const o = this.options;
    const { name, serial } = this.peer;
    if (!admitted) {
      throw new CanopyError(
        PEER_CODES.lost,
        `${o.maxRsyncSessions ?? 8} rsync pulls are running already; retry shortly or pull from another peer`,
        { peer: name, tree: req.tree },
      );
    }
    if (await o.isRevoked(serial)) {
      throw new CanopyError(PEER_CODES.revoked, revokedMessage(this.self, name, serial), {
        peer: name,
        serial,
      });
    }
    const command = parseServerCommand(req.args);
    const tree = await o.authorizeTree?.(name, req.tree);
    if (!tree) {
      throw new CanopyError(
        PEER_CODES.forbidden,
        `no running distribution lets ${name} pull it from ${this.self}; pull from the peer the current ` +
          `plan names`,
        { peer: name, tree: req.tree },
      );
    }
    return serverSpawn(command, tree.root, tree.filter);
  }

  /** The client's certificate was revoked while it was connected: hang up, saying so where a frame fits. */
  revoke(message: string): void {
    if (this.closed) return;
    this.options.log.warn(
      { peer: this.peer.name, address: this.peer.address, serial: this.peer.serial },
      'transfer.peer.revoked_closed',
    );
    // An rsync session writes its own frames: cut it (onClose kills the rsync).
    if (this.stream) this.socket.destroy();
    // run() may be in the middle of a frame: a refusal written now would land inside its payload.
    else this.hangUp(this.writing ? undefined : errorReply(PEER_CODES.revoked, message));
  }

  /** Answers the malformed frame with a connection error and hangs up; other connections are untouched. */
  private protocolError(err: unknown): void {
    const message =
      `malformed frame from ${this.peer.name} (${this.peer.address}): ${(err as Error).message}; ` +
      `the connection is closed. Check both agents run the same canopy version`;
    this.options.log.warn(
      { err, peer: this.peer.name, address: this.peer.address },
      'transfer.peer.protocol_invalid',
    );
    // run() may be in the middle of a frame: a refusal written now would land inside its payload.
    this.hangUp(this.writing ? undefined : errorReply(PEER_CODES.protocol, message));
  }

  /** Stops serving: optionally one last frame, then end, and destroy if the client lingers. */
  private hangUp(last?: ErrorReply): void {
    this.closed = true;
    this.queue.length = 0;
    this.notify();
    if (last) this.socket.end(encodeFrame(last));
    else this.socket.end();
    this.socket.resume();
    this.socket.setTimeout(REFUSE_LINGER_MS, () => this.socket.destroy());
  }

  private onClose(): void {
    this.closed = true;
    this.aborted.abort(new Error('connection closed'));
    this.stream?.onClose();
    this.notify();
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private async run(): Promise<void> {
    const ready: Promise<Reply>[] = [];
    try {
      while (!this.closed && !this.stream) {
        this.fill(ready);
        const next = ready.shift();
        if (!next) {
          await new Promise<void>((resolve) => {
            this.wake = resolve;
          });
          continue;
        }
        const reply = await next;
        if (this.closed) break;
        this.fill(ready);
        await this.send(reply);
        if ('error' in reply && reply.error.code === PEER_CODES.revoked) this.hangUp();
      }
    } finally {
      // Answers being prepared settle on their own (prepare() never rejects); wait so none floats.
      await Promise.all(ready);
    }
    await this.stream?.done;
  }

  /** Starts preparing queued requests until `readAhead` answers are ready or being read. */
  private fill(ready: Promise<Reply>[]): void {
    while (ready.length < this.readAhead && this.queue.length > 0) {
      ready.push(this.prepare(this.queue.shift() as Asked));
    }
    if (this.paused && this.queue.length < MAX_QUEUED / 2 && !this.closed) {
      this.paused = false;
      this.socket.resume();
    }
  }

  /** The chunk or manifest for `req`, or a refusal; never rejects. */
  private async prepare(req: Asked): Promise<Reply> {
    try {
      const payload = req.type === 'manifest' ? await this.manifestFor(req) : await this.chunkFor(req);
      return { id: req.id, req, ...payload };
    } catch (err) {
      const code: ErrorCode = isCanopyError(err) ? err.code : PEER_CODES.missing;
      const message = isCanopyError(err)
        ? err.message
        : `${this.self} could not read ${asked(req)}: ${(err as Error).message}; ` +
          `fetch it from another peer or the source`;
      // A chunk not here yet is routine in a pipelined relay; anything else deserves attention.
      const level =
        (code === PEER_CODES.missing || (code === PEER_CODES.forbidden && req.type === 'manifest')) &&
        !(isCanopyError(err) && err.cause)
          ? 'info'
          : 'warn';
      this.options.log[level](
        {
          peer: this.peer.name,
          blob: req.blob,
          chunk: req.type === 'get' ? req.chunk : 'manifest',
          code,
          err,
        },
        'transfer.peer.request_refused',
      );
      return { id: req.id, req, error: errorReply(code, message, req.id) };
    }
  }

  /** The blob's manifest (authorized, or awaited while this agent is still getting it) for `peer`. */
  private async authorized(req: Asked): Promise<Manifest> {
    const { name, serial } = this.peer;
    if (await this.options.isRevoked(serial)) {
      throw new CanopyError(PEER_CODES.revoked, revokedMessage(this.self, name, serial), {
        peer: name,
        serial,
      });
    }
    const manifest =
      (await this.options.authorize(name, req.blob)) ??
      (req.type === 'manifest' ? await this.options.awaitManifest?.(name, req.blob) : undefined);
    if (!manifest) {
      throw new CanopyError(
        PEER_CODES.forbidden,
        `${this.self} refuses ${asked(req)} to agent ${name}: no running ` +
          `distribution lets ${name} fetch that blob from ${this.self}; fetch from the peer the current plan ` +
          `names (the coordinator re-plans a host whose parent refuses it)`,
        { peer: name, blob: req.blob, ...(req.type === 'get' ? { chunk: req.chunk } : {}) },
      );
    }
    return manifest;
  }

  /** The manifest's canonical bytes (they hash to the blob id: the client checks that), encoded once per manifest. */
  private async manifestFor(req: ManifestGet): Promise<Payload> {
    const manifest = await this.authorized(req);
    let data = ENCODED_MANIFESTS.get(manifest);
    if (!data) {
      data = Buffer.from(encodeManifest(manifest));
      ENCODED_MANIFESTS.set(manifest, data);
    }
    return { data };
  }

  private async chunkFor(req: Get): Promise<Payload> {
    const { name } = this.peer;
    const manifest = await this.authorized(req);
    if (req.chunk >= manifest.chunks.length) {
      throw new CanopyError(
        PEER_CODES.missing,
        `blob ${req.blob} has ${manifest.chunks.length} chunks, so there is no chunk ${req.chunk}; ` +
          `the requesting agent ${name} has another manifest under that id: fetch the manifest again`,
        { peer: name, blob: req.blob, chunk: req.chunk },
      );
    }
    return this.readChunk(req, manifest);
  }

  /** The chunk's bytes from the store, else from the source; checks their length against the manifest. */
  private async readChunk(req: Get, manifest: Manifest): Promise<Payload> {
    const digest = manifest.chunks[req.chunk] as string;
    const { length } = chunkRange(manifest, req.chunk);
    const { store, source } = this.options;
    let data: Uint8Array | undefined;
    let pooled: Buffer | undefined;
    let storeError: unknown;
    if (store?.has(digest)) {
      const into = this.takeBuffer(length);
      try {
        data = await store.get(digest, { into });
      } catch (err) {
        storeError = err;
      }
      if (data && data.buffer === into.buffer) pooled = into;
      else this.recycle(into);
    }
    if (!data && source) {
      const into = this.takeBuffer(length);
      data = await source(req.blob, req.chunk, manifest, into).catch((err: unknown) => {
        this.recycle(into);
        throw err;
      });
      if (data && data.buffer === into.buffer) pooled = into;
      else this.recycle(into);
    }
    if (!data && storeError) {
      throw new CanopyError(
        isCanopyError(storeError, PEER_CODES.mismatch) ? PEER_CODES.mismatch : PEER_CODES.missing,
        `${this.self} lost chunk ${req.chunk} (${digest}) of blob ${req.blob}: its stored copy was damaged ` +
          `or removed (its log says which); fetch the chunk from another peer or the source`,
        { peer: this.peer.name, blob: req.blob, chunk: req.chunk, digest, cause: storeError },
      );
    }
    if (!data) {
      throw new CanopyError(
        PEER_CODES.missing,
        `${this.self} does not have chunk ${req.chunk} (${digest}) of blob ${req.blob} yet; ` +
          `fetch it from another peer or the source`,
        { peer: this.peer.name, blob: req.blob, chunk: req.chunk, digest },
      );
    }
    if (data.length !== length) {
      throw new CanopyError(
        PEER_CODES.mismatch,
        `${this.self} read ${data.length} bytes for chunk ${req.chunk} of blob ${req.blob}, but the manifest ` +
          `gives ${length}: its copy changed since the manifest was built; fetch from another peer or the source`,
        { peer: this.peer.name, blob: req.blob, chunk: req.chunk, digest },
      );
    }
    return pooled ? { data, pooled } : { data };
  }

  /** A spare buffer of at least `length` bytes, else a new one. */
  private takeBuffer(length: number): Buffer {
    const spare = this.spare.pop();
    return spare && spare.length >= length ? spare : Buffer.allocUnsafe(length);
  }

  /** Keeps a buffer no reply uses any more, up to the most the connection can have in use at once. */
  private recycle(buf: Buffer): void {
    if (this.spare.length <= this.readAhead && !this.closed) this.spare.push(buf);
  }

  /** Writes one answer, then waits until the socket has taken it all (or closed). */
  private async send(reply: Reply): Promise<void> {
    try {
      if ('error' in reply) {
        this.socket.write(encodeFrame(reply.error));
      } else {
        this.writing = true;
        this.socket.write(encodeFrame({ type: 'chunk', id: reply.id }, reply.data.length));
        await this.writePayload(reply);
        this.writing = false;
      }
      if (this.socket.writableNeedDrain) await once(this.socket, 'drain', { signal: this.aborted.signal });
      if ('error' in reply) {
        this.stats.requestsRefused++;
      } else {
        this.stats.chunksServed++;
        this.stats.bytesServed += reply.data.length;
        this.options.log.debug(
          {
            peer: this.peer.name,
            blob: reply.req.blob,
            chunk: reply.req.type === 'get' ? reply.req.chunk : 'manifest',
            bytes: reply.data.length,
          },
          'transfer.peer.served',
        );
      }
    } catch (err) {
      // A write or drain fails only when the connection is gone; 'close' ends the loop.
      if (!this.socket.destroyed && !this.aborted.signal.aborted) throw err;
    } finally {
      this.writing = false;
    }
  }

  /**
   * Writes a reply's bytes. A pooled buffer goes back to the spares only in
   * the last write's callback: until then the socket may still read it.
   */
  private async writePayload({ data, pooled }: Payload): Promise<void> {
    const { limiter } = this.options;
    // The agent always passes its limiter; uncapped (rate Infinity) it would only cost a promise per slice.
    const capped = limiter !== undefined && Number.isFinite(limiter.bytesPerSecond);
    const step = capped ? SLICE_BYTES : UNLIMITED_SLICE_BYTES;
    for (let at = 0; at < data.length && !this.closed; at += step) {
      const last = at + step >= data.length;
      const slice = data.subarray(at, Math.min(at + step, data.length));
      if (capped) await limiter.take(slice.length, this.aborted.signal);
      const flushed =
        pooled && last
          ? (err?: Error | null) => {
              if (!err) this.recycle(pooled);
            }
          : undefined;
      if (!this.socket.write(slice, flushed) && !last)
        await once(this.socket, 'drain', { signal: this.aborted.signal });
    }
  }
}

/** The agent a certificate names: its one `<name>.agent.canopy` DNS SAN. */
function agentName(dnsNames: readonly string[]): string | undefined {
  const agents = dnsNames.filter(
    (n) => n.toLowerCase().endsWith(AGENT_SUFFIX) && n.length > AGENT_SUFFIX.length,
  );
  return agents.length === 1 ? (agents[0] as string).slice(0, -AGENT_SUFFIX.length) : undefined;
}

function revokedMessage(self: string, peer: string, serial: string): string {
  return (
    `${self} refuses agent ${peer}: its certificate (serial ${serial}) is revoked; ` +
    `if ${peer} should be in the fleet, join it again with a new token`
  );
}
