/**
 * The agent daemon: one outgoing, mutually authenticated TLS 1.3 WebSocket
 * to the coordinator, kept open (jittered exponential backoff), with
 * heartbeats that carry facts. It runs the tasks it receives under its own
 * allowlists, exactly once per task id: the id is journaled before the
 * process starts, the result is journaled before it is sent and re-sent
 * after every reconnect until the coordinator acknowledges it. It also
 * pulls its queue on connect and periodically, so a lost push is found.
 */
import { existsSync } from 'node:fs';
import { mkdir, rm, unlink } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type WebSocketType from 'ws';
import {
  COORDINATOR_SAN,
  certInfo,
  checkSan,
  createKeyAndCsr,
  normalizeSerial,
  verifyIssuedBy,
} from '../pki/index.js';
import {
  type AgentMessage,
  type Content,
  type CoordinatorMessage,
  decodeCoordinatorMessage,
  encode,
  MAX_TIMER_MS,
  type PeerAddress,
  type Task,
  type TaskResult,
  type WithoutV,
} from '../protocol/index.js';
import {
  ChunkPool,
  ChunkStore,
  type Manifest,
  Md5Cache,
  PeerClient,
  PeerServer,
  RateLimiter,
  removeStaleTemps,
  resolveDest,
} from '../transfer/index.js';
import { runActivation } from './activation-task.js';
import { type AgentConfig, parseHostPort } from './config.js';
import { type DistProgress, runDist } from './dist-task.js';
import { type ExecPolicy, runCommand } from './executor.js';
import { gatherFacts } from './facts.js';
import { fitResult } from './fit-result.js';
import { type AgentIdentity, loadRevoked, saveIdentity, saveRevoked } from './identity.js';
import { Journal } from './journal.js';
import { MemoryGovernor } from './memory.js';
import { runPush } from './push-task.js';
import { SeedStore } from './seed-store.js';
import { runSource } from './source-task.js';
import { output as taskOutput } from './task-output.js';
import { runTree } from './tree-task.js';

export interface AgentOptions {
  dataDir: string;
  config: AgentConfig;
  identity: AgentIdentity;
  logger: Logger;
  version: string;
  now?: () => number;
}

// CommonJS packages load through require(): importing CommonJS from ESM starts Node's export
// lexer, which stays resident (~8 MB) — too much of an idle agent's 60 MB.
const WebSocket = createRequire(import.meta.url)('ws') as typeof WebSocketType;

const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
const RECONNECT_BASE_MS = 250;
const CERT_BACKDATE_MS = 60_000;
/** How long a push task waits for the content it asked the coordinator for. */
const FETCH_TIMEOUT_MS = 60_000;
/** How long the peer server holds a request for a chunk it is still fetching. */
const CHUNK_WAIT_MS = 2_000;
/**
 * Memory for the chunks stored last (served to children without a read of
 * the pack). Children stay a chunk or two behind, so a few chunks suffice;
 * the rest comes from the pack file (the page cache). Kept small for the
 * relay's memory budget (RSS under 100 MB whatever the blob's size).
 */
const RECENT_CHUNK_BYTES = 4 * 1024 * 1024;
/** Distribution progress goes to the coordinator at most this often. */
const PROGRESS_EVERY_MS = 1_000;

