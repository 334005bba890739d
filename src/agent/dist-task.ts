/**
 * A distribution task on the agent: fetch the blob's missing chunks from
 * this host's parents (one per stripe: chunk i belongs to stripe i mod S),
 * verify each (BLAKE3, by the peer client) into the blob's pack in the
 * chunk store (one file, chunk i at its offset), serve them onward meanwhile
 * (the peer server's `serve` authorization), then check the whole-file MD5,
 * copy the blob beside its destination and install it atomically (or, with
 * `activate: together`, keep it staged beside the destination for the
 * coordinator's switch: activation-task.ts). Chunks the pack holds are not
 * fetched again, so a restarted agent resumes from what it verified.
 *
 * Faults: a parent that does not have a chunk yet is asked again until the
 * stripe makes no progress for `stallMs`; a parent that is gone, stalls, or
 * sends a chunk that fails its digest is dropped for the next candidate of
 * that stripe (the fallbacks, the source last), and one whose chunk failed
 * its digest is reported in `transfer.badPeers`.
 */
import { unlink } from 'node:fs/promises';
import { isCanopyError } from '../errors/index.js';
import type { DistTask, FileOutcome, PeerAddress, TaskResult } from '../protocol/index.js';
import {
  type ChunkPool,
  type ChunkStore,
  chunkRange,
  commitInstall,
  copyBeside,
  type FileState,
  fileState,
  fixMeta,
  type Manifest,
  metaDiffers,
  type PeerClient,
  recheckDest,
  resolveDest,
  setidRefusal,
  tempPathFor,
  validateManifest,
} from '../transfer/index.js';
import { resolveOwner, stageFile } from './activation-task.js';
import { fetchManifest } from './dist-manifest.js';
import type { ExecPolicy } from './executor.js';
import { output } from './task-output.js';

type DistOutput = Omit<TaskResult, 'taskId' | 'runId'>;

/** Where a distribution task stands; the agent forwards it to the coordinator (throttled). */
export interface DistProgress {
  chunks: number;
  bytes: number;
  fetchedBytes: number;
  failedPeers: string[];
}

export interface DistContext {
  policy: ExecPolicy;
  backupDir: string;
  store: ChunkStore;
  /** Opens a peer client to `peer` (the agent dials with its own certificate). */
  connect: (peer: PeerAddress) => Promise<PeerClient>;
  /** The pool `connect`'s clients receive chunks into (each fetched buffer is given back to it). */
  pool?: ChunkPool;
  /** Lets other agents fetch this blob from here until `until` (ms since the epoch). */
  serve: (blob: string, manifest: Manifest, until: number) => void;
  /** Called after every chunk the task adds. */
  progress?: (p: DistProgress) => void;
  /** Chunks in flight per stripe; default 4. */
  window?: number;
  signal?: AbortSignal;
  now?: () => number;
}

interface Stats {
  fetchedBytes: number;
  heldChunks: number;
  heldBytes: number;
  fromPeers: Record<string, number>;
  badPeers: Set<string>;
  failedPeers: Set<string>;
}

/** A refusal that came back faster than this was not a long-poll: wait before asking again. */
const QUICK_REFUSAL_MS = 200;
const MAX_BACKOFF_MS = 250;
/** The source is retried (backing off up to this) until the stripe's last-resort window passes. */
const MAX_SOURCE_BACKOFF_MS = 2_000;

