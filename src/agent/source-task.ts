/**
 * `canopy dist --source HOST` on agent HOST: this agent's own file is the
 * distribution's source. The task checks the path, hashes the file into a
 * manifest (BLAKE3 per chunk and the whole file's MD5, buildManifest), and
 * hands back the manifest and blob id; the agent then serves the blob's
 * chunks from its peer server straight from the file (a seed: nothing is
 * copied into the chunk store), for the time the coordinator gives. The
 * seed is recorded in the agent's data directory (seed-store.ts) before the
 * answer goes out, so a restarted agent serves it again.
 *
 * What may be read: exactly what may be written. The path must pass
 * resolveDest against this agent's roots (inside a root by realpath, no
 * symlinked directory between the root and the file, not a symlink itself)
 * and be a regular file. The roots are the only part of this host the
 * coordinator may touch; serving a file to the fleet is reading it for
 * anyone in the fleet, so it gets the same allowlist, not a wider one.
 *
 * Never serves bytes other than those hashed: every chunk read is preceded
 * by a check of the open file's identity (device, inode, size, mtime, ctime,
 * as recorded when the manifest was built), and a seed restored after a
 * restart checks each chunk against its digest the first time it serves it
 * (a fresh seed's chunks were just hashed by this process). A seed whose
 * file changed is broken for good: every later request is refused with a
 * message naming the agent, the path and what changed (seedRefusal).
 */
import type { BigIntStats } from 'node:fs';
import { type FileHandle, open, stat } from 'node:fs/promises';
import { CanopyError, isCanopyError } from '../errors/index.js';
import type { SourceTask, TaskResult } from '../protocol/index.js';
import {
  buildManifest,
  chunkDigest,
  chunkRange,
  type Manifest,
  manifestId,
  resolveDest,
} from '../transfer/index.js';
import type { ExecPolicy } from './executor.js';
import { output as taskOutput } from './task-output.js';

type SourceOutput = Omit<TaskResult, 'taskId' | 'runId'>;

/**
 * Who a file is: what the manifest was built from. Any difference means the
 * bytes may differ (a write moves mtime and ctime; a replacement moves the
 * inode; a chmod moves ctime too, and is refused as well: cheap to redo, and
 * no way to tell it from a write that put mtime back). Integers as decimal
 * strings: a BigInt stat, exact to the nanosecond, and JSON-safe.
 */
export interface FileIdentity {
  dev: string;
  ino: string;
  size: number;
  mtimeNs: string;
  ctimeNs: string;
}

/** A file this agent serves as a distribution's source. */
export interface Seed {
  /** This agent's name, for messages. */
  host: string;
  /** The file, by real path (resolveDest's answer). */
  path: string;
  blob: string;
  manifest: Manifest;
  /** Serves until then (ms since the epoch). */
  until: number;
  /** Caps this agent's upload while it serves the blob (the distribution's --rate-limit). */
  rateLimit?: number;
  /** The file as the manifest was built from it: a file that differs now is not served. */
  identity: FileIdentity;
  /** Opened on the first chunk served, closed when the seed is dropped. */
  file: Promise<FileHandle> | undefined;
  /**
   * Restored seeds: one bit per chunk, set once the chunk was read from the file and matched its
   * digest in this process. Undefined for a seed hashed by this process (every chunk checked).
   */
  verified?: Uint8Array;
  /** Why this seed serves no more (its file changed); set once, never cleared. */
  broken?: string;
}

export function identityOf(st: BigIntStats): FileIdentity {
  return {
    dev: st.dev.toString(),
    ino: st.ino.toString(),
    size: Number(st.size),
    mtimeNs: st.mtimeNs.toString(),
    ctimeNs: st.ctimeNs.toString(),
  };
}

/** How the file differs from what was hashed, in words; undefined if it does not. */
export function identityChange(was: FileIdentity, now: FileIdentity): string | undefined {
  const at = (ns: string) => new Date(Number(BigInt(ns) / 1_000_000n)).toISOString();
  if (now.dev !== was.dev || now.ino !== was.ino) {
    return `it was replaced by another file (inode ${was.dev}:${was.ino}, now ${now.dev}:${now.ino})`;
  }
  if (now.size !== was.size) return `its size changed from ${was.size} to ${now.size} bytes`;
  if (now.mtimeNs !== was.mtimeNs) {
    return `it was modified (mtime ${at(was.mtimeNs)}, now ${at(now.mtimeNs)})`;
  }
  if (now.ctimeNs !== was.ctimeNs) {
    return `its inode changed (ctime ${at(was.ctimeNs)}, now ${at(now.ctimeNs)}: written, or its mode or owner changed)`;
  }
  return undefined;
}

/**
 * The refusal a broken seed answers every chunk request with:
 * DIST_SOURCE_REFUSED. A receiver whose last candidate answers it gives up on
 * the stripe at once (dist-task.ts), naming the agent, the path and what
 * changed.
 */
export function seedRefusal(seed: Seed): CanopyError {
  return new CanopyError(
    'DIST_SOURCE_REFUSED',
    `agent "${seed.host}" no longer serves ${seed.path} (blob ${seed.blob.slice(0, 16)}): ` +
      `${seed.broken ?? 'it is not served'}; the chunks nobody has yet cannot come from it: ` +
      `run canopy dist --source ${seed.host} again`,
    { host: seed.host, path: seed.path, blob: seed.blob },
  );
}

