/**
 * Distributions on the coordinator: a file on this machine goes to the
 * target agents over a planned peer tree. The coordinator hashes the file
 * into a manifest, plans who fetches which stripe from whom (the pure
 * planner in src/transfer), serves the chunks itself as the source (a peer
 * server with a certificate it issues to the reserved agent name
 * `canopy-source`, reading the original file), and hands each host a
 * distribution task through the run manager (durable queue, exactly once,
 * deadlines, events). Each host falls back to the source when its parent
 * fails, and reports the bytes it fetched and from whom.
 */
import { type FileHandle, open, stat } from 'node:fs/promises';
import { isAbsolute } from 'node:path';
import type { Logger } from 'pino';
import { CanopyError } from '../errors/index.js';
import { type CertAndKey, createKeyAndCsr, signCsr } from '../pki/index.js';
import type { DistSpec, PeerAddress } from '../protocol/index.js';
import {
  buildManifest,
  chunkRange,
  DEFAULT_STRIPES,
  type Manifest,
  manifestId,
  PeerServer,
  type PlanHost,
  plan,
} from '../transfer/index.js';
import { type Fleet, RESERVED_AGENT_NAME } from './fleet.js';
import { newRunId, type RunManager } from './runs.js';
import type { DistRunSpec, RunRecord } from './store.js';

/** The agent name the coordinator's own peer server (the source) goes by; no agent may join with it. */
export const SOURCE_NAME = RESERVED_AGENT_NAME;
/** 1 MiB: the planner's model puts 32 hosts within 1.03-1.08x of the single-link bound with it. */
export const DEFAULT_DIST_CHUNK = 1024 * 1024;
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
}

export interface DistManagerOptions {
  runs: RunManager;
  fleet: Fleet;
  ca: CertAndKey;
  logger: Logger;
  /** Where the source peer server listens (any port). */
  host: string;
  /** The host agents dial for it (default: the address it listens on). */
  advertiseHost?: () => string | undefined;
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
  private source: { server: PeerServer; address: string } | undefined;

  constructor(private readonly opts: DistManagerOptions) {}

  async create(req: DistRequest, hosts: string[]): Promise<{ record: RunRecord; manifest: Manifest }> {
    if (!isAbsolute(req.path)) {
      throw new CanopyError(
        'USAGE',
        `the source "${req.path}" must be an absolute path on the coordinator's machine`,
      );
    }
    const st = await stat(req.path).catch(() => undefined);
    if (!st?.isFile()) {
      throw new CanopyError(
        'INPUT_NOT_FOUND',
        `the source ${req.path} is not a file on the coordinator's machine`,
        {
          path: req.path,
        },
      );
    }
    const manifest = await buildManifest(req.path, { chunkSize: req.chunkSize ?? DEFAULT_DIST_CHUNK });
    const blob = await manifestId(manifest);
    const active = this.active.get(blob) ?? {
      manifest,
      path: req.path,
      file: undefined,
      runs: new Set<string>(),
    };
    this.active.set(blob, active);
    const source = await this.startSource();
    const plans = this.planHosts(req, hosts, manifest, blob, source);
    const spec: DistRunSpec = {
      kind: 'dist',
      targets: req.targets,
      path: req.path,
      dest: req.dest,
      blob,
      size: manifest.size,
      chunkSize: manifest.chunkSize,
      stripes: plans.stripes,
      timeoutMs: Math.ceil((req.timeout ?? DEFAULT_TIMEOUT_MS / 1000) * 1000),
      concurrency: Math.max(1, hosts.length),
    };
    const id = newRunId(Date.now());
    active.runs.add(id);
    const record = await this.opts.runs.create(spec, hosts, { id, plans: plans.specs, failed: plans.failed });
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

  /** Bytes the source has uploaded since the coordinator started. */
  get sourceBytes(): number {
    return this.source?.server.stats.bytesServed ?? 0;
  }

  /** A distribution finished: its blob is no longer served (once no other run distributes it). */
  finished(run: RunRecord): void {
    if (run.spec.kind !== 'dist') return;
    const a = this.active.get(run.spec.blob);
    if (!a?.runs.delete(run.id) || a.runs.size > 0) return;
    this.active.delete(run.spec.blob);
    void a.file?.then((fh) => fh.close()).catch(() => {});
  }

  async close(): Promise<void> {
    await this.source?.server.close();
    for (const a of this.active.values()) await a.file?.then((fh) => fh.close()).catch(() => {});
    this.active.clear();
  }

  /** Parents per stripe for every host that runs a peer server; the others fail, saying why. */
  private planHosts(
    req: DistRequest,
    hosts: string[],
    manifest: Manifest,
    blob: string,
    source: PeerAddress,
  ) {
    const facts = new Map(this.opts.fleet.list().map((a) => [a.name, a.facts] as const));
    const failed = new Map<string, string>();
    const members: PlanHost[] = [];
    const addresses = new Map<string, PeerAddress>([[SOURCE_NAME, source]]);
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
    const p = plan({
      source: { name: SOURCE_NAME },
      hosts: members,
      chunkCount: Math.max(1, manifest.chunks.length),
      stripes: req.stripes ?? DEFAULT_STRIPES,
    });
    for (const m of members) {
      const parents = (p.parents[m.name] ?? []).map((n) => addresses.get(n) ?? source);
      specs.set(m.name, {
        blob,
        manifest: { ...manifest, chunks: [...manifest.chunks] },
        // `{host}` in dest becomes the host's name (hosts sharing one filesystem: tests, benchmarks).
        dest: req.dest.replaceAll('{host}', m.name),
        ...(req.mode !== undefined ? { mode: req.mode } : {}),
        ...(req.owner ? { owner: req.owner } : {}),
        ...(req.group ? { group: req.group } : {}),
        parents: parents.length > 0 ? parents : [source],
        fallbacks: [source],
        serveForMs: SERVE_FOR_MS,
        stallMs: STALL_MS,
      });
    }
    return { specs, failed, stripes: p.stripes, depth: p.depth };
  }

  /** The coordinator's own peer server, serving chunks straight from the original files. */
  private async startSource(): Promise<PeerAddress> {
    if (this.source) return { name: SOURCE_NAME, address: this.source.address };
    const { keyPem, csrPem } = await createKeyAndCsr(SOURCE_NAME);
    const { certPem } = await signCsr(this.opts.ca, csrPem, { name: SOURCE_NAME, ttlMs: 365 * 86_400_000 });
    const server = new PeerServer({
      identity: { certPem, keyPem },
      caPem: this.opts.ca.certPem,
      authorize: (_peer, blob) => this.active.get(blob)?.manifest,
      isRevoked: (serial) => this.opts.fleet.isRevokedSerial(serial),
      log: this.opts.logger,
      source: (blob, index) => this.readChunk(blob, index),
    });
    const bound = await server.listen(0, this.opts.host);
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