export async function runDist(task: DistTask, ctx: DistContext): Promise<DistOutput> {
  const now = ctx.now ?? Date.now;
  const startedAt = now();
  const spec = task.spec;
  const fail = (error: string, state: 'failed' | 'refused' = 'failed', code?: string): DistOutput =>
    output(startedAt, now(), state, error, [
      {
        dest: spec.dest,
        state: 'failed',
        oldMd5: null,
        newMd5: spec.manifest?.md5 ?? spec.md5 ?? '',
        content: false,
        error,
        ...(code ? { code } : {}),
      },
    ]);
  const dest = await resolveDest(spec.dest, ctx.policy.roots);
  if (!dest.ok) return fail(dest.reason, 'refused', 'PUSH_DEST_REFUSED');
  const setid =
    spec.mode === undefined ? undefined : setidRefusal(spec.dest, spec.mode, ctx.policy.allowSetid);
  if (setid) return fail(setid, 'refused', 'AGENT_SETID_REFUSED');
  let manifest: Manifest;
  try {
    manifest = spec.manifest
      ? await validateManifest(spec.manifest, { id: spec.blob, source: `the distribution of ${spec.dest}` })
      : await fetchManifest(task, manifestCandidates(task), ctx);
  } catch (err) {
    return fail((err as Error).message);
  }
  const stats: Stats = {
    fetchedBytes: 0,
    heldChunks: 0,
    heldBytes: 0,
    fromPeers: {},
    badPeers: new Set(),
    failedPeers: new Set(),
  };
  ctx.serve(spec.blob, manifest, Number.POSITIVE_INFINITY);
  let reused = 0;
  const transfer = () => ({
    fetchedBytes: stats.fetchedBytes,
    reusedChunks: reused,
    fromPeers: stats.fromPeers,
    badPeers: [...stats.badPeers],
  });
  let temp: string | undefined;
  try {
    const previous = await fileState(dest.path);
    // The blob's pack in the chunk store (pinned for this task; the agent unpins it after serving).
    const pack = await ctx.store.openPack(task.id, spec.blob, manifest);
    const current = previous?.md5 === manifest.md5;
    // A host that already holds the file serves it: the file is copied into the pack.
    if (current && !pack.complete) await pack.copyFrom(dest.path);
    // Chunks held from an earlier attempt are re-hashed: a relay's pack is not fsynced per chunk, so
    // one may be damaged after a power loss; a damaged one is forgotten and fetched again.
    else if (!current && pack.count > 0) await pack.verifyHeld();
    // A restarted relay's children were given its parent meanwhile: it rejoins below a leaf.
    const resumed = !current && pack.count > 0;
    // Chunks this store holds elsewhere (another version of the blob) are copied, not fetched.
    if (!current) await ctx.store.fillPack(pack);
    const missing: number[] = [];
    for (let i = 0; i < manifest.chunks.length; i++) {
      if (!pack.has(i)) missing.push(i);
    }
    stats.heldChunks = pack.count;
    stats.heldBytes = pack.bytes;
    reused = manifest.chunks.length - missing.length;
    const report = () =>
      ctx.progress?.({
        chunks: stats.heldChunks,
        bytes: stats.heldBytes,
        fetchedBytes: stats.fetchedBytes,
        failedPeers: [...stats.failedPeers],
      });
    report();
    const stripes = spec.parents.length;
    const { pool } = ctx;
    const got = async (i: number, data: Buffer, from: string) => {
      // The peer client's pooled buffer goes back once the pack wrote it and took it into the MD5.
      const bytes = data.length;
      await ctx.store.putInPack(pack, i, data, pool && (() => pool.release(data)));
      stats.fetchedBytes += bytes;
      stats.heldChunks = pack.count;
      stats.heldBytes = pack.bytes;
      stats.fromPeers[from] = (stats.fromPeers[from] ?? 0) + bytes;
      report();
    };
    await Promise.all(
      spec.parents.map((parent, s) =>
        fetchStripe(
          task,
          manifest,
          missing.filter((i) => i % stripes === s),
          candidatesFor(parent, spec.alternates?.[s], spec.fallbacks, resumed ? spec.rejoin?.[s] : undefined),
          ctx,
          stats,
          got,
        ),
      ),
    );
    if (!current) {
      // The whole-file MD5 is checked here, then the blob is copied beside the destination.
      await recheckDest(spec.dest, ctx.policy.roots);
      temp = tempPathFor(dest.path);
      await pack.copyTo(temp);
    }
    const file = await install(task, manifest, dest.path, previous, temp, ctx);
    temp = undefined;
    return { ...output(startedAt, now(), 'ok', undefined, [file]), transfer: transfer() };
  } catch (err) {
    if (temp) await unlink(temp).catch(() => {});
    const code = isCanopyError(err) ? err.code : undefined;
    return { ...fail((err as Error).message, 'failed', code), transfer: transfer() };
  } finally {
    ctx.serve(spec.blob, manifest, now() + spec.serveForMs);
  }
}