/** Checks and hashes the file; the result carries `source: {blob, manifest}`, or why not. */
export async function prepareSource(
  task: SourceTask,
  policy: ExecPolicy,
  now: () => number = Date.now,
): Promise<{ output: SourceOutput; seed?: Seed }> {
  const startedAt = now();
  const spec = task.spec;
  const out = (state: SourceOutput['state'], error?: string, extra: Partial<SourceOutput> = {}) => ({
    ...taskOutput(startedAt, now(), state, error),
    ...extra,
  });
  const where = `agent "${task.host}"`;
  const check = await resolveDest(spec.path, policy.roots);
  if (!check.ok) {
    // resolveDest words it for a destination; the same rules decide what a source may be.
    const why = check.reason
      .replace(/^destination /, 'the source file ')
      .replace('or change dest', 'or give a path inside one');
    return { output: out('refused', `${where} will not serve ${spec.path}: ${why}`) };
  }
  const st = await stat(check.path, { bigint: true }).catch((err: NodeJS.ErrnoException) => err);
  if (st instanceof Error) {
    const why = st.code === 'ENOENT' ? 'no such file on this host' : st.message;
    return { output: out('failed', `${where} cannot serve ${spec.path}: ${why}`) };
  }
  if (!st.isFile()) {
    return {
      output: out(
        'refused',
        `${where} cannot serve ${spec.path}: it is not a regular file (--source distributes one file)`,
      ),
    };
  }
  try {
    const identity = identityOf(st);
    const manifest = await buildManifest(check.path, { chunkSize: spec.chunkSize });
    const changed = identityChange(identity, identityOf(await stat(check.path, { bigint: true })));
    if (changed) {
      const why = `${changed} while it was being hashed; distribute it once nothing writes it any more`;
      return { output: out('failed', `${where} cannot serve ${spec.path}: ${why}`) };
    }
    const blob = await manifestId(manifest);
    const seed: Seed = {
      host: task.host,
      path: check.path,
      blob,
      manifest,
      until: now() + spec.serveForMs,
      ...(spec.rateLimit ? { rateLimit: spec.rateLimit } : {}),
      identity,
      file: undefined,
    };
    return {
      output: out('ok', undefined, {
        source: { blob, manifest: { ...manifest, chunks: [...manifest.chunks] } },
      }),
      seed,
    };
  } catch (err) {
    const code = isCanopyError(err) ? ` [${err.code}]` : '';
    return { output: out('failed', `${where} cannot hash ${spec.path}: ${(err as Error).message}${code}`) };
  }
}

/**
 * A source task from start to answer: checks and hashes the file, then has
 * the seed recorded (`record`: the seed store persists it and starts serving)
 * before the answer goes out, so the coordinator never plans from a seed a
 * restart would forget.
 */
export async function runSource(
  task: SourceTask,
  ctx: { policy: ExecPolicy; record: (seed: Seed) => Promise<void>; now?: () => number },
): Promise<SourceOutput> {
  const now = ctx.now ?? Date.now;
  const { output, seed } = await prepareSource(task, ctx.policy, now);
  if (!seed) return output;
  try {
    await ctx.record(seed);
  } catch (err) {
    await closeSeed(seed);
    const why = `${(err as Error).message}; make the agent's data directory writable (and not full), then distribute again`;
    const error = `agent "${task.host}" cannot record the seed of ${task.spec.path}: ${why}`;
    return taskOutput(output.startedAt, now(), 'failed', error);
  }
  return output;
}

/**
 * Chunk `index` of a seed, read from its file. Undefined when the read fails
 * for a passing reason (the requester asks again or elsewhere). Throws
 * seedRefusal, and breaks the seed for good, when the file is not the
 * one hashed (gone, replaced, resized, written) or, for a restored seed, when
 * the chunk does not match its digest.
 */
export async function readSeedChunk(seed: Seed, index: number): Promise<Uint8Array | undefined> {
  if (seed.broken) throw seedRefusal(seed);
  const { offset, length } = chunkRange(seed.manifest, index);
  let buf: Buffer;
  try {
    seed.file ??= open(seed.path, 'r');
    const fh = await seed.file;
    const changed = identityChange(seed.identity, identityOf(await fh.stat({ bigint: true })));
    if (changed) return breakSeed(seed, changed);
    buf = Buffer.allocUnsafe(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    if (bytesRead !== length) return breakSeed(seed, `it ends before chunk ${index} does`);
  } catch (err) {
    if (isCanopyError(err)) throw err;
    await closeSeed(seed); // opened again on the next request
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return breakSeed(seed, 'it no longer exists');
    return undefined;
  }
  if (seed.verified && !hasBit(seed.verified, index)) {
    const digest = await chunkDigest(buf);
    if (digest !== seed.manifest.chunks[index]) {
      return breakSeed(seed, `chunk ${index} no longer matches its digest (the content changed in place)`);
    }
    setBit(seed.verified, index);
  }
  return buf;
}

function breakSeed(seed: Seed, why: string): never {
  seed.broken ??= `the file changed since it was hashed: ${why}`;
  throw seedRefusal(seed);
}

/** A bitset of `n` clear bits (restored seeds' chunks not yet verified). */
export function bitset(n: number): Uint8Array {
  return new Uint8Array(Math.ceil(n / 8));
}

function hasBit(bits: Uint8Array, i: number): boolean {
  return ((bits[i >> 3] ?? 0) & (1 << (i & 7))) !== 0;
}

function setBit(bits: Uint8Array, i: number): void {
  bits[i >> 3] = (bits[i >> 3] ?? 0) | (1 << (i & 7));
}

/** Closes a seed's file. */
export async function closeSeed(seed: Seed): Promise<void> {
  const f = seed.file;
  seed.file = undefined;
  await f?.then((fh) => fh.close()).catch(() => {});
}
