/**
 * The coordinator's durable state, in one LevelDB (the `level` package).
 *
 * Sublevels: agents, tokens, revoked (certificate serials), runs, results
 * (`RUN/HOST`), queue (`AGENT/TASK`: tasks not yet answered) and plans
 * (`RUN/HOST`: a push run's per-host file list, without content; a
 * distribution's per-host spec, without its manifest), manifests (`BLOB`: a
 * distribution's manifest, once however many hosts and runs share it; see
 * run-plans.ts), interim (`RUN/HOST`: an --activate together host between its
 * steps), and manifestCache / manifestCacheUse (manifests of files on this
 * machine by file identity, see manifest-cache.ts). Writes that
 * must survive a crash go through `commit`, which groups every write issued
 * in the same tick into one synced batch (group commit): one fsync for a
 * burst of 5,000 results instead of 5,000.
 */
import { Level } from 'level';
import type {
  ActivationStep,
  CommandSpec,
  DistSpec,
  DistTask,
  Facts,
  FileOutcome,
  PushMode,
  PushSpec,
  Task,
  TaskResult,
} from '../protocol/index.js';

export interface AgentRecord {
  name: string;
  joinedAt: number;
  /** Serials of every certificate issued to this name. */
  serials: string[];
  certNotAfter: number;
  revokedAt?: number;
  facts?: Facts;
  lastSeen?: number;
  address?: string;
}

export interface TokenRecord {
  id: string;
  secretHash: string;
  createdAt: number;
  expiresAt: number;
  name?: string;
  usedAt?: number;
  usedBy?: string;
}

export type RunSpec = CommandRunSpec | PushRunSpec | DistRunSpec | SourceRunSpec;

export interface CommandRunSpec {
  kind?: 'command';
  targets: string[];
  command: string | string[];
  timeoutMs: number;
  concurrency: number;
  env?: Record<string, string>;
  cwd?: string;
  runAs?: string;
  maxOutputBytes?: number;
  killGraceMs?: number;
}

/** A push: each host's files (dest, MD5, ...) are in the `plans` sublevel, the content only in memory. */
export interface PushRunSpec {
  kind: 'push';
  targets: string[];
  limit?: string[];
  mode: PushMode;
  diff: boolean;
  /** Per validate and notify command. */
  timeoutMs: number;
  concurrency: number;
  /** What the push file named, for display: template or src, and the dest as written. */
  files: { source: string; dest: string }[];
  notify?: string;
}

/** A distribution: each host's parents are in the `plans` sublevel; the blob is read from `path`. */
export interface DistRunSpec {
  kind: 'dist';
  targets: string[];
  /** The file on the coordinator's machine (the source), or on agent `source`. */
  path: string;
  /** The agent that holds the file and serves it (canopy dist --source); else the coordinator. */
  source?: string;
  dest: string;
  blob: string;
  size: number;
  chunkSize: number;
  stripes: number;
  timeoutMs: number;
  concurrency: number;
  /** Each host's link in bytes per second, when the user gave it: the report's bound S/B. */
  linkRate?: number;
  /** The cap on each agent's upload and download, bytes per second. */
  rateLimit?: number;
  /** Stage on every host, then switch all of them (or none): see activation.ts. */
  activate?: 'together';
}

/**
 * canopy dist --source: one task to the agent holding the file, which checks
 * it, answers its manifest (the result's `source`) and serves it.
 */
export interface SourceRunSpec {
  kind: 'source';
  targets: string[];
  path: string;
  chunkSize: number;
  /** How long the agent serves the blob after answering. */
  serveForMs: number;
  rateLimit?: number;
  timeoutMs: number;
  concurrency: number;
}

export interface RunRecord {
  id: string;
  createdAt: number;
  deadline: number;
  spec: RunSpec;
  hosts: string[];
  finishedAt?: number;
  /** --activate together: when the stage step ends (`deadline` is the last step's end). */
  stageDeadline?: number;
  /** --activate together: the step after staging, set once every host staged or failed. */
  phase?: PhaseRecord;
}

/** A host that does not hold the staged file (or failed its check), and why. */
export interface Lacking {
  host: string;
  why: string;
}