/** Where the manifest is asked for: every stripe's parent and re-parenting, then the fallbacks; each once. */
function manifestCandidates(task: DistTask): PeerAddress[] {
  const { parents, alternates, fallbacks } = task.spec;
  const firsts = parents.flatMap((p, s) => [p, alternates?.[s]]).filter((p): p is PeerAddress => !!p);
  return candidatesFor(firsts[0] as PeerAddress, undefined, [...firsts.slice(1), ...fallbacks]);
}

/**
 * The parent, then the coordinator's re-parenting for this stripe, then the
 * fallbacks; each once. `first` (where a restarted host rejoins) goes before them all.
 */
export function candidatesFor(
  parent: PeerAddress,
  alternate: PeerAddress | undefined,
  fallbacks: PeerAddress[],
  first?: PeerAddress,
): PeerAddress[] {
  const out: PeerAddress[] = [];
  for (const c of [first, parent, alternate, ...fallbacks]) {
    if (c && !out.some((o) => o.name === c.name && o.address === c.address)) out.push(c);
  }
  return out;
}

/**
 * Fetches one stripe's chunks, `window` at a time. A candidate that lacks a
 * chunk (or has not joined the distribution yet) is asked again while the
 * stripe progresses: the first chunk may take three stall windows (the tree
 * fills from the top), later ones one. A candidate that is gone, stalls,
 * refuses us or sends a bad chunk is dropped for the next one. The last
 * candidate (the source) is never dropped: it is retried, backing off, until
 * the stripe has made no progress for twelve stall windows, unless it says it
 * can serve none of the blob any more (DIST_SOURCE_REFUSED: a seed whose file
 * changed), which fails the stripe at once. A fetch failing because this
 * agent closed the connection itself (dropping its peer) is only retried:
 * the peer's real failure is what the stripe reports.
 */
async function fetchStripe(
  task: DistTask,
  manifest: Manifest,
  indexes: number[],
  candidates: PeerAddress[],
  ctx: DistContext,
  stats: Stats,
  got: (i: number, data: Buffer, from: string) => Promise<void>,
): Promise<void> {
  if (indexes.length === 0) return;
  const now = ctx.now ?? Date.now;
  const stallMs = task.spec.stallMs;
  /** Per candidate, the last reason it failed. */
  const tried = new Map<string, string>();
  /** Connections this stripe closed itself: their fetches fail, and say nothing about the peer. */
  const closedHere = new WeakSet<PeerClient>();
  let current = 0;
  let connecting: Promise<PeerClient> | undefined;
  let lastProgress = now();
  let progressed = false;
  const last = () => current >= candidates.length - 1;
  const window = () => (last() ? 12 * stallMs : progressed ? stallMs : 3 * stallMs);
  const giveUp = () =>
    new Error(
      `no peer could serve stripe ${indexes[0]} mod ${task.spec.parents.length} of ${task.spec.dest} ` +
        `(no chunk for ${Math.round((now() - lastProgress) / 1000)} s; tried ` +
        `${[...tried].map(([n, why]) => `${n}: ${why}`).join('; ')})`,
    );
  const peer = async (): Promise<{ client: PeerClient; name: string; at: number }> => {
    const at = current;
    const candidate = candidates[at] as PeerAddress;
    connecting ??= ctx.connect(candidate);
    const mine = connecting;
    try {
      return { client: await mine, name: candidate.name, at };
    } catch (err) {
      if (connecting === mine) connecting = undefined;
      throw err;
    }
  };
  const closeCurrent = async (): Promise<void> => {
    const c = connecting;
    connecting = undefined;
    await c
      ?.then((cl) => {
        closedHere.add(cl);
        return cl.close();
      })
      .catch(() => {});
  };
  /** Gives up on candidate `at` (once, whichever lane saw it first). */
  const drop = (at: number, why: string) => {
    if (current !== at) return;
    const name = candidates[at]?.name ?? '?';
    tried.set(name, why);
    void closeCurrent();
    if (last()) return;
    stats.failedPeers.add(name);
    current++;
    lastProgress = now();
  };
  const queue = [...indexes];
  /** The first error a lane hit: the stripe fails with it, and the other lanes stop at their next step. */
  let failure: { err: unknown } | undefined;
  const work = async (): Promise<void> => {
    let backoff = 0;
    for (let i = queue.shift(); i !== undefined && !failure; i = queue.shift()) {
      const digest = manifest.chunks[i] ?? '';
      for (;;) {
        if (failure) return;
        ctx.signal?.throwIfAborted();
        if (last() && now() - lastProgress > window()) throw giveUp();
        const t0 = now();
        let p: { client: PeerClient; name: string; at: number } | undefined;
        let data: Buffer;
        try {
          p = await peer();
          data = await p.client.fetch(task.spec.blob, i, digest, { length: chunkRange(manifest, i).length });
        } catch (err) {
          if (ctx.signal?.aborted) throw ctx.signal.reason;
          if (p && closedHere.has(p.client)) continue;
          const code = isCanopyError(err) ? err.code : '';
          const notYet = code === 'TRANSFER_CHUNK_MISSING' || code === 'TRANSFER_PEER_FORBIDDEN';
          if (notYet && now() - lastProgress < window()) {
            if (now() - t0 < QUICK_REFUSAL_MS) {
              backoff = Math.min(MAX_BACKOFF_MS, Math.max(25, backoff * 2));
              await sleep(backoff, ctx.signal);
            }
            continue;
          }
          if (code === 'TRANSFER_DIGEST_MISMATCH' && p) stats.badPeers.add(p.name);
          const at = p?.at ?? current;
          drop(at, (err as Error).message.split('\n')[0] || code);
          if (code === 'DIST_SOURCE_REFUSED' && at === candidates.length - 1) throw giveUp();
          if (last()) {
            backoff = Math.min(MAX_SOURCE_BACKOFF_MS, Math.max(250, backoff * 2));
            await sleep(backoff, ctx.signal);
          }
          continue;
        }
        // Our own store or file failing (quota, disk) is not a peer's fault: no other peer can fix it.
        await got(i, data, p.name);
        lastProgress = now();
        progressed = true;
        backoff = 0;
        break;
      }
    }
  };
  const lane = async (): Promise<void> => {
    try {
      await work();
    } catch (err) {
      failure ??= { err };
      void closeCurrent(); // fails the other lanes' fetches at once
    }
  };
  await Promise.all(Array.from({ length: Math.min(ctx.window ?? 4, indexes.length) }, lane));
  await closeCurrent();
  if (failure) throw failure.err;
}

