/**
 * The chunk store's file helpers: where a chunk file lives, the durable
 * writes (a chunk beside its final name, the index log by replacement), exact
 * reads, and the sinks assemble() writes a blob through. No state of their own.
 */
import { randomBytes } from 'node:crypto';
import { ftruncate, write } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { open, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { syncDir, writeSynced } from './durable.js';

export const SHARDS = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
const writeFd = promisify(write);
const ftruncateFd = promisify(ftruncate);

export function chunkPath(dir: string, digest: string): string {
  return join(dir, 'chunks', digest.slice(0, 2), digest);
}

/** Temp file beside the final name, fsync, rename, fsync the directory. */
export async function writeChunk(
  dir: string,
  digest: string,
  data: Uint8Array,
  durable: boolean,
): Promise<void> {
  const final = chunkPath(dir, digest);
  const tmp = join(
    dir,
    'chunks',
    digest.slice(0, 2),
    `.${digest}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`,
  );
  try {
    if (durable) await writeSynced(tmp, data);
    else await writeFile(tmp, data, { mode: 0o600 });
    await rename(tmp, final);
  } catch (err) {
    await unlinkIfPresent(tmp);
    throw err;
  }
  if (durable) await syncDir(join(dir, 'chunks', digest.slice(0, 2)));
}

export async function replaceFile(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp`;
  await writeSynced(tmp, text, 'w');
  await rename(tmp, path);
}

export async function unlinkIfPresent(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

export async function readExactly(fh: FileHandle, buf: Buffer): Promise<void> {
  let filled = 0;
  while (filled < buf.length) {
    const { bytesRead } = await fh.read(buf, filled, buf.length - filled, filled);
    if (bytesRead === 0) throw new Error(`chunk file ended after ${filled} of ${buf.length} bytes`);
    filled += bytesRead;
  }
}

/**
 * A path (created or truncated, fsynced and closed), or a file the caller
 * opened for writing, not appending (an fd or FileHandle, left open and not
 * fsynced). assemble() writes at positions and truncates to the blob's size.
 */
export type AssembleTarget = string | number | FileHandle;

/** Where assemble() writes: positional writes, then truncate to size. */
export interface Sink {
  write(data: Buffer, position: number): Promise<void>;
  finish(size: number): Promise<void>;
  close(): Promise<void>;
}

export async function openSink(target: AssembleTarget): Promise<Sink> {
  if (typeof target === 'number') return fdSink(target);
  const owned = typeof target === 'string';
  const fh = owned ? await open(target, 'w', 0o600) : target;
  return {
    write: async (data, position) => {
      for (let done = 0; done < data.length; ) {
        done += (await fh.write(data, done, data.length - done, position + done)).bytesWritten;
      }
    },
    finish: async (size) => {
      await fh.truncate(size);
      if (owned) await fh.sync();
    },
    close: async () => {
      if (owned) await fh.close();
    },
  };
}

function fdSink(fd: number): Sink {
  return {
    write: async (data, position) => {
      for (let done = 0; done < data.length; ) {
        done += (await writeFd(fd, data, done, data.length - done, position + done)).bytesWritten;
      }
    },
    finish: (size) => ftruncateFd(fd, size),
    close: async () => {},
  };
}
