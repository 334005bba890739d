/**
 * Distributions on the coordinator: a file on this machine goes to the
 * target agents over a planned peer tree. The coordinator hashes the file
 * into a manifest (not again while the file is unchanged: manifest-cache.ts),
 * plans who fetches which stripe from whom (the pure planner in
 * src/transfer), serves the chunks itself as the source (a peer
 * server with a certificate it issues to the reserved agent name
 * `canopy-source`, reading the original file), and hands each host a
 * distribution task through the run manager (durable queue, exactly once,
 * deadlines, events). Each host falls back to the source when its parent
 * fails, and reports the bytes it fetched and from whom. With `activate:
 * together` each host only stages the file, and the run manager switches
 * all of them or none (activation.ts).
 */
import { createHash, randomBytes } from 'node:crypto';
import { type FileHandle, lstat, open, readdir, stat } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import type { Logger } from 'pino';
import { CanopyError } from '../errors/index.js';
import { type CertAndKey, createKeyAndCsr, signCsr } from '../pki/index.js';
import type { DistSpec, FileOutcome, PeerAddress, Progress } from '../protocol/index.js';
import {
  chunkRange,
  DEFAULT_STRIPES,
  type Manifest,
  PeerServer,
  type Plan,
  type PlanHost,
  type PlanInput,
  plan,
  rejoinParents,
  replan,
} from '../transfer/index.js';
import type { ActivationView } from './activation.js';
import { askAgentSource } from './dist-source.js';
import { type Fleet, RESERVED_AGENT_NAME } from './fleet.js';
import { ManifestCache } from './manifest-cache.js';
import { DEADLINE_SLACK_MS, newRunId, type RunManager } from './runs.js';
import type { DistRunSpec, RunRecord, StoredDistSpec } from './store.js';

/** The agent name the coordinator's own peer server (the source) goes by; no agent may join with it. */
export const SOURCE_NAME = RESERVED_AGENT_NAME;
/**
 * 256 KiB: measured on the shaped-link benchmark (bench/README.md), a
 * pipelined chain of 256 KiB chunks reached 1.095x the single-link bound at
 * 8 hosts where 1 MiB chunks over 4 stripes took 1.41x (a hop costs a chunk's
 * time on the link; with 1 MiB and 4 stripes that is 1.3 s at 25 Mbit/s).
 */
export const DEFAULT_DIST_CHUNK = 256 * 1024;
/**
 * Up to this many hosts the default plan is one stripe (each host relays to
 * one other: a pipelined chain, every link carrying the file once); above it,
 * DEFAULT_STRIPES interleaved trees keep the depth small. Measured: 4 stripes
 * lost 10-25% of throughput to jitter between stripes (a stalled stripe
 * cannot lend its share to another) at 8 hosts.
 */
export const CHAIN_UP_TO = 64;
const DEFAULT_TIMEOUT_MS = 3_600_000;
const SERVE_FOR_MS = 10 * 60_000;
const STALL_MS = 5_000;

export interface DistRequest {
  path: string;
  dest: string;
  targets: string[];
  mode?: number;
  owner?: string;
  group?: string;
  chunkSize?: number;
  stripes?: number;
  /** Seconds. */
  timeout?: number;
  /** Bytes per second: caps every agent's upload and download. */
  rateLimit?: number;
  /** Bytes per second: each host's link, for the ratio to the bound S/B. */
  linkRate?: number;
  /** A directory source: delete files in dest the tree does not have (rsync --delete). */
  delete?: boolean;
  /** `together`: every host stages the file; all switch only once all have it (activation.ts). */
  activate?: 'together';
  /** The agent that holds the file at `path` and serves it (dist-source.ts); else this machine. */
  source?: string;
}

/** One host's last progress report. */
interface HostProgress {
  bytes: number;
  failedPeers: string[];
}

