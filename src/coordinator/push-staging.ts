/**
 * A push's large `src:` files (above `dist_above`): the request names them by
 * an absolute path on this machine, and they never go over the control
 * channel. This module owns their way to the hosts, before an applying push
 * starts: each file's MD5 (cached by file identity, so a warm re-push does not
 * read it again), a check run (the push task in `check` mode, those files
 * only) that finds the hosts whose destination differs, and one distribution
 * per file and destination pattern that puts the file beside its destination
 * as a staged copy (`.NAME.canopy-tmp-push-RUN`, see stagedPathFor) on those
 * hosts. It reports, per host, which staged copies it lacks and why (the
 * push manager's `content` answer quotes it to the agent) and what it fetched.
 *
 * It never renders, holds or sends file content, never starts the push run
 * (pushes.ts does, once staging is done) and never installs anything: the
 * agent's push task installs a staged copy like any other file.
 */
import { statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { CanopyError } from '../errors/index.js';
import type { PushFile, PushSpec, TaskResult } from '../protocol/index.js';
import { Md5Cache } from '../transfer/index.js';
import type { PushRequest } from './api-schemas.js';
import type { DistRequest } from './dists.js';
import type { RunManager } from './runs.js';
import type { HostResult, PushRunSpec, RunRecord } from './store.js';

/** A staged copy's name is `.NAME` + this + the push's run id; push-task.ts on the agent agrees. */
const STAGED_MARK = '.canopy-tmp-push-';
/** Staged copies are readable only by the agent's account until the push task installs them. */
const STAGED_MODE = 0o600;

/** A src file on the coordinator's machine, named by its absolute path (goes peer to peer). */
export interface PathSource {
  path: string;
  md5: string;
  size: number;
}

/** A large file of the push: its index among the request's files, and where it is. */
export interface LargeFile {
  index: number;
  source: PathSource;
}

/** What a host's distributions left for its push task. */
export interface HostStaging {
  /** By file index: why the host has no staged copy of that file (its distribution failed, ...). */
  missing: Map<number, string>;
  /** Its distributions' transfer figures, added to its push result. */
  transfer?: NonNullable<TaskResult['transfer']>;
}

/** What the push manager needs of the distribution manager (dists.ts). */
export interface Distributor {
  create(req: DistRequest, hosts: string[]): Promise<{ record: RunRecord; manifest: { md5: string } }>;
}

export interface PushStagingOptions {
  runs: RunManager;
  /** Distributes the src files named by path to the hosts that need them. */
  dists: Distributor;
  logger: Logger;
}

export class PushStaging {
  private readonly runs: RunManager;
  private readonly dists: Distributor;
  private readonly log: Logger;
  /** MD5s of the src files named by path: a warm re-push does not read a large file again. */
  private readonly md5s = new Md5Cache(1_000);
  /** Aborted by close(): pushes still waiting for their distributions give up. */
  private readonly closing = new AbortController();

  constructor(opts: PushStagingOptions) {
    this.runs = opts.runs;
    this.dists = opts.dists;
    this.log = opts.logger;
  }

  /** The src file `files[i].src` at `path` on this machine, with its MD5; INPUT_NOT_FOUND if it is none. */
  async pathSource(path: string, i: number): Promise<PathSource> {
    const missing = () =>
      new CanopyError(
        'INPUT_NOT_FOUND',
        `files[${i}].src ${path} is not a file on the coordinator's machine; src files above dist_above go ` +
          "peer to peer from there: run canopy push on the coordinator's machine (as canopy dist), or " +
          'raise --dist-above to send the file with the push (up to 8 MiB)',
        { field: `files.${i}.src`, path },
      );
    if (!statSync(path, { throwIfNoEntry: false })?.isFile()) throw missing();
    const state = await this.md5s.state(path);
    if (!state) throw missing();
    return { path, md5: state.md5, size: state.size };
  }

  /**
   * Puts the src files named by path beside their destinations, as staged copies, on the hosts
   * whose destination differs: a check run (the push task in check mode, those files only) finds
   * them, then one distribution per file (and destination pattern) fetches it peer to peer. Waits
   * for all of it. Returns per host what is not staged there and why (content() tells the agent),
   * and what each host fetched.
   */
  async stage(
    pushId: string,
    req: PushRequest,
    files: Map<string, PushFile[]>,
    big: LargeFile[],
    timeoutMs: number,
  ): Promise<Map<string, HostStaging>> {
    const staging = new Map<string, HostStaging>();
    const hosts = [...files.keys()];
    if (big.length === 0 || hosts.length === 0) return staging;
    const checked = await this.checkHosts(req, hosts, files, big, timeoutMs);
    const miss = (host: string, index: number, why: string) =>
      hostStaging(staging, host).missing.set(index, why);
    const jobs: Promise<void>[] = [];
    for (const [k, { index, source }] of big.entries()) {
      const needing: string[] = [];
      for (const r of checked) {
        const o = r.files?.[k];
        if (o?.state === 'would-change' && o.content) needing.push(r.host);
        else if (!o)
          miss(r.host, index, `the host did not answer the push's check (${r.state}: ${firstLine(r.error)})`);
      }
      const { groups, reserved } = distributionGroups(
        new Map(needing.map((h) => [h, stagedPathFor(files.get(h)?.[index]?.dest ?? '', pushId)])),
      );
      for (const host of reserved) {
        miss(host, index, 'its destination contains "{host}", which the distribution path reserves');
      }
      for (const [pattern, group] of groups) {
        jobs.push(
          this.distribute(req, source, pattern, group, (host, why) => miss(host, index, why), staging),
        );
      }
    }
    await Promise.all(jobs);
    this.log.info(
      {
        push: pushId,
        files: big.map((b) => b.source.path),
        hosts: hosts.length,
        distributions: jobs.length,
        notStaged: [...staging].flatMap(([h, s]) => (s.missing.size > 0 ? [h] : [])),
      },
      'push large files staged',
    );
    return staging;
  }

  /** A check run of the large files alone: which hosts' destinations differ. */
  private async checkHosts(
    req: PushRequest,
    hosts: string[],
    files: Map<string, PushFile[]>,
    big: LargeFile[],
    timeoutMs: number,
  ): Promise<HostResult[]> {
    const plans = new Map<string, PushSpec>();
    for (const host of hosts) {
      const mine = files.get(host) ?? [];
      plans.set(host, {
        files: big.map((b) => mine[b.index] as PushFile),
        mode: 'check',
        diff: false,
        timeoutMs,
      });
    }
    const spec: PushRunSpec = {
      kind: 'push',
      targets: req.targets,
      ...(req.limit ? { limit: req.limit } : {}),
      mode: 'check',
      diff: false,
      timeoutMs,
      concurrency: Math.max(1, hosts.length),
      files: big.map((b) => ({ source: b.source.path, dest: req.files[b.index]?.dest ?? '' })),
    };
    const record = await this.runs.create(spec, hosts, { plans });
    this.log.info({ check: record.id, hosts: hosts.length, files: big.length }, 'push checking large files');
    return this.settled(record.id);
  }

  /** One distribution of `source` to `hosts` (staged at `pattern`, `{host}` per host), awaited. */
  private async distribute(
    req: PushRequest,
    source: PathSource,
    pattern: string,
    hosts: string[],
    miss: (host: string, why: string) => void,
    staging: Map<string, HostStaging>,
  ): Promise<void> {
    let id: string;
    try {
      const { record, manifest } = await this.dists.create(
        { path: source.path, dest: pattern, targets: req.targets, mode: STAGED_MODE },
        hosts,
      );
      id = record.id;
      if (manifest.md5 !== source.md5) {
        for (const h of hosts) {
          miss(
            h,
            `${source.path} changed on the coordinator's machine during the push (MD5 ${source.md5}, then ${manifest.md5})`,
          );
        }
      }
    } catch (err) {
      for (const h of hosts) miss(h, `its distribution could not start: ${(err as Error).message}`);
      return;
    }
    this.log.info({ dist: id, path: source.path, hosts: hosts.length }, 'push distributing a large file');
    for (const r of await this.settled(id)) {
      if (r.transfer) addTransfer(hostStaging(staging, r.host), r.transfer);
      if (r.state !== 'ok') {
        miss(
          r.host,
          `its distribution ${id} failed (${r.state}): ${firstLine(r.files?.[0]?.error ?? r.error)}`,
        );
      }
    }
  }

  /** Pushes waiting for their check or distributions fail now (the coordinator is stopping). */
  close(): void {
    this.closing.abort();
  }

  /**
   * Waits until run `id` has finished (every host final), then returns its results. Throws when
   * the coordinator closes first: the push was not started.
   */
  private async settled(id: string): Promise<HostResult[]> {
    const signal = this.closing.signal;
    await new Promise<void>((done, fail) => {
      const quit = () => {
        stop?.();
        fail(
          new Error(
            `the coordinator stopped while the push waited for run ${id}; nothing was pushed: re-run it`,
          ),
        );
      };
      const stop = this.runs.subscribe(id, (e) => {
        if (e.type !== 'done') return;
        stop?.();
        signal.removeEventListener('abort', quit);
        done();
      });
      // Not active: it finished before we could listen (every host offline, say).
      if (!stop) return done();
      if (signal.aborted) return quit();
      signal.addEventListener('abort', quit, { once: true });
    });
    return (await this.runs.get(id))?.results ?? [];
  }
}

/**
 * Where the distribution puts a large file for the push `pushId`: beside its destination, hidden,
 * named like an install's temporary file (so an agent's clean-up after a crash removes it too).
 * push-task.ts on the agent computes the same path.
 */
export function stagedPathFor(dest: string, pushId: string): string {
  const full = resolve(dest);
  return join(dirname(full), `.${basename(full)}${STAGED_MARK}${pushId}`);
}

/**
 * Hosts grouped by their staged path with their own name replaced by `{host}` (the distribution
 * manager's per-host placeholder): one distribution per group, so hosts whose paths differ only by
 * their names share one peer tree. `reserved`: hosts whose path already contains "{host}".
 */
export function distributionGroups(staged: ReadonlyMap<string, string>): {
  groups: Map<string, string[]>;
  reserved: string[];
} {
  const groups = new Map<string, string[]>();
  const reserved: string[] = [];
  for (const [host, path] of staged) {
    const pattern = path.replaceAll(host, '{host}');
    if (pattern.replaceAll('{host}', host) !== path) {
      reserved.push(host);
      continue;
    }
    groups.set(pattern, [...(groups.get(pattern) ?? []), host]);
  }
  return { groups, reserved };
}

/** Why an agent asking for a large file's content gets none (it goes only peer to peer). */
export function notStaged(source: PathSource, staging: HostStaging | undefined, index: number): string {
  const why =
    staging?.missing.get(index) ??
    'its staged copy is not on this host (the host was not in the distribution, or the copy was removed)';
  return `${source.path} (${source.size} bytes) goes peer to peer, not over the control channel, and ${why}; re-run the push once that is fixed`;
}

function hostStaging(staging: Map<string, HostStaging>, host: string): HostStaging {
  let s = staging.get(host);
  if (!s) {
    s = { missing: new Map() };
    staging.set(host, s);
  }
  return s;
}

function addTransfer(s: HostStaging, t: NonNullable<TaskResult['transfer']>): void {
  const sum = s.transfer ?? { fetchedBytes: 0, reusedChunks: 0, fromPeers: {}, badPeers: [] };
  sum.fetchedBytes += t.fetchedBytes;
  sum.reusedChunks += t.reusedChunks;
  for (const [peer, bytes] of Object.entries(t.fromPeers))
    sum.fromPeers[peer] = (sum.fromPeers[peer] ?? 0) + bytes;
  sum.badPeers = [...new Set([...sum.badPeers, ...t.badPeers])];
  s.transfer = sum;
}

function firstLine(text: string | undefined): string {
  return (text ?? 'no reason given').split('\n')[0] ?? '';
}
