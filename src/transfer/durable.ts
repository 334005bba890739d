/**
 * The two primitives of every crash-safe write in canopy: a file written
 * and fsynced before anyone renames it into place, and a directory fsynced
 * after the rename so the new name survives a power cut.
 */
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** Writes `data` to `file` (created: flag 'wx', mode 0600 by default) and fsyncs it. */
export async function writeSynced(
  file: string,
  data: Uint8Array | string,
  flag = 'wx',
  mode = 0o600,
): Promise<void> {
  const fh = await open(file, flag, mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Fsyncs a directory, making renames and creations in it durable. */
export async function syncDir(dir: string): Promise<void> {
  const d = await open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

let replacements = 0;

/**
 * Replaces `path` with `data` crash-safely: a temp file beside it (a name of
 * its own per call, so concurrent replacements never share one) written and
 * fsynced, renamed over `path`, the directory fsynced. On failure the temp
 * file is removed and `path` is untouched.
 */
export async function replaceSynced(path: string, data: Uint8Array | string): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${++replacements}.tmp`);
  try {
    await writeSynced(tmp, data, 'w');
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await syncDir(dir);
}