/** The fleet's progress in one distribution (the `progress` event, and GET /v1/dists/:id). */
export interface DistProgress {
  at: number;
  size: number;
  hosts: number;
  /** Bytes verified on all hosts together, and the total (size x hosts). */
  bytes: number;
  totalBytes: number;
  /** Hosts holding every chunk. */
  complete: number;
  /** Bytes per second over the fleet, over the last few seconds. */
  rate: number;
  /** Seconds until the last host is done at the current rate (null before there is a rate). */
  etaSeconds: number | null;
  elapsedSeconds: number;
  /** Per IDC ('' = unlabelled): hosts, complete, bytes. */
  idcs: Record<string, { hosts: number; complete: number; bytes: number }>;
  /** Up to three unfinished hosts with the fewest bytes. */
  slowest: { host: string; bytes: number }[];
  /** Peers some host gave up on (dead, stalled or bad chunks). */
  failedPeers: string[];
  sourceBytes: number;
  /** With linkRate: the single-link bound S/B in seconds. */
  boundSeconds: number | null;
  /** --activate together: the step the fleet is on, hosts staged, and hosts lacking the file. */
  activation?: ActivationView;
}

interface Tracker {
  /** The blob (or tree id) the run distributes. */
  blob: string;
  startedAt: number;
  size: number;
  hosts: string[];
  idcOf: Map<string, string>;
  /** Each host's last report. */
  progress: Map<string, HostProgress>;
  samples: { at: number; bytes: number }[];
  sourceAtStart: number;
  linkRate: number | undefined;
  timer: NodeJS.Timeout;
  last: DistProgress | undefined;
}

const PROGRESS_EVERY_MS = 1_000;

export interface DistManagerOptions {
  runs: RunManager;
  fleet: Fleet;
  ca: CertAndKey;
  logger: Logger;
  /** Where the source peer server listens (any port). */
  host: string;
  /** The host agents dial for it (default: the address it listens on). */
  advertiseHost?: () => string | undefined;
  /** Manifests of source files by file identity (default: kept in the run manager's store). */
  manifests?: ManifestCache;
}

interface Active {
  manifest: Manifest;
  path: string;
  /** Opened on the first chunk served, closed when the last run of this blob finishes. */
  file: Promise<FileHandle> | undefined;
  runs: Set<string>;
}

export class DistManager {
  private readonly active = new Map<string, Active>();
  /** Directory distributions running: tree id -> the source directory the source serves. */
  private readonly trees = new Map<string, { root: string; runs: Set<string> }>();
  private readonly trackers = new Map<string, Tracker>();
  private source: { server: PeerServer; address: string } | undefined;
  /** An unchanged source file is not hashed again (manifest-cache.ts). */
  private readonly manifests: ManifestCache;

  constructor(private readonly opts: DistManagerOptions) {
    this.manifests = opts.manifests ?? new ManifestCache({ store: opts.runs.store, logger: opts.logger });
  }

  async create(req: DistRequest, hosts: string[]): Promise<{ record: RunRecord; manifest: Manifest }> {
    if (!isAbsolute(req.path)) {
      throw new CanopyError(
        'USAGE',
        `the source "${req.path}" must be an absolute path on ${req.source ? `agent "${req.source}"` : "the coordinator's machine"}`,
      );
    }
    if (req.source) return this.createFromAgent(req, req.source, hosts);
    const st = await stat(req.path).catch(() => undefined);
    if (st?.isDirectory() && req.activate) {
      throw new CanopyError(
        'USAGE',
        `--activate together is for a file; ${req.path} is a directory (each host publishes a tree ` +
          `with rsync --delay-updates as soon as its pull ends): distribute it without --activate`,
        { path: req.path },
      );
    }
    if (st?.isDirectory()) return this.createTree(req, hosts);
    if (!st?.isFile()) {
      throw new CanopyError(
        'INPUT_NOT_FOUND',
        `the source ${req.path} is not a file on the coordinator's machine`,
        {
          path: req.path,
        },
      );
    }
    const { manifest, blob } = await this.manifests.manifest(req.path, req.chunkSize ?? DEFAULT_DIST_CHUNK);
    const active = this.active.get(blob) ?? {
      manifest,
      path: req.path,
      file: undefined,
      runs: new Set<string>(),
    };
    this.active.set(blob, active);
    const source = await this.startSource();
    const plans = this.planHosts(req, hosts, manifest, blob, source);
    const sourceAtStart = this.sourceBytes;
    const spec = distRunSpec(req, manifest, blob, plans.stripes, hosts.length);
    const id = newRunId(Date.now());
    active.runs.add(id);
    this.track(id, spec, [...plans.specs.keys()], sourceAtStart);
    let record: RunRecord;
    try {
      record = await this.opts.runs.create(spec, hosts, { id, plans: plans.specs, failed: plans.failed });
    } catch (err) {
      this.untrack(id);
      throw err;
    }
    this.opts.logger.info(
      {
        dist: record.id,
        blob,
        size: manifest.size,
        hosts: hosts.length,
        stripes: plans.stripes,
        depth: plans.depth,
      },
      'distribution planned',
    );
    return { record, manifest };
  }

