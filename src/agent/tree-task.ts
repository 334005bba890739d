/**
 * A directory distribution on the agent: pull the tree with the system rsync
 * (syncFromPeer, tunnelled through the peer channel by `canopy peer-rsh`)
 * from this host's parent in the planned tree into the destination
 * directory, with --partial (an interrupted pull resumes) and deltas against
 * what the host already has. The parent serves the tree only once its own
 * pull has finished (the agent's `authorizeTree`), so the tree fills level by
 * level: while the parent refuses (TRANSFER_PEER_FORBIDDEN: not ready yet),
 * the pull is retried for a bounded wait; then, or when the parent is gone,
 * the next candidate (the coordinator's alternate, then the source) is
 * tried. Once the pull succeeds, `ready` lets this host serve the tree to its
 * own children.
 *
 * Progress: rsync's own count of the file data done (`--info=progress2`, read
 * by syncFromPeer) goes to `progress` at most once a second, as bytes of the
 * tree held here; the coordinator compares them with the tree's total size
 * (it scanned the source directory). Until the pull has ended the figure
 * stays below that size (a host is complete only when its pull is), then the
 * last report gives the whole size. `--rate-limit` (spec.rateLimit) becomes
 * rsync's --bwlimit, which the serving rsync applies to what it sends.
 */
