/**
 * The two primitives of every crash-safe write in canopy: a file written
 * and fsynced before anyone renames it into place, and a directory fsynced
 * after the rename so the new name survives a power cut.
 */
import { open } from 'node:fs/promises';

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