/** The current step of an --activate together distribution after staging. */
export interface PhaseRecord {
  step: ActivationStep;
  startedAt: number;
  deadline: number;
  /** The hosts this step's task goes to (those holding a staged copy). */
  hosts: string[];
  /** Hosts without the file or that failed a check: the reason for a discard. */
  lacking: Lacking[];
}

/**
 * A host of an --activate together distribution between steps: its stage
 * result (what it fetched, from whom; the file `staged` or `unchanged`), the
 * last step it passed, and why it refused one.
 */
export interface InterimRecord {
  result: HostResult;
  passed: 'stage' | 'verify';
  refused?: { why: string; code?: string };
}

export const HOST_FINAL_STATES = [
  'ok',
  'failed',
  'timeout',
  'unreachable',
  'refused',
  'interrupted',
] as const;
export type HostFinalState = (typeof HOST_FINAL_STATES)[number];

/** A host result's process fields when no process ran (the protocol's, without the byte counts). */
export { NO_PROCESS } from '../protocol/index.js';

export interface HostResult {
  host: string;
  state: HostFinalState;
  exitCode: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  startedAt: number | null;
  endedAt: number | null;
  durationMs: number | null;
  error?: string;
  receivedAt: number;
  /** Order in which results were recorded (1-based); the SSE event id. */
  seq: number;
  /** Arrived after the run's deadline had already marked the host unreachable. */
  late?: boolean;
  /** Push runs: what happened to each file (diffs computed and masked by the coordinator). */
  files?: FileOutcome[];
  /** Push runs: notify ran (exitCode/stdout/stderr are its). */
  notified?: boolean;
  /** Distribution runs: what the host fetched, from whom, and which peers sent bad chunks. */
  transfer?: TaskResult['transfer'];
  /** Source runs: the manifest of the agent's file and its blob id. */
  source?: TaskResult['source'];
}

/** The stored fields of an agent's result (the caller adds host, receivedAt and seq). */
export function resultFields(r: TaskResult): Omit<HostResult, 'host' | 'receivedAt' | 'seq'> {
  return {
    state: r.state,
    exitCode: r.exitCode,
    signal: r.signal,
    stdout: r.stdout,
    stderr: r.stderr,
    stdoutTruncated: r.stdoutTruncated,
    stderrTruncated: r.stderrTruncated,
    startedAt: r.startedAt,
    endedAt: r.endedAt,
    durationMs: r.durationMs,
    ...(r.error === undefined ? {} : { error: r.error }),
    ...(r.files === undefined ? {} : { files: r.files }),
    ...(r.notified === undefined ? {} : { notified: r.notified }),
    ...(r.transfer === undefined ? {} : { transfer: r.transfer }),
    ...(r.source === undefined ? {} : { source: r.source }),
  };
}

/** A distribution's manifest as the protocol carries it (the chunk digests, size, MD5). */
export type WireManifest = NonNullable<DistSpec['manifest']>;

/**
 * A distribution's spec for one host as stored and held: without the manifest,
 * which is the same for every host and stored once per blob (`manifests`).
 */
export type StoredDistSpec = Omit<DistSpec, 'manifest'>;

/** One host's share of a push run (without the content) or of a distribution. */
export interface PlanRecord {
  /** A distribution's carries its manifest only if written before manifests were stored once per blob. */
  spec: PushSpec | StoredDistSpec | DistSpec;
}

/** A distribution's manifest, stored once under its blob id. */
export interface ManifestRecord {
  manifest: WireManifest;
}

/** A queued task as stored: a distribution task without its manifest (built back when sent). */
export type StoredTask = Exclude<Task, DistTask> | (Omit<DistTask, 'spec'> & { spec: StoredDistSpec });

export interface QueueRecord {
  agent: string;
  task: StoredTask;
  queuedAt: number;
}

/**
 * A manifest of a file on the coordinator's machine, cached under its file
 * identity (manifest-cache.ts): reused only while every field still matches.
 */
export interface CachedManifestRecord {
  path: string;
  dev: string;
  ino: string;
  size: number;
  mtimeNs: string;
  ctimeNs: string;
  chunkSize: number;
  blob: string;
  manifest: WireManifest;
}

export type { CommandSpec };