interface PendingFetch {
  resolve: (m: Content) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * Where and how an agent opens its control channel: TLS 1.3 with its own certificate, the pinned
 * CA, and the coordinator recognised by its SAN (not by the address dialled).
 */
export function controlSocket(
  id: AgentIdentity,
  opts: { coordinator?: string; bind?: string; handshakeTimeoutMs?: number } = {},
): { url: string; options: WebSocketType.ClientOptions } {
  const options = {
    ca: id.caPem,
    cert: id.certPem,
    key: id.keyPem,
    minVersion: 'TLSv1.3',
    checkServerIdentity: checkSan(COORDINATOR_SAN),
    maxPayload: MAX_MESSAGE_BYTES,
    handshakeTimeout: opts.handshakeTimeoutMs ?? 10_000,
    ...(opts.bind ? { localAddress: opts.bind } : {}),
  };
  return {
    url: `${(opts.coordinator ?? id.url).replace(/^https:/, 'wss:')}/v1/agent`,
    // ws types checkServerIdentity wrongly; it is passed to tls.connect as is.
    options: options as unknown as WebSocketType.ClientOptions,
  };
}

export class Agent {
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly journal: Journal;
  private readonly policy: ExecPolicy;
  private identity: AgentIdentity;
  private ws: WebSocketType | undefined;
  private attempt = 0;
  private stopped = false;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private beatTimer: NodeJS.Timeout | undefined;
  private pullTimer: NodeJS.Timeout | undefined;
  private lastHeard = 0;
  private readonly running = new Map<string, AbortController>();
  private readonly startedAt: number;
  private pendingKey: string | undefined;
  private renewing = false;
  private readonly md5Cache = new Md5Cache();
  /** The chunk relay (peer_listen): blobs this agent may serve, and until when. */
  private peer: { server: PeerServer; store: ChunkStore; address: string } | undefined;
  private readonly serving = new Map<string, { manifest: Manifest; until: number; rateLimit?: number }>();
  /** Directory distributions this host holds completely: their root, served to children until `until`. */
  private readonly trees = new Map<
    string,
    { root: string; filter: string; until: number; rateLimit?: number }
  >();
  /** Blobs whose source is a file on this host (canopy dist --source): served from the file. */
  private readonly seeds: SeedStore;
  /** Peers' manifest requests waiting for a blob this agent is still getting the manifest of. */
  private readonly manifestWaiters = new Map<string, Set<() => void>>();
  /** Collects dead chunk buffers while distributions fetch (memory.ts). */
  private readonly memory = new MemoryGovernor();
  /** Blobs a running distribution task is fetching (with how many tasks). */
  private readonly fetching = new Map<string, number>();
  /** The peer server's upload cap: the lowest --rate-limit of the distributions served. */
  private readonly uploadLimit = new RateLimiter({ bytesPerSecond: Number.POSITIVE_INFINITY });
  private readonly fetches = new Map<string, PendingFetch>();
  /**
   * Certificate serials the coordinator revoked (its `revoked` message, the whole set each time);
   * the peer server refuses them. Memory only: empty from start until the first hello is answered.
   */
  private revokedSerials = new Set<string>();
  /**
   * Peers whose address is not the one our tasks name (they restarted on
   * another port): the coordinator's `peers` messages, since our last hello.
   */
  private readonly peerAddresses = new Map<string, string>();
  /** Received chunks' buffers, used again across fetches and distributions (chunk-pool.ts). */
  private readonly chunkPool = new ChunkPool();
  /** Resolves when the agent has said hello at least once (tests and the demo wait on it). */
  readonly ready: Promise<void>;
  private markReady: () => void = () => {};

  constructor(private readonly opts: AgentOptions) {
    this.log = opts.logger;
    this.now = opts.now ?? Date.now;
    this.identity = opts.identity;
    this.journal = new Journal(join(opts.dataDir, 'journal'));
    const roots = opts.config.roots.length > 0 ? opts.config.roots : [join(opts.dataDir, 'work')];
    this.policy = {
      roots,
      runAs: opts.config.runAs,
      defaultCwd: roots[0] ?? '/',
      allowSetid: opts.config.allowSetid,
    };
    this.seeds = new SeedStore({
      dir: join(opts.dataDir, 'seeds'),
      host: opts.identity.name,
      policy: this.policy,
      log: this.log,
      now: this.now,
      serve: (blob, manifest, until, rateLimit) => {
        const s = { manifest, until: Math.max(until, this.serving.get(blob)?.until ?? 0) };
        this.serving.set(blob, rateLimit ? { ...s, rateLimit } : s);
        this.applyUploadLimit();
      },
      ended: (blob) => {
        const s = this.serving.get(blob);
        if (s && s.until <= this.now()) this.serving.delete(blob);
        this.applyUploadLimit();
      },
    });
    this.startedAt = this.now();
    this.ready = new Promise((resolve) => {
      this.markReady = resolve;
    });
  }

  get name(): string {
    return this.identity.name;
  }

  async start(): Promise<void> {
    if (this.opts.config.roots.length === 0)
      await mkdir(this.policy.defaultCwd, { recursive: true, mode: 0o700 });
    // Before the peer server listens: a restarted --source serves its seeds from the first request,
    // and no agent revoked while this one was down is served or fetched from.
    await this.seeds.restore();
    try {
      this.revokedSerials = await loadRevoked(this.opts.dataDir);
      if (this.revokedSerials.size > 0)
        this.log.info({ revoked: this.revokedSerials.size }, 'revoked serials loaded from revoked.json');
    } catch (err) {
      this.log.error({ err }, 'ignoring revoked.json until the coordinator sends the revoked serials again');
    }
    // Tree filters of an earlier run: nothing is served from them after a restart.
    await rm(join(this.opts.dataDir, 'trees'), { recursive: true, force: true });
    if (this.opts.config.peerListen) await this.startPeer(this.opts.config.peerListen);
    const interrupted = await this.journal.open(this.now());
    for (const r of interrupted) {
      if (await this.redoActivation(r.taskId)) continue;
      this.log.warn({ task: r.taskId }, 'task was running when the agent stopped; reporting it interrupted');
      await this.cleanInterruptedPush(r.taskId);
    }
    for (const task of this.journal.resumable) {
      if (task.kind !== 'dist') continue;
      // The temp file of the killed attempt is useless: the chunk store holds what was verified.
      const dest = await resolveDest(task.spec.dest, this.policy.roots);
      if (dest.ok) await removeStaleTemps(dest.path);
      this.log.warn({ task: task.id }, 'distribution was running when the agent stopped; resuming it');
      void this.execute(task);
    }
    this.connect();
  }

