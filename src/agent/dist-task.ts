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
  commitInstall,
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

export interface DistContext {
  policy: ExecPolicy;
  backupDir: string;
  store: ChunkStore;
  /** Opens a peer client to `peer` (the agent dials with its own certificate). */
  connect: (peer: PeerAddress) => Promise<PeerClient>;
  /** Lets other agents fetch this blob from here until `until` (ms since the epoch). */
  serve: (blob: string, manifest: Manifest, until: number) => void;
  /** Chunks in flight per stripe; default 4. */
  window?: number;
  signal?: AbortSignal;
  now?: () => number;
}

interface Stats {
  fetchedBytes: number;
  fromPeers: Record<string, number>;
  badPeers: Set<string>;
}

const RETRY_MS = 20;

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
  const stats: Stats = { fetchedBytes: 0, fromPeers: {}, badPeers: new Set() };
  ctx.serve(spec.blob, manifest, Number.POSITIVE_INFINITY);
  ctx.store.pin(task.id, manifest.chunks);
  const missing = ctx.store.missing(manifest);
  const transfer = () => ({
    fetchedBytes: stats.fetchedBytes,
    reusedChunks: manifest.chunks.length - missing.length,
    fromPeers: stats.fromPeers,
    badPeers: [...stats.badPeers],
  });
  try {
    const stripes = spec.parents.length;
    await Promise.all(
      spec.parents.map((parent, s) =>
        fetchStripe(
          task,
          manifest,
          missing.filter((i) => i % stripes === s),
          [parent, ...spec.fallbacks],
          ctx,
          stats,
        ),
      ),
    );
    const file = await install(task, manifest, dest.path, ctx);
    return { ...output(startedAt, now(), 'ok', undefined, [file]), transfer: transfer() };
  } catch (err) {
    const code = isCanopyError(err) ? err.code : undefined;
    return { ...fail((err as Error).message, 'failed', code), transfer: transfer() };
  } finally {
    ctx.serve(spec.blob, manifest, now() + spec.serveForMs);
  }
}

/** Fetches one stripe's chunks, `window` at a time, moving down the candidates when a peer fails. */
async function fetchStripe(
  task: DistTask,
  manifest: Manifest,
  indexes: number[],
  candidates: PeerAddress[],
  ctx: DistContext,
  stats: Stats,
): Promise<void> {
  if (indexes.length === 0) return;
  const now = ctx.now ?? Date.now;
  const tried: string[] = [];
  let current = 0;
  let client: PeerClient | undefined;
  let lastProgress = now();
  const peer = async (): Promise<{ client: PeerClient; name: string; at: number }> => {
    for (;;) {
      const at = current;
      const candidate = candidates[at];
      if (!candidate) {
        throw new Error(
          `no peer could serve stripe ${indexes[0]} mod ${task.spec.parents.length} of ${task.spec.dest} (tried ${tried.join(', ')})`,
        );
      }
      if (client) return { client, name: candidate.name, at };
      try {
        client = await ctx.connect(candidate);
        return { client, name: candidate.name, at };
      } catch (err) {
        tried.push(`${candidate.name}: ${(err as Error).message.split('\n')[0]}`);
        if (current === at) current++;
      }
    }
  };
  const drop = (at: number, why: string) => {
    if (current !== at) return;
    tried.push(`${candidates[at]?.name}: ${why}`);
    void client?.close();
    client = undefined;
    current++;
    lastProgress = now();
  };
  const queue = [...indexes];
  const lane = async (): Promise<void> => {
    for (let i = queue.shift(); i !== undefined; i = queue.shift()) {
      const digest = manifest.chunks[i] ?? '';
      for (;;) {
        ctx.signal?.throwIfAborted();
        const p = await peer();
        try {
          const data = await p.client.fetch(task.spec.blob, i, digest, {
            length: Math.min(manifest.chunkSize, manifest.size - i * manifest.chunkSize),
          });
          await ctx.store.put(digest, data);
          stats.fetchedBytes += data.length;
          stats.fromPeers[p.name] = (stats.fromPeers[p.name] ?? 0) + data.length;
          lastProgress = now();
          break;
        } catch (err) {
          const code = isCanopyError(err) ? err.code : '';
          if (code === 'TRANSFER_CHUNK_MISSING' && now() - lastProgress < task.spec.stallMs) {
            await new Promise((r) => setTimeout(r, RETRY_MS));
            continue;
          }
          if (code === 'TRANSFER_DIGEST_MISMATCH') stats.badPeers.add(p.name);
          drop(p.at, (err as Error).message.split('\n')[0] ?? code);
        }
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(ctx.window ?? 4, indexes.length) }, lane));
  } finally {
    await client?.close();
  }
}

/** Assembles the verified chunks beside the destination and installs them, unless it already matches. */
async function install(
  task: DistTask,
  manifest: Manifest,
  dest: string,
  ctx: DistContext,
): Promise<FileOutcome> {
  const spec = task.spec;
  const uid = spec.owner ? (await lookupAccount(spec.owner))?.uid : undefined;
  const gid = spec.group ? await lookupGroupId(spec.group) : undefined;
  if (spec.owner && uid === undefined)
    throw new Error(`owner "${spec.owner}" is not an account on this host`);
  if (spec.group && gid === undefined) throw new Error(`group "${spec.group}" is not a group on this host`);
  const previous = await fileState(dest);
  const base = { dest: spec.dest, oldMd5: previous?.md5 ?? null, newMd5: manifest.md5 };
  if (previous?.md5 === manifest.md5) return { ...base, state: 'unchanged', content: false };
  const temp = tempPathFor(dest);
  await ctx.store.assemble(manifest, temp);
  await commitInstall(temp, manifest.md5, {
    dest,
    ...(spec.mode !== undefined ? { mode: spec.mode } : {}),
    ...(uid !== undefined ? { uid } : {}),
    ...(gid !== undefined ? { gid } : {}),
    backupDir: ctx.backupDir,
    ...(previous ? { previous } : {}),
  });
  return { ...base, state: 'changed', content: true };
}

function output(
  startedAt: number,
  endedAt: number,
  state: DistOutput['state'],
  error: string | undefined,
  files: FileOutcome[],
): DistOutput {
  return {
    state,
    ...NO_OUTPUT,
    startedAt,
    endedAt,
    durationMs: endedAt - startedAt,
    ...(error ? { error } : {}),
    files,
  };
}