  /**
   * --source HOST: the file is on an agent, which hashes it and serves it
   * (dist-source.ts); the coordinator's own source serves nothing. HOST is
   * the plan's root and every host's last fallback; it is no target, and
   * when the targets name it, it holds the file already (at its path).
   */
  private async createFromAgent(
    req: DistRequest,
    host: string,
    hosts: string[],
  ): Promise<{ record: RunRecord; manifest: Manifest }> {
    const timeoutMs = Math.ceil((req.timeout ?? DEFAULT_TIMEOUT_MS / 1000) * 1000);
    const source = await askAgentSource(this.opts, {
      host,
      path: req.path,
      chunkSize: req.chunkSize ?? DEFAULT_DIST_CHUNK,
      timeoutMs,
      // The stage's deadline, then as long as relays serve on.
      serveForMs: timeoutMs + DEADLINE_SLACK_MS + SERVE_FOR_MS,
      ...(req.rateLimit ? { rateLimit: req.rateLimit } : {}),
    });
    const { manifest, blob } = source;
    const plans = this.planHosts(
      req,
      hosts.filter((h) => h !== host),
      manifest,
      blob,
      source.address,
      undefined,
      source.plan,
    );
    const spec: DistRunSpec = {
      ...distRunSpec(req, manifest, blob, plans.stripes, hosts.length),
      source: host,
    };
    const held = new Map<string, FileOutcome>();
    if (hosts.includes(host)) {
      const md5 = manifest.md5;
      held.set(host, { dest: req.path, state: 'unchanged', oldMd5: md5, newMd5: md5, content: false });
    }
    const id = newRunId(Date.now());
    this.track(id, spec, [...plans.specs.keys()], this.sourceBytes);
    let record: RunRecord;
    try {
      record = await this.opts.runs.create(spec, hosts, {
        id,
        plans: plans.specs,
        failed: plans.failed,
        held,
      });
    } catch (err) {
      this.untrack(id);
      throw err;
    }
    this.opts.logger.info(
      { dist: record.id, blob, source: host, path: req.path, size: manifest.size, hosts: hosts.length },
      'distribution planned from an agent',
    );
    return { record, manifest };
  }

  /**
   * A directory: no manifest and no chunks. Each host pulls the tree with
   * rsync from its parent in a one-stripe plan (the source, serving the
   * directory itself, at the top and as every host's fallback), and serves it
   * on once its own pull is complete. The manifest returned only carries the
   * tree's total file size.
   */
  private async createTree(
    req: DistRequest,
    hosts: string[],
  ): Promise<{ record: RunRecord; manifest: Manifest }> {
    const size = await treeSize(req.path);
    const treeId = randomBytes(32).toString('hex');
    const manifest: Manifest = {
      version: 1,
      size,
      chunkSize: DEFAULT_DIST_CHUNK,
      chunks: [],
      md5: createHash('md5').update('').digest('hex'),
    };
    const source = await this.startSource();
    const tree = { root: req.path, runs: new Set<string>() };
    this.trees.set(treeId, tree);
    const plans = this.planHosts({ ...req, stripes: 1 }, hosts, manifest, treeId, source, {
      id: treeId,
      ...(req.delete ? { delete: true } : {}),
    });
    const spec: DistRunSpec = {
      kind: 'dist',
      targets: req.targets,
      path: req.path,
      dest: req.dest,
      blob: treeId,
      size,
      chunkSize: manifest.chunkSize,
      stripes: plans.stripes,
      timeoutMs: Math.ceil((req.timeout ?? DEFAULT_TIMEOUT_MS / 1000) * 1000),
      concurrency: Math.max(1, hosts.length),
      ...(req.linkRate ? { linkRate: req.linkRate } : {}),
    };
    const id = newRunId(Date.now());
    tree.runs.add(id);
    this.track(id, spec, [...plans.specs.keys()], this.sourceBytes);
    let record: RunRecord;
    try {
      record = await this.opts.runs.create(spec, hosts, { id, plans: plans.specs, failed: plans.failed });
    } catch (err) {
      this.untrack(id);
      this.trees.delete(treeId);
      throw err;
    }
    this.opts.logger.info(
      { dist: record.id, tree: treeId, path: req.path, size, hosts: hosts.length, depth: plans.depth },
      'directory distribution planned',
    );
    return { record, manifest };
  }

