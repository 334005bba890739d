/**
 * `canopy dist --source HOST` on agent HOST: this agent's own file is the
 * distribution's source. The task checks the path, hashes the file into a
 * manifest (BLAKE3 per chunk and the whole file's MD5, buildManifest), and
 * hands back the manifest and blob id; the agent then serves the blob's
 * chunks from its peer server straight from the file (a seed: nothing is
 * copied into the chunk store), for the time the coordinator gives.
 *
 * What may be read: exactly what may be written. The path must pass
 * resolveDest against this agent's roots (inside a root by realpath, no
 * symlinked directory between the root and the file, not a symlink itself)
 * and be a regular file. The roots are the only part of this host the
 * coordinator may touch; serving a file to the fleet is reading it for
 * anyone in the fleet, so it gets the same allowlist, not a wider one.
 */
import { type FileHandle, open, stat } from 'node:fs/promises';
import { isCanopyError } from '../errors/index.js';
import type { SourceTask, TaskResult } from '../protocol/index.js';
import { buildManifest, chunkRange, type Manifest, manifestId, resolveDest } from '../transfer/index.js';
import type { ExecPolicy } from './executor.js';
import { output as taskOutput } from './task-output.js';

type SourceOutput = Omit<TaskResult, 'taskId' | 'runId'>;

/** A file this agent serves as a distribution's source. */
export interface Seed {
  path: string;
  manifest: Manifest;
  /** Serves until then (ms since the epoch). */
  until: number;
  /** Opened on the first chunk served, closed when the seed is dropped. */
  file: Promise<FileHandle> | undefined;
  /** The file's mtime when the manifest was built: a file changed since (or resized) is not served. */
  mtimeMs: number;
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
    const why = check.reason.replace(/^destination /, 'the source file ');
    return { output: out('refused', `${where} will not serve ${spec.path}: ${why}`) };
  }
  const st = await stat(check.path).catch((err: NodeJS.ErrnoException) => err);
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
    const manifest = await buildManifest(check.path, { chunkSize: spec.chunkSize });
    const blob = await manifestId(manifest);
    const seed: Seed = {
      path: check.path,
      manifest,
      until: now() + spec.serveForMs,
      file: undefined,
      mtimeMs: st.mtimeMs,
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

/** Chunk `index` of a seed, read from its file; undefined if the file is gone or changed size or time. */
export async function readSeedChunk(seed: Seed, index: number): Promise<Uint8Array | undefined> {
  const { offset, length } = chunkRange(seed.manifest, index);
  try {
    seed.file ??= open(seed.path, 'r');
    const fh = await seed.file;
    const st = await fh.stat();
    if (st.size !== seed.manifest.size || st.mtimeMs !== seed.mtimeMs) return undefined;
    const buf = Buffer.allocUnsafe(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    return bytesRead === length ? buf : undefined;
  } catch {
    return undefined;
  }
}

/** Closes a seed's file. */
export async function closeSeed(seed: Seed): Promise<void> {
  const f = seed.file;
  seed.file = undefined;
  await f?.then((fh) => fh.close()).catch(() => {});
}