  /** Stops: closes the channel and stops running commands (their results are kept as interrupted). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.beatTimer);
    clearInterval(this.pullTimer);
    for (const c of this.running.values()) c.abort(new Error('agent stopping'));
    const deadline = this.now() + 10_000;
    while (this.running.size > 0 && this.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    this.ws?.close(1001, 'agent stopping');
    await this.peer?.server.close();
    await this.peer?.store.close();
    await this.seeds.close();
  }

  /**
   * Opens the chunk store and the peer server other agents fetch chunks from:
   * mutual TLS with this agent's certificate; only agents of the fleet, only
   * blobs of a distribution this agent takes part in.
   */
  private async startPeer(listen: string): Promise<void> {
    const where = parseHostPort(listen);
    if (!where) throw new Error(`peer_listen "${listen}" is not HOST:PORT`);
    const store = await ChunkStore.open(join(this.opts.dataDir, 'chunks'), {
      quotaBytes: this.opts.config.chunkQuotaBytes,
      // A relay's chunks are re-verified by whoever receives them: no fsync per chunk (see ChunkStore).
      durable: false,
      // Children ask for a chunk right after it lands here: serve it from memory, not from disk.
      cacheBytes: RECENT_CHUNK_BYTES,
    });
    const server = new PeerServer({
      identity: { certPem: this.identity.certPem, keyPem: this.identity.keyPem },
      caPem: this.identity.caPem,
      authorize: (_peer, blob) => {
        const s = this.serving.get(blob);
        return s && s.until > this.now() ? s.manifest : undefined;
      },
      // A tree is served only once this host's own pull of it finished: children pull a whole level.
      authorizeTree: (_peer, id) => {
        const t = this.trees.get(id);
        return t && t.until > this.now() ? { root: t.root, filter: t.filter } : undefined;
      },
      awaitManifest: (_peer, blob) => this.awaitServing(blob),
      isRevoked: (serial) => this.revokedSerials.has(normalizeSerial(serial)),
      log: this.log,
      store,
      // A chunk of a blob this agent is still fetching: answer when it lands (a long poll), so
      // children stay one chunk behind without asking again and again.
      source: async (blob, index, manifest, into) => {
        if (this.seeds.has(blob)) return this.seeds.chunk(blob, index);
        const digest = manifest.chunks[index];
        if (!digest || !this.fetching.has(blob)) return undefined;
        if (!(await store.waitFor(digest, CHUNK_WAIT_MS))) return undefined;
        // Into the connection's own buffer: pooled chunks are not kept in memory, they are read back.
        return store.get(digest, into ? { into } : {}).catch(() => undefined);
      },
      limiter: this.uploadLimit,
    });
    const bound = await server.listen(where.port, where.host);
    const host = bound.address.includes(':') ? `[${bound.address}]` : bound.address;
    this.peer = { server, store, address: `${host}:${bound.port}` };
    this.log.info({ peer: this.peer.address }, 'peer server listening');
  }

  private send(message: WithoutV<AgentMessage>): boolean {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(encode(message));
    return true;
  }