  /** Bytes the source has uploaded since the coordinator started: chunks, and trees' rsync output. */
  get sourceBytes(): number {
    const server = this.source?.server;
    return server ? server.stats.bytesServed + server.rsyncStats.bytesSent : 0;
  }

  /** Hangs up the source's connections from agent `name`, just revoked (its next requests are refused). */
  dropRevoked(name: string): void {
    const server = this.source?.server;
    if (!server) return;
    server.dropRevoked().then(
      (dropped) => this.opts.logger.info({ agent: name, dropped }, 'dist.source.dropped_revoked'),
      (err: unknown) => this.opts.logger.warn({ err, agent: name }, 'dist.source.drop_revoked_failed'),
    );
  }

  /**
   * Agent `name` said hello. If its peer address is not the one it had (it
   * restarted with `--peer-listen HOST:0` and got another port), the hosts of
   * every running distribution it takes part in are told the new one (a
   * `peers` message), so its children and anyone falling back to it find it.
   * And it is told the current address of every peer its own running tasks
   * name at another one (a peer that moved while it was away, or this
   * coordinator's source after a restart on another port).
   */
  welcomed(name: string, previousPeer: string | undefined): void {
    const fleet = this.opts.fleet;
    const current = fleet.peerOf(name);
    const runs = this.opts.runs.activeRecords().filter((r) => r.spec.kind === 'dist');
    if (current && previousPeer && current !== previousPeer) {
      const to = new Set<string>();
      for (const r of runs) {
        if (r.spec.kind !== 'dist' || !(r.hosts.includes(name) || r.spec.source === name)) continue;
        for (const h of r.hosts) to.add(h);
        if (r.spec.source) to.add(r.spec.source);
      }
      to.delete(name);
      let told = 0;
      for (const h of to) if (fleet.send(h, { type: 'peers', peers: [{ name, address: current }] })) told++;
      if (to.size > 0)
        this.opts.logger.info({ agent: name, from: previousPeer, to: current, told }, 'dist.peer_moved');
    }
    const stale = new Map<string, string>();
    for (const r of runs) {
      const spec = this.opts.runs.plansOf(r.id)?.get(name);
      if (!spec || !('blob' in spec)) continue;
      for (const p of [
        ...spec.parents,
        ...(spec.alternates ?? []),
        ...(spec.rejoin ?? []),
        ...spec.fallbacks,
      ]) {
        const now = p.name === SOURCE_NAME ? this.source?.address : fleet.peerOf(p.name);
        if (now && now !== p.address) stale.set(p.name, now);
      }
    }
    if (stale.size === 0) return;
    const peers = [...stale].map(([peer, address]) => ({ name: peer, address })).slice(0, 1024);
    fleet.send(name, { type: 'peers', peers });
    this.opts.logger.info({ agent: name, peers }, 'dist.peers_corrected');
  }

  /** A progress report from an agent's distribution task (task ids are RUN:HOST). */
  progress(agent: string, p: Progress): void {
    const run = p.taskId.slice(0, p.taskId.indexOf(':'));
    const t = this.trackers.get(run);
    if (!t?.idcOf.has(agent)) return;
    t.progress.set(agent, { bytes: Math.min(p.bytes, t.size), failedPeers: p.failedPeers });
  }

