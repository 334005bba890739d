/**
 * A distribution task on the agent: fetch the blob's missing chunks from
 * this host's parents (one per stripe: chunk i belongs to stripe i mod S),
 * verify each (BLAKE3, by the peer client) into the chunk store, serve them
 * onward meanwhile (the peer server's `serve` authorization), then assemble
 * the file beside its destination, check the whole-file MD5 and install it
 * atomically. Chunks already in the store are not fetched again, so a
 * restarted agent resumes from what it verified.
 *
 * Faults: a parent that does not have a chunk yet is asked again until the
 * stripe makes no progress for `stallMs`; a parent that is gone, stalls, or
 * sends a chunk that fails its digest is dropped for the next candidate of
 * that stripe (the fallbacks, the source last), and one whose chunk failed
 * its digest is reported in `transfer.badPeers`.
 */
import { open } from 'node:fs/promises';
import { isCanopyError } from '../errors/index.js';
import {
  type DistTask,
  type FileOutcome,
  NO_OUTPUT,
  type PeerAddress,
  type TaskResult,
} from '../protocol/index.js';
import {
  type ChunkStore,
  chunkRange,
  commitInstall,
  FileAssembler,
  type FileState,
  fileState,
  type Manifest,
  type PeerClient,
  resolveDest,
  tempPathFor,
  validateManifest,
} from '../transfer/index.js';
import { lookupAccount, lookupGroupId } from './accounts.js';
import type { ExecPolicy } from './executor.js';

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
        newMd5: spec.manifest.md5,
        content: false,
        error,
        ...(code ? { code } : {}),
      },
    ]);
  const dest = await resolveDest(spec.dest, ctx.policy.roots);
  if (!dest.ok) return fail(dest.reason, 'refused', 'PUSH_DEST_REFUSED');
  let manifest: Manifest;
  try {
    manifest = await validateManifest(spec.manifest, {
      id: spec.blob,
      source: `the distribution of ${spec.dest}`,
    });
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
  ctx.store.pin(task.id, manifest.chunks);
  let reused = 0;
  const transfer = () => ({
    fetchedBytes: stats.fetchedBytes,
    reusedChunks: reused,
    fromPeers: stats.fromPeers,
    badPeers: [...stats.badPeers],
  });
  let assembler: FileAssembler | undefined;
  try {
    const previous = await fileState(dest.path);
    // A host that already holds the file serves it: its chunks go into the store (each checked).
    if (previous?.md5 === manifest.md5) await ingest(dest.path, manifest, ctx.store);
    else assembler = await FileAssembler.create(tempPathFor(dest.path), manifest);
    const lacking = new Set(ctx.store.missing(manifest));
    for (let i = 0; i < manifest.chunks.length; i++) {
      if (lacking.has(i)) continue;
      if (assembler) {
        // Re-hashed: a relay's store does not fsync each chunk, so one may be damaged after a power
        // loss; a damaged chunk is dropped from the store (get says so) and fetched again.
        const data = await ctx.store.get(manifest.chunks[i] ?? '', { verify: true }).catch(() => undefined);
        if (!data) {
          lacking.add(i);
          continue;
        }
        await assembler.add(i, data);
      }
      stats.heldChunks++;
      stats.heldBytes += chunkRange(manifest, i).length;
    }
    const missing = [...lacking].sort((a, b) => a - b);
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
    const got = async (i: number, data: Buffer, from: string) => {
      await ctx.store.put(manifest.chunks[i] ?? '', data, { verified: true });
      await assembler?.add(i, data);
      stats.fetchedBytes += data.length;
      stats.heldChunks++;
      stats.heldBytes += data.length;
      stats.fromPeers[from] = (stats.fromPeers[from] ?? 0) + data.length;
      report();
    };
    await Promise.all(
      spec.parents.map((parent, s) =>
        fetchStripe(
          task,
          manifest,
          missing.filter((i) => i % stripes === s),
          candidatesFor(parent, spec.alternates?.[s], spec.fallbacks),
          ctx,
          stats,
          got,
        ),
      ),
    );
    const file = await install(task, manifest, dest.path, previous, assembler, ctx);
    return { ...output(startedAt, now(), 'ok', undefined, [file]), transfer: transfer() };
  } catch (err) {
    await assembler?.abort();
    const code = isCanopyError(err) ? err.code : undefined;
    return { ...fail((err as Error).message, 'failed', code), transfer: transfer() };
  } finally {
    ctx.serve(spec.blob, manifest, now() + spec.serveForMs);
  }
}