/** Waits `ms`; an abort ends the wait early (the caller checks the signal). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((done) => {
    const timer = setTimeout(done, ms);
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(timer);
        done();
      },
      { once: true },
    );
  });
}

/**
 * Publishes the assembled file (mode, owner, backup, rename), unless the host
 * already had it. With `activate: together` the verified file is only staged
 * beside the destination (activation-task.ts); the switch is a later step.
 */
async function install(
  task: DistTask,
  manifest: Manifest,
  dest: string,
  previous: FileState | undefined,
  temp: string | undefined,
  ctx: DistContext,
): Promise<FileOutcome> {
  const spec = task.spec;
  const base = { dest: spec.dest, oldMd5: previous?.md5 ?? null, newMd5: manifest.md5 };
  const meta = {
    allowSetid: ctx.policy.allowSetid ?? false,
    ...(spec.mode !== undefined ? { mode: spec.mode } : {}),
    ...(await resolveOwner(spec.owner, spec.group)),
  };
  if (!temp) {
    // The host has the content; --mode/--owner/--group still apply (as a push does).
    if (!previous || !metaDiffers(previous, meta)) return { ...base, state: 'unchanged', content: false };
    if (spec.activate === 'together') {
      // Like content, new permissions switch with the others: a copy is staged with them.
      await stageFile(await copyBeside(dest), { dest, blob: spec.blob, meta, previous });
      return { ...base, state: 'staged', content: false };
    }
    await fixMeta(dest, meta, previous);
    return { ...base, state: 'changed', content: false };
  }
  if (spec.activate === 'together') {
    await stageFile(temp, { dest, blob: spec.blob, meta, previous });
    return { ...base, state: 'staged', content: true };
  }
  await commitInstall(temp, manifest.md5, {
    dest,
    ...meta,
    backupDir: ctx.backupDir,
    ...(previous ? { previous } : {}),
  });
  return { ...base, state: 'changed', content: true };
}