  /**
   * An unfinished distribution's tree and per-host bytes (GET /v1/dists/:id):
   * each host's parent per stripe, and the bytes it holds.
   */
  detailOf(run: string): { parents: Record<string, string[]>; bytes: Record<string, number> } | undefined {
    const t = this.trackers.get(run);
    const plans = this.opts.runs.plansOf(run);
    if (!t || !plans) return undefined;
    const parents: Record<string, string[]> = {};
    for (const [host, spec] of plans) {
      if ('parents' in spec) parents[host] = spec.parents.map((p) => p.name);
    }
    const bytes: Record<string, number> = {};
    for (const h of t.hosts) bytes[h] = t.progress.get(h)?.bytes ?? 0;
    return { parents, bytes };
  }

  /** The latest progress of an unfinished distribution. */
  progressOf(run: string): DistProgress | undefined {
    const t = this.trackers.get(run);
    return t ? this.snapshot(t, run) : undefined;
  }

  /**
   * After a coordinator restart: serves the blobs of the distributions that
   * were still running (their stored plans hold the manifest and the source's
   * old address, which it listens on again if it can) so that hosts still
   * fetching from the source, or falling back to it, go on.
   */
  async resume(): Promise<void> {
    for (const record of this.opts.runs.activeRecords()) {
      const spec = record.spec;
      if (spec.kind !== 'dist') continue;
      if (spec.source) {
        // Its agent serves the blob (for the time the source task gave it); nothing to serve here.
        this.track(record.id, spec, [...(this.opts.runs.plansOf(record.id)?.keys() ?? [])], this.sourceBytes);
        continue;
      }
      const plan = [...(this.opts.runs.plansOf(record.id)?.values() ?? [])].find(
        (p): p is StoredDistSpec => 'blob' in p,
      );
      const manifest = this.opts.runs.manifestOf(record.id);
      const st = await stat(spec.path).catch(() => undefined);
      if (plan?.tree && st?.isDirectory()) {
        const tree = this.trees.get(plan.tree.id) ?? { root: spec.path, runs: new Set<string>() };
        tree.runs.add(record.id);
        this.trees.set(plan.tree.id, tree);
        const old = plan.fallbacks.find((f) => f.name === SOURCE_NAME);
        await this.startSource(old ? Number(old.address.slice(old.address.lastIndexOf(':') + 1)) || 0 : 0);
        this.track(record.id, spec, [...(this.opts.runs.plansOf(record.id)?.keys() ?? [])], this.sourceBytes);
        this.opts.logger.info({ dist: record.id, tree: plan.tree.id }, 'directory distribution resumed');
        continue;
      }
      if (!plan || !manifest || plan.tree || st?.size !== spec.size) {
        this.opts.logger.warn(
          { dist: record.id, path: spec.path, manifest: manifest !== undefined },
          'cannot serve a resumed distribution: its source file is gone or changed size (or its manifest ' +
            'is not in the store); hosts that need the source will fail when their stall window passes',
        );
        continue;
      }
      const active = this.active.get(spec.blob) ?? {
        manifest,
        path: spec.path,
        file: undefined,
        runs: new Set<string>(),
      };
      active.runs.add(record.id);
      this.active.set(spec.blob, active);
      const old = plan.fallbacks.find((f) => f.name === SOURCE_NAME);
      await this.startSource(old ? Number(old.address.slice(old.address.lastIndexOf(':') + 1)) || 0 : 0);
      this.track(record.id, spec, [...(this.opts.runs.plansOf(record.id)?.keys() ?? [])], this.sourceBytes);
      this.opts.logger.info(
        { dist: record.id, blob: spec.blob },
        'distribution resumed: serving its blob again',
      );
    }
  }