  private connect(): void {
    if (this.stopped) return;
    const id = this.identity;
    const { url, options } = controlSocket(id, {
      ...(this.opts.config.coordinator ? { coordinator: this.opts.config.coordinator } : {}),
      ...(this.opts.config.bind ? { bind: this.opts.config.bind } : {}),
    });
    const ws = new WebSocket(url, options);
    this.ws = ws;
    let refusedCode: string | undefined;
    ws.on('unexpected-response', (_req, res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        let body: { code?: string; message?: string } = {};
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch {
          // not JSON
        }
        refusedCode = body.code;
        this.log.error(
          { status: res.statusCode, code: body.code },
          `the coordinator refused this agent: ${body.message ?? res.statusMessage}${body.code === 'AGENT_REVOKED' ? ' (re-join with a new token: canopy agent --join TOKEN)' : ''}`,
        );
        ws.terminate();
        this.scheduleReconnect(refusedCode);
      });
    });
    ws.on('open', () => {
      this.lastHeard = this.now();
      this.log.info({ url }, 'connected to the coordinator');
      this.send({ type: 'hello', facts: this.facts(), running: [...this.running.keys()] });
      this.startTimers();
    });
    ws.on('message', (data, isBinary) => {
      this.lastHeard = this.now();
      if (isBinary) return;
      const decoded = decodeCoordinatorMessage(data.toString());
      if (!decoded.ok) {
        this.log.warn({ reason: decoded.reason }, 'refused an invalid message from the coordinator');
        return;
      }
      this.handle(decoded.message).catch((err: unknown) => {
        this.log.error({ err, type: decoded.message.type }, 'handling a coordinator message failed');
      });
    });
    ws.on('pong', () => {
      this.lastHeard = this.now();
    });
    ws.on('close', (code, reason) => {
      if (this.ws !== ws) return;
      this.failFetches(`lost the connection to the coordinator while fetching content (close ${code})`);
      clearInterval(this.beatTimer);
      clearInterval(this.pullTimer);
      if (!this.stopped && refusedCode === undefined) {
        this.log.warn(
          { code, reason: reason.toString() },
          'lost the connection to the coordinator; reconnecting',
        );
        this.scheduleReconnect(undefined);
      }
    });
    ws.on('error', (err) => {
      if (refusedCode === undefined) this.log.debug({ err: err.message }, 'connection error');
    });
  }

  private scheduleReconnect(refusedCode: string | undefined): void {
    if (this.stopped) return;
    clearTimeout(this.reconnectTimer);
    const max = this.opts.config.reconnectMaxMs;
    const ceiling = refusedCode ? max : Math.min(max, RECONNECT_BASE_MS * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    const wait = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    this.reconnectTimer = setTimeout(() => this.connect(), wait);
  }

  private startTimers(): void {
    clearInterval(this.beatTimer);
    const hb = this.opts.config.heartbeatMs;
    this.beatTimer = setInterval(() => {
      if (this.now() - this.lastHeard > 3 * hb) {
        this.log.warn(
          { silentMs: this.now() - this.lastHeard },
          'no sign of the coordinator for three heartbeats; reconnecting',
        );
        this.ws?.terminate();
        return;
      }
      this.send({ type: 'heartbeat', facts: this.facts(), running: [...this.running.keys()] });
      // Ping only after a quiet interval: at 5,000 agents a pong per heartbeat is real coordinator work.
      if (this.now() - this.lastHeard >= hb) this.ws?.ping();
    }, hb);
  }

  private facts() {
    const facts = gatherFacts(this.opts.config, this.opts.version, this.startedAt, this.now());
    return this.peer ? { ...facts, peer: this.peer.address } : facts;
  }

  private async handle(m: CoordinatorMessage): Promise<void> {
    switch (m.type) {
      case 'welcome': {
        this.attempt = 0;
        // The coordinator tells again what still differs, after this welcome.
        this.peerAddresses.clear();
        for (const r of await this.journal.unacknowledged())
          this.send({ type: 'result', result: fitResult(r) });
        this.send({ type: 'pull' });
        clearInterval(this.pullTimer);
        this.pullTimer = setInterval(() => this.send({ type: 'pull' }), m.pullIntervalMs);
        this.markReady();
        await this.maybeRenew();
        return;
      }
      case 'task':
        await this.onTask(m.task);
        return;
      case 'result-ack':
        await this.journal.acknowledge(m.taskId);
        return;
      case 'renewed':
        await this.onRenewed(m.cert);
        return;
      case 'content': {
        const pending = this.fetches.get(m.taskId);
        if (!pending) return;
        this.fetches.delete(m.taskId);
        clearTimeout(pending.timer);
        pending.resolve(m);
        return;
      }
      case 'refuse':
        this.log.warn({ code: m.code }, `the coordinator refused a message: ${m.message}`);
        return;
      case 'revoked':
        await this.onRevoked(m.serials);
        return;
      case 'ended':
        await this.onEnded(m.blobs);
        return;
      case 'peers':
        for (const p of m.peers) this.peerAddresses.set(p.name, p.address);
        this.log.info({ peers: m.peers }, 'peer addresses changed');
        return;
      default:
        assertNeverMessage(m);
    }
  }

  private async onTask(task: Task): Promise<void> {
    if (task.host !== this.identity.name) {
      this.log.warn(
        { task: task.id, host: task.host },
        `refused a task addressed to "${task.host}", not this agent`,
      );
      return;
    }
    if (this.running.has(task.id)) {
      this.send({ type: 'ack', taskId: task.id });
      return;
    }
    if (this.journal.hasStarted(task.id)) {
      this.send({ type: 'ack', taskId: task.id });
      const stored = await this.journal.result(task.id);
      if (stored) this.send({ type: 'result', result: fitResult(stored) });
      return;
    }
    if (task.expiresInMs <= 0) {
      this.log.warn({ task: task.id }, 'not starting a task whose run deadline has passed');
      return;
    }
    await this.execute(task);
  }

  /** Runs a task (new, or a distribution resumed after a restart) and reports its result. */
  private async execute(task: Task): Promise<void> {
    const controller = new AbortController();
    this.running.set(task.id, controller); // before any await: a duplicate message must see it
    let result: TaskResult;
    try {
      const startedAt = this.now();
      await this.journal.markStarted(task, startedAt);
      this.send({ type: 'ack', taskId: task.id });
      const r =
        task.kind === 'push'
          ? await this.push(task, controller.signal)
          : task.kind === 'dist'
            ? await this.dist(task, controller.signal)
            : task.kind === 'activation'
              ? await this.activation(task)
              : task.kind === 'source'
                ? await this.source(task)
                : await this.command(task, controller.signal);
      const aborted = controller.signal.aborted;
      result = fitResult({
        taskId: task.id,
        runId: task.runId,
        ...r,
        state: aborted ? 'interrupted' : r.state,
      });
      if (r.state === 'refused') {
        this.log.warn(
          { task: task.id, run: task.runId, reason: r.error },
          'refused a task from the coordinator',
        );
      }
      await this.journal.saveResult(result);
    } finally {
      this.running.delete(task.id);
    }
    this.log.info({ task: task.id, state: result.state, exitCode: result.exitCode }, 'task finished');
    this.send({ type: 'result', result });
  }

  /**
   * Becomes the source of a distribution (canopy dist --source): hashes the
   * file into the manifest the coordinator plans with, records the seed in
   * DATA/seeds (seed-store.ts: a restart serves it again), then serves the
   * blob from the file until the task's serveForMs has passed.
   */
  private async source(task: Extract<Task, { kind: 'source' }>) {
    this.log.info({ task: task.id, path: task.spec.path }, 'building the manifest of a distribution source');
    if (!this.peer) {
      const error = `agent "${this.name}" serves no chunks: start it with --peer-listen HOST:PORT to be a --source`;
      return taskOutput(this.now(), this.now(), 'refused', error);
    }
    return runSource(task, { policy: this.policy, record: (seed) => this.seeds.add(seed), now: this.now });
  }

  /** A step on a staged distributed file (verify, activate, discard): local, short, idempotent. */
  private async activation(task: Extract<Task, { kind: 'activation' }>) {
    this.log.info({ task: task.id, step: task.spec.step, dest: task.spec.dest }, 'running activation step');
    return runActivation(task, {
      policy: this.policy,
      backupDir: join(this.opts.dataDir, 'backups'),
      cache: this.md5Cache,
      now: this.now,
    });
  }

  private async command(task: Extract<Task, { kind: 'command' }>, signal: AbortSignal) {
    this.log.info({ task: task.id, command: task.spec.command }, 'running task');
    return runCommand(task.spec, this.policy, { signal });
  }

  /** Fetches a blob's chunks from its parents over the peer channel, serves them on, installs the file. */
  private async dist(task: Extract<Task, { kind: 'dist' }>, signal: AbortSignal) {
    const peer = this.peer;
    if (!peer) {
      const error =
        'this agent relays no chunks: start it with --peer-listen HOST:PORT (peer_listen in its config)';
      return taskOutput(this.now(), this.now(), 'refused', error);
    }
    if (task.spec.tree) return this.tree(task, signal);
    this.log.info(
      {
        task: task.id,
        blob: task.spec.blob,
        dest: task.spec.dest,
        parents: task.spec.parents.map((p) => p.name),
      },
      'running distribution task',
    );
    const blob = task.spec.blob;
    const download = task.spec.rateLimit
      ? new RateLimiter({ bytesPerSecond: task.spec.rateLimit })
      : undefined;
    let lastReport = 0;
    let pendingReport: NodeJS.Timeout | undefined;
    let latest: DistProgress | undefined;
    let fetched = 0;
    const report = () => {
      pendingReport = undefined;
      lastReport = this.now();
      if (latest) this.send({ type: 'progress', taskId: task.id, ...latest });
    };
    this.fetching.set(blob, (this.fetching.get(blob) ?? 0) + 1);
    let r: Awaited<ReturnType<typeof runDist>>;
    try {
      r = await runDist(task, {
        policy: this.policy,
        backupDir: join(this.opts.dataDir, 'backups'),
        store: peer.store,
        pool: this.chunkPool,
        connect: (p) => {
          const address = this.addressOf(p);
          const where = parseHostPort(address);
          if (!where) throw new Error(`peer ${p.name} has no valid address (${address})`);
          return PeerClient.connect({
            ...where,
            peer: p.name,
            identity: { certPem: this.identity.certPem, keyPem: this.identity.keyPem },
            caPem: this.identity.caPem,
            // Answers are long polls of up to CHUNK_WAIT_MS: silence means a dead link only well past that.
            stallTimeoutMs: Math.max(2 * task.spec.stallMs, 3 * CHUNK_WAIT_MS),
            ...(download ? { limiter: download } : {}),
            // A revoked agent is not served by our peer server, nor fetched from.
            isRevoked: (serial) => this.revokedSerials.has(serial),
            pool: this.chunkPool,
            signal,
          });
        },
        serve: (b, manifest, until) => {
          this.serving.set(b, {
            manifest,
            until,
            ...(task.spec.rateLimit ? { rateLimit: task.spec.rateLimit } : {}),
          });
          this.applyUploadLimit();
          for (const wake of this.manifestWaiters.get(b) ?? []) wake();
          this.manifestWaiters.delete(b);
        },
        progress: (p) => {
          latest = p;
          this.memory.received(p.fetchedBytes - fetched);
          fetched = p.fetchedBytes;
          if (pendingReport) return;
          const wait = PROGRESS_EVERY_MS - (this.now() - lastReport);
          if (wait <= 0) report();
          else pendingReport = setTimeout(report, wait);
        },
        signal,
        now: this.now,
      });
    } finally {
      const n = (this.fetching.get(blob) ?? 1) - 1;
      if (n > 0) this.fetching.set(blob, n);
      else this.fetching.delete(blob);
      // Idle again: no free chunk buffers kept (up to 8 MiB) for a distribution that may never come.
      if (this.fetching.size === 0) this.chunkPool.clear();
      if (pendingReport) {
        clearTimeout(pendingReport);
        report();
      }
    }
    const release = setTimeout(() => {
      peer.store.unpin(task.id);
      const s = this.serving.get(blob);
      if (s && s.until <= this.now()) this.serving.delete(blob);
      this.applyUploadLimit();
    }, task.spec.serveForMs);
    release.unref();
    return r;
  }

  /** A peer's address: the coordinator's latest word on it, else what the task says. */
  private addressOf(p: PeerAddress): string {
    return this.peerAddresses.get(p.name) ?? p.address;
  }

  /** Pulls a directory distribution's tree with rsync from its parent, then serves it to its children. */
  private async tree(task: Extract<Task, { kind: 'dist' }>, signal: AbortSignal) {
    const id = task.spec.tree?.id ?? '';
    this.log.info(
      { task: task.id, tree: id, dest: task.spec.dest, parent: task.spec.parents[0]?.name },
      'running directory distribution task',
    );
    const rateLimit = task.spec.rateLimit;
    const r = await runTree(task, {
      policy: this.policy,
      dataDir: this.opts.dataDir,
      canopy: canopyArgv(),
      ready: (tree, root, filter) => {
        this.trees.set(tree, {
          root,
          filter,
          until: this.now() + task.spec.serveForMs,
          ...(rateLimit ? { rateLimit } : {}),
        });
        this.applyUploadLimit(); // serving the tree counts against --rate-limit too
      },
      // Throttled by runTree (once a second), the last one with the tree's whole size.
      progress: (p) => this.send({ type: 'progress', taskId: task.id, ...p }),
      addressOf: (p) => this.addressOf(p),
      signal,
      now: this.now,
    });
    const release = setTimeout(() => {
      const t = this.trees.get(id);
      if (t && t.until <= this.now()) this.dropTree(id);
      this.applyUploadLimit();
    }, task.spec.serveForMs + 1_000);
    release.unref();
    return r;
  }

  /**
   * The manifest of `blob` once this agent serves it, if a distribution of it
   * runs here (it is getting the manifest from its own parent); undefined
   * after CHUNK_WAIT_MS or if none runs (the peer asks again).
   */
  private async awaitServing(blob: string): Promise<Manifest | undefined> {
    if (!this.fetching.has(blob)) return undefined;
    await new Promise<void>((resolve) => {
      const waiters = this.manifestWaiters.get(blob) ?? new Set<() => void>();
      const done = () => {
        clearTimeout(timer);
        waiters.delete(done);
        if (waiters.size === 0 && this.manifestWaiters.get(blob) === waiters)
          this.manifestWaiters.delete(blob);
        resolve();
      };
      const timer = setTimeout(done, CHUNK_WAIT_MS);
      waiters.add(done);
      this.manifestWaiters.set(blob, waiters);
    });
    const s = this.serving.get(blob);
    return s && s.until > this.now() ? s.manifest : undefined;
  }

  /** Stops serving a tree and removes its filter file; true when it was served. */
  private dropTree(id: string): boolean {
    const t = this.trees.get(id);
    if (!t) return false;
    this.trees.delete(id);
    void unlink(t.filter).catch(() => {});
    return true;
  }

  /** The upload cap is the lowest rate limit among the blobs and trees served now; none: no cap. */
  private applyUploadLimit(): void {
    let cap = Number.POSITIVE_INFINITY;
    const now = this.now();
    for (const s of [...this.serving.values(), ...this.trees.values()]) {
      if (s.until > now && s.rateLimit) cap = Math.min(cap, s.rateLimit);
    }
    if (cap === this.uploadLimit.bytesPerSecond) return;
    this.uploadLimit.setRate(cap);
    this.log.info({ bytesPerSecond: Number.isFinite(cap) ? cap : null }, 'peer upload cap');
  }

  private async push(task: Extract<Task, { kind: 'push' }>, signal: AbortSignal) {
    this.log.info(
      { task: task.id, mode: task.spec.mode, files: task.spec.files.map((f) => f.dest) },
      'running push task',
    );
    return runPush(task, {
      policy: this.policy,
      backupDir: join(this.opts.dataDir, 'backups'),
      cache: this.md5Cache,
      fetch: (indexes) => this.fetchContent(task.id, indexes),
      signal,
    });
  }

  /** Asks the coordinator for the content of a push task's files; fails if the channel drops. */
  private fetchContent(taskId: string, indexes: number[]): Promise<Map<number, Buffer>> {
    return new Promise<Content>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.fetches.delete(taskId);
        reject(new Error(`the coordinator sent no content within ${FETCH_TIMEOUT_MS / 1000} s`));
      }, FETCH_TIMEOUT_MS);
      this.fetches.set(taskId, { resolve, reject, timer });
      if (!this.send({ type: 'fetch', taskId, files: indexes })) {
        this.fetches.delete(taskId);
        clearTimeout(timer);
        reject(new Error('not connected to the coordinator'));
      }
    }).then((m) => {
      if (m.error) throw new Error(m.error);
      return new Map(m.files.map((f) => [f.index, Buffer.from(f.data, 'base64')]));
    });
  }

  private failFetches(why: string): void {
    for (const [id, f] of this.fetches) {
      clearTimeout(f.timer);
      f.reject(new Error(why));
      this.fetches.delete(id);
    }
  }

  /**
   * An activation step the agent died in is run again before anything else
   * (each step is idempotent: an activate that already switched finds the
   * destination holding the file), and its real result replaces the
   * journal's `interrupted` one. Returns false for any other task.
   */
  private async redoActivation(taskId: string): Promise<boolean> {
    const task = await this.journal.startedTask(taskId);
    if (task?.kind !== 'activation') return false;
    this.log.warn(
      { task: taskId, step: task.spec.step },
      'activation step was interrupted; running it again',
    );
    const r = await this.activation(task);
    await this.journal.saveResult({ taskId: task.id, runId: task.runId, ...r });
    return true;
  }

  /** A push killed mid-install may have left temporary files beside its destinations: remove them. */
  private async cleanInterruptedPush(taskId: string): Promise<void> {
    const task = await this.journal.startedTask(taskId);
    if (task?.kind !== 'push') return;
    for (const f of task.spec.files) {
      const dest = await resolveDest(f.dest, this.policy.roots);
      if (!dest.ok) continue;
      const removed = await removeStaleTemps(dest.path);
      if (removed.length > 0)
        this.log.warn({ task: taskId, removed }, 'removed temporary files of an interrupted push');
    }
  }

  /** Renews the certificate once two thirds of its lifetime have passed. */
  private async maybeRenew(): Promise<void> {
    if (this.renewing) return;
    const info = certInfo(this.identity.certPem);
    // The CA backdates notBefore by a minute for clock skew; the lifetime counts from issuance.
    const issued = info.notBefore.getTime() + CERT_BACKDATE_MS;
    const renewAt = issued + ((info.notAfter.getTime() - issued) * 2) / 3;
    if (this.now() < renewAt) {
      clearTimeout(this.renewTimer);
      this.renewTimer = setTimeout(
        () => {
          this.maybeRenew().catch((err: unknown) => this.log.warn({ err }, 'certificate renewal failed'));
        },
        Math.min(renewAt - this.now() + 50, MAX_TIMER_MS),
      );
      this.renewTimer.unref();
      return;
    }
    this.renewing = true;
    const { keyPem, csrPem } = await createKeyAndCsr(this.identity.name);
    this.pendingKey = keyPem;
    this.log.info({ notAfter: info.notAfter }, 'renewing the agent certificate');
    if (!this.send({ type: 'renew', csr: csrPem })) this.renewing = false;
  }

  private renewTimer: NodeJS.Timeout | undefined;

  private renewPeerServer(): void {
    if (!this.peer) return;
    try {
      this.peer.server.setCredentials({ certPem: this.identity.certPem, keyPem: this.identity.keyPem });
      this.log.info(
        { serial: certInfo(this.identity.certPem).serial },
        'peer server serves the renewed certificate',
      );
    } catch (err) {
      this.log.error(
        { err },
        'the peer server keeps its old certificate; restart the agent before it expires',
      );
    }
  }

  /**
   * Distributions that ended: their blobs and trees are no longer served (new
   * requests are refused as not authorized), and seeds of them end.
   */
  private async onEnded(ids: string[]): Promise<void> {
    let stopped = 0;
    for (const id of ids) {
      const blob = this.serving.delete(id);
      const tree = this.dropTree(id);
      if ((await this.seeds.stop(id)) || blob || tree) stopped++;
    }
    this.applyUploadLimit();
    if (stopped > 0) this.log.info({ blobs: ids, stopped }, 'dist.ended');
  }

  /** Takes the coordinator's revoked serials; hangs up peer connections made with one newly revoked. */
  private async onRevoked(serials: string[]): Promise<void> {
    const next = new Set(serials.map(normalizeSerial));
    const added = [...next].filter((s) => !this.revokedSerials.has(s)).length;
    const removed = [...this.revokedSerials].some((s) => !next.has(s));
    this.revokedSerials = next;
    if (added > 0 || removed) {
      // For `canopy peer-rsh` (a process of its own) and for this agent after a restart.
      await saveRevoked(this.opts.dataDir, next).catch((err: unknown) =>
        this.log.error(
          { err },
          'could not write revoked.json: rsync pulls do not know the newly revoked agents',
        ),
      );
    }
    if (added === 0 || !this.peer) return;
    const dropped = await this.peer.server.dropRevoked();
    this.log.info({ revoked: next.size, added, dropped }, 'peer server took the revoked serials');
  }

  private async onRenewed(certPem: string): Promise<void> {
    const key = this.pendingKey;
    this.renewing = false;
    if (
      !key ||
      !verifyIssuedBy(certPem, this.identity.caPem) ||
      certInfo(certPem).commonName !== this.identity.name
    ) {
      this.log.warn('ignored a renewed certificate that is not for this agent from the pinned CA');
      return;
    }
    this.identity = { ...this.identity, certPem, keyPem: key };
    this.pendingKey = undefined;
    // New peer connections, both ways, use the new certificate (dist's connect reads this.identity
    // when it dials; peer-rsh reads the file saved next); open ones keep theirs and run on.
    this.renewPeerServer();
    await saveIdentity(this.opts.dataDir, this.identity);
    this.log.info({ notAfter: certInfo(certPem).notAfter }, 'agent certificate renewed');
    await this.maybeRenew();
  }
}

function assertNeverMessage(m: never): never {
  throw new Error(`unhandled coordinator message ${JSON.stringify(m)}`);
}

/**
 * The argv that runs this canopy's CLI (rsync's remote shell is `canopy
 * peer-rsh`): node with dist/src/cli/main.js beside this module, or, when
 * the agent runs from the TypeScript sources, main.ts through tsx.
 */
function canopyArgv(): string[] {
  const js = fileURLToPath(new URL('../cli/main.js', import.meta.url));
  if (existsSync(js)) return [process.execPath, js];
  return [process.execPath, '--import', 'tsx', fileURLToPath(new URL('../cli/main.ts', import.meta.url))];
}