import { lstat, mkdir, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { isCanopyError } from '../errors/index.js';
import type { DistTask, PeerAddress, TaskResult } from '../protocol/index.js';
import {
  bwlimitKiB,
  isInside,
  PEER_CODES,
  resolveDest,
  type SyncFromPeerOptions,
  type SyncProgress,
  type SyncResult,
  syncFromPeer,
  treeFilter,
} from '../transfer/index.js';
import { parseHostPort } from './config.js';
import { candidatesFor, type DistProgress, sleep } from './dist-task.js';
import type { ExecPolicy } from './executor.js';
import { output } from './task-output.js';

type TreeOutput = Omit<TaskResult, 'taskId' | 'runId'>;

export interface TreeContext {
  policy: ExecPolicy;
  /** This agent's data directory (peer-rsh reads the agent's identity there). */
  dataDir: string;
  /** The argv that runs the canopy CLI (rsync's remote shell is `canopy peer-rsh`). */
  canopy: readonly string[];
  /** The pull finished: serve `root` as the tree, only the entries `filter` (a treeFilter file) names. */
  ready: (treeId: string, root: string, filter: string) => void;
  /** How long a parent that is not ready yet is asked again before the next candidate; default 10 min. */
  parentWaitMs?: number;
  /** Between two asks of a parent that is not ready; default 500 ms. */
  retryMs?: number;
  signal?: AbortSignal;
  now?: () => number;
  /** The pull (tests replace it). */
  sync?: (o: SyncFromPeerOptions) => Promise<SyncResult>;
  /**
   * Where the pull stands (the agent sends it to the coordinator): bytes of
   * the tree held here (treeProgressBytes), peers given up on; at most once
   * per `progressEveryMs`, and, when the pull succeeded, once more with the
   * whole size and rsync's wire bytes.
   */
  progress?: (p: DistProgress) => void;
  /** Between two progress reports while pulling; default 1 s. */
  progressEveryMs?: number;
  /** Where a peer is now (the coordinator tells an agent's new address); default the task's. */
  addressOf?: (peer: PeerAddress) => string;
}

const PARENT_WAIT_MS = 10 * 60_000;
const PROGRESS_EVERY_MS = 1_000;
const RETRY_MS = 500;
/** Pulls from one candidate that failed on the link (not a refusal) before the next candidate. */
const LINK_ATTEMPTS = 2;
/** A name no tree is likely to hold: checking it with resolveDest checks its directory (the dest). */
const PROBE = '.canopy-tree-dest-check';

export async function runTree(task: DistTask, ctx: TreeContext): Promise<TreeOutput> {
  const now = ctx.now ?? Date.now;
  const startedAt = now();
  const spec = task.spec;
  const tree = spec.tree;
  const out = (state: TreeOutput['state'], error?: string, extra: Partial<TreeOutput> = {}): TreeOutput => ({
    ...output(startedAt, now(), state, error),
    ...extra,
  });
  if (!tree) return out('failed', 'not a directory distribution (the task has no tree)');
  const dest = await treeDest(spec.dest, ctx.policy.roots);
  if (!dest.ok) return out('refused', dest.reason);
  let bwlimit: number | undefined;
  try {
    bwlimit = spec.rateLimit === undefined ? undefined : bwlimitKiB(spec.rateLimit);
  } catch (err) {
    return out('refused', (err as Error).message);
  }

  const first = spec.parents[0];
  const candidates = first ? candidatesFor(first, spec.alternates?.[0], spec.fallbacks) : spec.fallbacks;
  const sync = ctx.sync ?? syncFromPeer;
  const failures: string[] = [];
  const failedPeers: string[] = [];
  const size = spec.manifest?.size ?? 0; // a tree's task always carries its manifest (its size)
  /** rsync's count of file data done, the best of the attempts (a resumed pull counts again from 0). */
  let done = 0;
  const reports = new Throttle<DistProgress>(
    (p) => ctx.progress?.(p),
    ctx.progressEveryMs ?? PROGRESS_EVERY_MS,
    now,
  );
  const pulling = (): DistProgress => ({
    chunks: 0,
    bytes: treeProgressBytes(done, size),
    // rsync tells its bytes on the wire only when it ends.
    fetchedBytes: 0,
    failedPeers: failedPeers.slice(0, 64),
  });
  const onProgress = (p: SyncProgress) => {
    const before = treeProgressBytes(done, size);
    done = Math.max(done, p.bytes);
    if (treeProgressBytes(done, size) > before) reports.update(pulling());
  };
  let noRsync = false;
  try {
    for (const peer of candidates) {
      const address = ctx.addressOf?.(peer) ?? peer.address;
      const where = parseHostPort(address);
      if (!where) {
        failures.push(`${peer.name}: no valid address (${address})`);
        continue;
      }
      const deadline = now() + (ctx.parentWaitMs ?? PARENT_WAIT_MS);
      let linkFailures = 0;
      for (;;) {
        if (ctx.signal?.aborted) return out('interrupted', `stopped while pulling tree ${tree.id}`);
        try {
          const r = await sync({
            peer: { name: peer.name, host: where.host, port: where.port },
            tree: tree.id,
            localPath: dest.path,
            dataDir: ctx.dataDir,
            canopy: ctx.canopy,
            partial: true,
            // Set-id files only where the agent allows them (allow_setid), as for pushed files.
            stripSetid: !ctx.policy.allowSetid,
            // The tree's entries, to serve children those and not the rest of this directory.
            listEntries: true,
            ...(tree.delete ? { delete: true } : {}),
            ...(spec.rateLimit !== undefined ? { rateLimit: spec.rateLimit } : {}),
            ...(ctx.progress ? { progress: onProgress } : {}),
            ...(ctx.signal ? { signal: ctx.signal } : {}),
          });
          const filter = join(ctx.dataDir, 'trees', `${tree.id}.filter`);
          await mkdir(dirname(filter), { recursive: true, mode: 0o700 });
          await writeFile(filter, treeFilter(r.entries ?? []), { mode: 0o600 });
          ctx.ready(tree.id, dest.path, filter);
          reports.stop();
          ctx.progress?.({
            chunks: 0,
            bytes: size,
            fetchedBytes: r.bytesReceived,
            failedPeers: failedPeers.slice(0, 64),
          });
          return out('ok', undefined, {
            exitCode: r.exitCode,
            transfer: {
              fetchedBytes: r.bytesReceived,
              reusedChunks: 0,
              fromPeers: { [peer.name]: r.bytesReceived },
              badPeers: [],
              rsync: {
                peer: peer.name,
                files: r.files,
                filesTotal: r.filesTotal,
                bytesReceived: r.bytesReceived,
                bytesSent: r.bytesSent,
                literalBytes: r.literalBytes,
                matchedBytes: r.matchedBytes,
                totalFileSize: r.totalFileSize,
                ...(bwlimit !== undefined ? { bwlimitKiB: bwlimit } : {}),
              },
            },
          });
        } catch (err) {
          if (ctx.signal?.aborted) return out('interrupted', `stopped while pulling tree ${tree.id}`);
          const code = isCanopyError(err) ? err.code : undefined;
          const message = (err as Error).message;
          // Not ready yet (its own pull runs) or busy: ask again, until the wait is over.
          if (code === PEER_CODES.forbidden && now() < deadline) {
            await sleep(ctx.retryMs ?? RETRY_MS, ctx.signal);
            continue;
          }
          if (code !== PEER_CODES.forbidden && code !== 'INPUT_NOT_FOUND' && ++linkFailures < LINK_ATTEMPTS) {
            await sleep(ctx.retryMs ?? RETRY_MS, ctx.signal);
            continue; // the partial file resumes
          }
          failures.push(`${peer.name}${code ? ` (${code})` : ''}: ${message}`);
          failedPeers.push(peer.name);
          reports.update(pulling());
          noRsync = code === 'INPUT_NOT_FOUND'; // no rsync on this host: no other peer helps
          break;
        }
      }
      if (noRsync) break;
    }
    return out(
      'failed',
      `could not pull tree ${tree.id} into ${dest.path} from ${candidates.map((c) => c.name).join(', then ')}: ` +
        failures.join('; '),
      { transfer: { fetchedBytes: 0, reusedChunks: 0, fromPeers: {}, badPeers: failedPeers.slice(0, 64) } },
    );
  } finally {
    reports.stop();
  }
}

/**
 * The bytes a host still pulling reports: rsync's count of file data done,
 * kept below the tree's size (the coordinator counts a host whose bytes reach
 * the size as complete, and rsync's count can reach it before its
 * --delay-updates renames, or pass it when the source grew since the scan).
 */
export function treeProgressBytes(done: number, size: number): number {
  return Math.max(0, Math.min(done, size - 1));
}

/**
 * Hands values on at most once per `everyMs`: the first at once, later ones
 * after the interval (only the latest of those that came meanwhile). stop()
 * drops what waits.
 */
export class Throttle<T> {
  private last = Number.NEGATIVE_INFINITY;
  private timer: NodeJS.Timeout | undefined;
  private latest: T | undefined;

  constructor(
    private readonly send: (value: T) => void,
    private readonly everyMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  update(value: T): void {
    this.latest = value;
    if (this.timer) return;
    const wait = this.last + this.everyMs - this.now();
    if (wait <= 0) this.flush();
    else {
      this.timer = setTimeout(() => this.flush(), wait);
      this.timer.unref();
    }
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.latest = undefined;
  }

  private flush(): void {
    this.timer = undefined;
    const value = this.latest;
    this.latest = undefined;
    if (value === undefined) return;
    this.last = this.now();
    this.send(value);
  }
}

type TreeDest = { ok: true; path: string } | { ok: false; reason: string };

/**
 * The destination directory, checked as a file destination is (resolveDest
 * on a name inside it: inside a root, no symlink on the way, a real
 * directory), and created when missing: its nearest existing ancestor is
 * checked first, then the directory again once made. A root itself is refused.
 */
export async function treeDest(dest: string, roots: readonly string[]): Promise<TreeDest> {
  const full = resolve(dest);
  if (!isAbsolute(dest)) return { ok: false, reason: `destination ${JSON.stringify(dest)} is not absolute` };
  if (roots.some((r) => isAbsolute(r) && resolve(r) === full)) {
    return {
      ok: false,
      reason: `destination ${JSON.stringify(dest)} is an allowed root itself; distribute a directory into a directory inside it`,
    };
  }
  let existing = full;
  for (;;) {
    const st = await lstat(existing).catch(() => undefined);
    if (st) {
      if (!st.isDirectory()) {
        return {
          ok: false,
          reason: `destination ${JSON.stringify(dest)} is refused: ${existing} is ${st.isSymbolicLink() ? 'a symlink' : 'not a directory'}`,
        };
      }
      break;
    }
    const up = dirname(existing);
    if (up === existing) break;
    existing = up;
  }
  const above = await resolveDest(join(existing, PROBE), roots);
  if (!above.ok) return { ok: false, reason: above.reason.replace(join(existing, PROBE), existing) };
  if (existing !== full && !isInside(existing, full)) {
    return { ok: false, reason: `destination ${JSON.stringify(dest)} is refused` };
  }
  if (existing !== full) {
    try {
      await mkdir(full, { recursive: true, mode: 0o755 });
    } catch (err) {
      return { ok: false, reason: `cannot create destination ${full}: ${(err as Error).message}` };
    }
  }
  const check = await resolveDest(join(full, PROBE), roots);
  if (!check.ok) return { ok: false, reason: check.reason.replace(join(full, PROBE), full) };
  return { ok: true, path: full };
}