  /**
   * A distribution finished: once no other run distributes its blob, the
   * source stops serving it, and so do its hosts (an `ended` message).
   */
  finished(run: RunRecord): void {
    if (run.spec.kind !== 'dist') return;
    this.untrack(run.id);
    const blob = run.spec.blob;
    if (![...this.trackers.values()].some((t) => t.blob === blob)) this.tellEnded(run, blob);
    const tree = this.trees.get(run.spec.blob);
    if (tree) {
      tree.runs.delete(run.id);
      if (tree.runs.size === 0) this.trees.delete(run.spec.blob);
      return;
    }
    const a = this.active.get(run.spec.blob);
    if (!a?.runs.delete(run.id) || a.runs.size > 0) return;
    this.active.delete(run.spec.blob);
    void a.file?.then((fh) => fh.close()).catch(() => {});
  }

  /**
   * Tells the run's online hosts (and its --source agent) to stop serving the
   * blob now; one offline stops at its serve deadline, as before.
   */
  private tellEnded(run: RunRecord, blob: string): void {
    if (run.spec.kind !== 'dist') return;
    const to = new Set(run.hosts);
    if (run.spec.source) to.add(run.spec.source);
    let told = 0;
    for (const host of to) if (this.opts.fleet.send(host, { type: 'ended', blobs: [blob] })) told++;
    this.opts.logger.info({ dist: run.id, blob, hosts: to.size, told }, 'dist.ended');
  }

  async close(): Promise<void> {
    for (const id of [...this.trackers.keys()]) this.untrack(id);
    await this.source?.server.close();
    for (const a of this.active.values()) await a.file?.then((fh) => fh.close()).catch(() => {});
    this.active.clear();
    this.trees.clear();
  }

  /** Parents per stripe for every host that runs a peer server; the others fail, saying why. */
  private planHosts(
    req: DistRequest,
    hosts: string[],
    manifest: Manifest,
    blob: string,
    source: PeerAddress,
    tree?: DistSpec['tree'],
    root: PlanHost = { name: SOURCE_NAME },
  ) {
    const facts = new Map(this.opts.fleet.list().map((a) => [a.name, a.facts] as const));
    const failed = new Map<string, string>();
    const members: PlanHost[] = [];
    const addresses = new Map<string, PeerAddress>([[source.name, source]]);
    for (const host of hosts) {
      const f = facts.get(host);
      if (!f?.peer) {
        if (f) failed.set(host, `agent "${host}" runs no peer server: start it with --peer-listen HOST:PORT`);
        continue;
      }
      addresses.set(host, { name: host, address: f.peer });
      members.push({
        name: host,
        ...(f.labels.idc ? { idc: f.labels.idc } : {}),
        ...(f.labels.rack ? { rack: f.labels.rack } : {}),
      });
    }
    const specs = new Map<string, DistSpec>();
    if (members.length === 0) return { specs, failed, stripes: 0, depth: 0 };
    const input = {
      source: root,
      hosts: members,
      chunkCount: Math.max(1, manifest.chunks.length),
      stripes: req.stripes ?? (members.length <= CHAIN_UP_TO ? 1 : DEFAULT_STRIPES),
    };
    const p = plan(input);
    const alternates = alternatesOf(p, input);
    const rejoin = input.hosts.length <= 2_000 ? rejoinParents(p, input) : {};
    // One manifest object (with the mutable chunk list the wire type wants) shared by every host.
    const wire = { ...manifest, chunks: [...manifest.chunks] };
    for (const m of members) {
      const parents = (p.parents[m.name] ?? []).map((n) => addresses.get(n) ?? source);
      const alt = (alternates.get(m.name) ?? []).map((n) => addresses.get(n) ?? source);
      const back = (rejoin[m.name] ?? []).map((n, s) => (n && addresses.get(n)) || parents[s] || source);
      specs.set(m.name, {
        blob,
        manifest: wire,
        // `{host}` in dest becomes the host's name (hosts sharing one filesystem: tests, benchmarks).
        dest: req.dest.replaceAll('{host}', m.name),
        ...(req.mode !== undefined ? { mode: req.mode } : {}),
        ...(req.owner ? { owner: req.owner } : {}),
        ...(req.group ? { group: req.group } : {}),
        parents: parents.length > 0 ? parents : [source],
        ...(alt.length === parents.length && parents.length > 0 ? { alternates: alt } : {}),
        ...(back.length === parents.length && parents.length > 0 ? { rejoin: back } : {}),
        ...(req.rateLimit ? { rateLimit: req.rateLimit } : {}),
        fallbacks: [source],
        serveForMs: SERVE_FOR_MS,
        stallMs: STALL_MS,
        ...(tree ? { tree } : {}),
        ...(req.activate ? { activate: req.activate } : {}),
      });
    }
    return { specs, failed, stripes: p.stripes, depth: p.depth };
  }