/** A typed view of one sublevel (the level package's generics do not survive sublevel()). */
export interface Sub<V> {
  get(key: string): Promise<V | undefined>;
  values(range: object): { all(): Promise<V[]> };
  iterator(range: object): { all(): Promise<[string, V][]> };
  keys(range: object): { all(): Promise<string[]> };
}

/** One write of a `commit` batch (`Store.put`, `Store.del`). */
export type BatchOp =
  | { type: 'put'; sublevel: Sub<unknown>; key: string; value: unknown }
  | {
      type: 'del';
      sublevel: Sub<unknown>;
      key: string;
    };

export class Store {
  readonly db: Level<string, unknown>;
  readonly agents: Sub<AgentRecord>;
  readonly tokens: Sub<TokenRecord>;
  readonly revoked: Sub<{ name: string; at: number }>;
  readonly runs: Sub<RunRecord>;
  readonly results: Sub<HostResult>;
  readonly queue: Sub<QueueRecord>;
  readonly plans: Sub<PlanRecord>;
  readonly interim: Sub<InterimRecord>;
  readonly manifests: Sub<ManifestRecord>;
  readonly manifestCache: Sub<CachedManifestRecord>;
  /** The cache's entries by the same key, with when each was last used (small: read whole for the bound). */
  readonly manifestCacheUse: Sub<{ usedAt: number }>;
  private pending: {
    ops: BatchOp[];
    waiters: { resolve: () => void; reject: (e: unknown) => void }[];
  } | null = null;

  constructor(path: string) {
    this.db = new Level<string, unknown>(path, { valueEncoding: 'json' });
    const sub = <V>(name: string) =>
      this.db.sublevel<string, V>(name, { valueEncoding: 'json' }) as unknown as Sub<V>;
    this.agents = sub('agents');
    this.tokens = sub('tokens');
    this.revoked = sub('revoked');
    this.runs = sub('runs');
    this.results = sub('results');
    this.queue = sub('queue');
    this.plans = sub('plans');
    this.interim = sub('interim');
    this.manifests = sub('manifests');
    this.manifestCache = sub('manifestCache');
    this.manifestCacheUse = sub('manifestCacheUse');
  }

  open(): Promise<void> {
    return this.db.open();
  }

  close(): Promise<void> {
    return this.db.close();
  }

  put<V>(sublevel: Sub<V>, key: string, value: V): BatchOp {
    return { type: 'put', sublevel: sublevel as Sub<unknown>, key, value };
  }

  del<V>(sublevel: Sub<V>, key: string): BatchOp {
    return { type: 'del', sublevel: sublevel as Sub<unknown>, key };
  }

  /** Durably applies ops (atomically with every other commit of this tick). */
  commit(ops: BatchOp[]): Promise<void> {
    return new Promise((resolve, reject) => {
      if (!this.pending) {
        this.pending = { ops: [], waiters: [] };
        setImmediate(() => this.flush());
      }
      this.pending.ops.push(...ops);
      this.pending.waiters.push({ resolve, reject });
    });
  }

  private flush(): void {
    const batch = this.pending;
    this.pending = null;
    if (!batch) return;
    // biome-ignore lint/suspicious/noExplicitAny: abstract-level's batch op type is generic over sublevels
    this.db.batch(batch.ops as any, { sync: true }).then(
      () => {
        for (const w of batch.waiters) w.resolve();
      },
      (err: unknown) => {
        for (const w of batch.waiters) w.reject(err);
      },
    );
  }

  async values<V>(sublevel: Sub<V>, prefix?: string): Promise<V[]> {
    const range = prefix === undefined ? {} : { gte: prefix, lt: `${prefix}\xff` };
    return (await sublevel.values(range).all()) as V[];
  }

  async entries<V>(sublevel: Sub<V>, prefix?: string): Promise<[string, V][]> {
    const range = prefix === undefined ? {} : { gte: prefix, lt: `${prefix}\xff` };
    return (await sublevel.iterator(range).all()) as [string, V][];
  }

  /** The keys only (values, a manifest of megabytes, are not read). */
  async keys<V>(sublevel: Sub<V>, prefix?: string): Promise<string[]> {
    const range = prefix === undefined ? {} : { gte: prefix, lt: `${prefix}\xff` };
    return sublevel.keys(range).all();
  }
}