/** The parent, then the coordinator's re-parenting for this stripe, then the fallbacks; each once. */
export function candidatesFor(
  parent: PeerAddress,
  alternate: PeerAddress | undefined,
  fallbacks: PeerAddress[],
): PeerAddress[] {
  const out: PeerAddress[] = [];
  for (const c of [parent, alternate, ...fallbacks]) {
    if (c && !out.some((o) => o.name === c.name && o.address === c.address)) out.push(c);
  }
  return out;
}

/** Reads a file that already matches the manifest's MD5 into the store, chunk by chunk (each checked). */
async function ingest(path: string, manifest: Manifest, store: ChunkStore): Promise<void> {
  const missing = store.missing(manifest);
  if (missing.length === 0) return;
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(manifest.chunkSize);
    for (const i of missing) {
      const { offset, length } = chunkRange(manifest, i);
      const { bytesRead } = await fh.read(buf, 0, length, offset);
      // put() hashes the bytes: a file that changed since its MD5 was read fails here, naming the chunk.
      await store.put(manifest.chunks[i] ?? '', buf.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
}

/**
 * Fetches one stripe's chunks, `window` at a time. A candidate that lacks a
 * chunk (or has not joined the distribution yet) is asked again while the
 * stripe progresses: the first chunk may take three stall windows (the tree
 * fills from the top), later ones one. A candidate that is gone, stalls,
 * refuses us or sends a bad chunk is dropped for the next one. The last
 * candidate (the source) is never dropped: it is retried, backing off, until
 * the stripe has made no progress for twelve stall windows.
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
  /** Gives up on candidate `at` (once, whichever lane saw it first). */
  const drop = (at: number, why: string) => {
    if (current !== at) return;
    const name = candidates[at]?.name ?? '?';
    tried.set(name, why);
    const c = connecting;
    connecting = undefined;
    void c?.then((cl) => cl.close()).catch(() => {});
    if (last()) return;
    stats.failedPeers.add(name);
    current++;
    lastProgress = now();
  };
  const queue = [...indexes];
  const lane = async (): Promise<void> => {
    let backoff = 0;
    for (let i = queue.shift(); i !== undefined; i = queue.shift()) {
      const digest = manifest.chunks[i] ?? '';
      for (;;) {
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
          drop(p?.at ?? current, (err as Error).message.split('\n')[0] || code);
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
  try {
    await Promise.all(Array.from({ length: Math.min(ctx.window ?? 4, indexes.length) }, lane));
  } finally {
    const c = connecting;
    connecting = undefined;
    await c?.then((cl) => cl.close()).catch(() => {});
  }
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

/** Publishes the assembled file (mode, owner, backup, rename), unless the host already had it. */
async function install(
  task: DistTask,
  manifest: Manifest,
  dest: string,
  previous: FileState | undefined,
  assembler: FileAssembler | undefined,
  ctx: DistContext,
): Promise<FileOutcome> {
  const spec = task.spec;
  const base = { dest: spec.dest, oldMd5: previous?.md5 ?? null, newMd5: manifest.md5 };
  if (!assembler) return { ...base, state: 'unchanged', content: false };
  const uid = spec.owner ? (await lookupAccount(spec.owner))?.uid : undefined;
  const gid = spec.group ? await lookupGroupId(spec.group) : undefined;
  if (spec.owner && uid === undefined)
    throw new Error(`owner "${spec.owner}" is not an account on this host`);
  if (spec.group && gid === undefined) throw new Error(`group "${spec.group}" is not a group on this host`);
  await assembler.finish();
  await commitInstall(assembler.path, manifest.md5, {
    dest,
    ...(spec.mode !== undefined ? { mode: spec.mode } : {}),
    ...(uid !== undefined ? { uid } : {}),
    ...(gid !== undefined ? { gid } : {}),
    backupDir: ctx.backupDir,
    ...(previous ? { previous } : {}),
  });
  return { ...base, state: 'changed', content: true };
}

/** A distribution task's result fields: no process output, its times, and (for files) its outcome. */
export function output(
  startedAt: number,
  endedAt: number,
  state: DistOutput['state'],
  error: string | undefined,
  files?: FileOutcome[],
): DistOutput {
  return {
    state,
    ...NO_OUTPUT,
    startedAt,
    endedAt,
    durationMs: endedAt - startedAt,
    ...(error ? { error } : {}),
    ...(files ? { files } : {}),
  };
}