  private track(run: string, spec: DistRunSpec, hosts: string[], sourceAtStart: number): void {
    const labels = new Map(this.opts.fleet.list().map((a) => [a.name, a.facts?.labels ?? {}] as const));
    const t: Tracker = {
      blob: spec.blob,
      startedAt: Date.now(),
      size: spec.size,
      hosts,
      idcOf: new Map(hosts.map((h) => [h, labels.get(h)?.idc ?? ''] as const)),
      progress: new Map(),
      samples: [],
      sourceAtStart,
      linkRate: spec.linkRate,
      timer: setInterval(() => {
        const snap = this.snapshot(t, run);
        const same = (a?: ActivationView, b?: ActivationView) =>
          a?.step === b?.step && a?.staged === b?.staged && a?.lacking.length === b?.lacking.length;
        if (
          t.last &&
          snap.bytes === t.last.bytes &&
          snap.complete === t.last.complete &&
          same(snap.activation, t.last.activation)
        )
          return;
        t.last = snap;
        this.opts.runs.publish(run, { type: 'progress', progress: snap });
      }, PROGRESS_EVERY_MS),
      last: undefined,
    };
    t.timer.unref();
    this.trackers.set(run, t);
  }

  private untrack(run: string): void {
    const t = this.trackers.get(run);
    if (!t) return;
    clearInterval(t.timer);
    this.trackers.delete(run);
  }

  private snapshot(t: Tracker, run: string): DistProgress {
    const now = Date.now();
    let bytes = 0;
    let complete = 0;
    const idcs: DistProgress['idcs'] = {};
    const failed = new Set<string>();
    const open: { host: string; bytes: number }[] = [];
    for (const h of t.hosts) {
      const b = t.progress.get(h)?.bytes ?? 0;
      for (const f of t.progress.get(h)?.failedPeers ?? []) failed.add(f);
      bytes += b;
      const idc = t.idcOf.get(h) ?? '';
      const row = idcs[idc] ?? { hosts: 0, complete: 0, bytes: 0 };
      idcs[idc] = row;
      row.hosts++;
      row.bytes += b;
      if (b >= t.size) {
        complete++;
        row.complete++;
      } else open.push({ host: h, bytes: b });
    }
    t.samples.push({ at: now, bytes });
    while (t.samples.length > 2 && now - (t.samples[0]?.at ?? now) > 5_000) t.samples.shift();
    const first = t.samples[0] ?? { at: now, bytes };
    const rate = now > first.at ? ((bytes - first.bytes) * 1000) / (now - first.at) : 0;
    const totalBytes = t.size * t.hosts.length;
    // The fleet finishes when its slowest host does: ETA from the slowest host at the per-host rate.
    const slowest = open.sort((a, b) => a.bytes - b.bytes).slice(0, 3);
    const perHost = t.hosts.length > 0 ? rate / t.hosts.length : 0;
    const lag = slowest[0] ? t.size - slowest[0].bytes : 0;
    return {
      at: now,
      size: t.size,
      hosts: t.hosts.length,
      bytes,
      totalBytes,
      complete,
      rate: Math.round(rate),
      etaSeconds: lag === 0 ? 0 : perHost > 0 ? lag / perHost : null,
      elapsedSeconds: (now - t.startedAt) / 1000,
      idcs,
      slowest,
      failedPeers: [...failed],
      sourceBytes: this.sourceBytes - t.sourceAtStart,
      boundSeconds: t.linkRate ? t.size / t.linkRate : null,
      ...optional('activation', this.opts.runs.activationOf(run)),
    };
  }

  /** The coordinator's own peer server, serving chunks straight from the original files. */
  private async startSource(port = 0): Promise<PeerAddress> {
    if (this.source) return { name: SOURCE_NAME, address: this.source.address };
    const { keyPem, csrPem } = await createKeyAndCsr(SOURCE_NAME);
    const { certPem } = await signCsr(this.opts.ca, csrPem, { name: SOURCE_NAME, ttlMs: 365 * 86_400_000 });
    const server = new PeerServer({
      identity: { certPem, keyPem },
      caPem: this.opts.ca.certPem,
      authorize: (_peer, blob) => this.active.get(blob)?.manifest,
      authorizeTree: (_peer, id) => {
        const tree = this.trees.get(id);
        return tree ? { root: tree.root } : undefined;
      },
      isRevoked: (serial) => this.opts.fleet.isRevokedSerial(serial),
      log: this.opts.logger,
      source: (blob, index) => this.readChunk(blob, index),
    });
    const bound = await server.listen(port, this.opts.host).catch((err) => {
      if (port === 0) throw err;
      this.opts.logger.warn({ err, port }, 'the source cannot listen on its old port again; using another');
      return server.listen(0, this.opts.host);
    });
    const dial = this.opts.advertiseHost?.() ?? bound.address;
    const host = dial.includes(':') ? `[${dial}]` : dial;
    this.source = { server, address: `${host}:${bound.port}` };
    this.opts.logger.info({ peer: this.source.address }, 'distribution source listening');
    return { name: SOURCE_NAME, address: this.source.address };
  }

  private async readChunk(blob: string, index: number): Promise<Uint8Array | undefined> {
    const a = this.active.get(blob);
    if (!a) return undefined;
    const { offset, length } = chunkRange(a.manifest, index);
    a.file ??= open(a.path, 'r');
    const buf = Buffer.allocUnsafe(length);
    const { bytesRead } = await (await a.file).read(buf, 0, length, offset);
    return bytesRead === length ? buf : undefined;
  }
}

/**
 * The coordinator's re-parenting, worked out with the plan: for each host
 * and stripe, its parent there should that parent fail (the planner's
 * replan with that one parent taken out). Computed for every parent up to
 * 2,000 hosts; above that, orphans fall back to the source.
 */
function alternatesOf(p: Plan, input: PlanInput): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const parents = new Set(Object.values(p.parents).flat());
  parents.delete(p.source);
  if (input.hosts.length > 2_000) return out;
  for (const host of Object.keys(p.parents)) {
    out.set(
      host,
      (p.parents[host] ?? []).map(() => p.source),
    );
  }
  for (const failed of parents) {
    const r = replan(p, input, [failed]);
    for (const [host, ps] of Object.entries(p.parents)) {
      ps.forEach((parent, s) => {
        if (parent !== failed) return;
        const alt = out.get(host);
        const next = r.parents[host]?.[s];
        if (alt && next && next !== failed) alt[s] = next;
      });
    }
  }
  return out;
}

/** The run record's spec of a file distribution. */
function distRunSpec(
  req: DistRequest,
  manifest: Manifest,
  blob: string,
  stripes: number,
  hosts: number,
): DistRunSpec {
  return {
    kind: 'dist',
    targets: req.targets,
    path: req.path,
    dest: req.dest,
    blob,
    size: manifest.size,
    chunkSize: manifest.chunkSize,
    stripes,
    timeoutMs: Math.ceil((req.timeout ?? DEFAULT_TIMEOUT_MS / 1000) * 1000),
    concurrency: Math.max(1, hosts),
    ...(req.linkRate ? { linkRate: req.linkRate } : {}),
    ...(req.rateLimit ? { rateLimit: req.rateLimit } : {}),
    ...(req.activate ? { activate: req.activate } : {}),
  };
}

function optional<K extends string, V>(key: K, value: V | undefined): Partial<Record<K, V>> {
  return value === undefined ? {} : ({ [key]: value } as Record<K, V>);
}

/** The total size of the regular files under `dir` (symlinks are not followed). */
async function treeSize(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) total += await treeSize(p);
    else if (e.isFile()) total += (await lstat(p)).size;
  }
  return total;
}
