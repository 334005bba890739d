/**
 * What ChunkStore.open() does after an unclean stop: lists the chunk and pack
 * files and makes the index's entries agree with them (the directory is the
 * truth, see chunk-store.ts), and reports what it removed and adopted.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { IHasher } from 'hash-wasm';
import { chunkPath, SHARDS, unlinkIfPresent } from './chunk-files.js';
import { type Entry, PACK_KEY } from './chunk-index.js';
import { isChunkDigest } from './manifest.js';
import { removePack } from './pack.js';

/** What open() found and repaired after an unclean stop. */
export interface RecoveryReport {
  tempFilesRemoved: number;
  entriesDropped: number;
  orphansAdopted: number;
  orphansRemoved: number;
  evictedOverQuota: number;
}

const TEMP_NAME = /^\..*\.tmp$/;
const PACK_NAME = /^([0-9a-f]{64})\.(pack|have)$/;

/**
 * Makes `entries` agree with the chunk files: removes temp files, drops
 * entries without a file, and adopts files without an entry if they hash to
 * their name (removing them otherwise), as most recently used.
 */
export async function reconcile(
  dir: string,
  entries: Map<string, Entry>,
  b3: IHasher,
): Promise<RecoveryReport> {
  const report: RecoveryReport = {
    tempFilesRemoved: 0,
    entriesDropped: 0,
    orphansAdopted: 0,
    orphansRemoved: 0,
    evictedOverQuota: 0,
  };
  const { chunks, temps } = await scanChunks(dir);
  await Promise.all(temps.map((p) => unlinkIfPresent(p)));
  report.tempFilesRemoved = temps.length;
  const { packs, names } = await scanPacks(dir);
  for (const blob of names) {
    if (packs.has(blob) && entries.has(PACK_KEY + blob)) continue;
    await removePack(join(dir, 'packs'), blob);
    report.orphansRemoved++;
  }
  for (const d of [...entries.keys()]) {
    if (chunks.has(d) || (d.startsWith(PACK_KEY) && packs.has(d.slice(PACK_KEY.length)))) continue;
    entries.delete(d);
    report.entriesDropped++;
  }
  const orphans = [...chunks].filter((d) => !entries.has(d));
  for (const o of await adoptable(dir, orphans, b3)) {
    if (o.ok) entries.set(o.digest, { size: o.size, lastUse: o.mtime });
    else await unlinkIfPresent(chunkPath(dir, o.digest));
    if (o.ok) report.orphansAdopted++;
    else report.orphansRemoved++;
  }
  return report;
}

/** Hashes each orphan file, one at a time; oldest first, so adoption keeps their age order. */
async function adoptable(
  dir: string,
  orphans: string[],
  b3: IHasher,
): Promise<{ digest: string; ok: boolean; size: number; mtime: number }[]> {
  const out = [];
  for (const digest of orphans) {
    const path = chunkPath(dir, digest);
    const [data, st] = await Promise.all([readFile(path), stat(path)]);
    const ok = b3.init().update(data).digest('hex') === digest;
    out.push({ digest, ok, size: data.length, mtime: Math.floor(st.mtimeMs) });
  }
  return out.sort((x, y) => x.mtime - y.mtime);
}

/** Lists the chunk files (by digest) and the temp files (by path) under DIR/chunks. Other names are left alone. */
async function scanChunks(dir: string): Promise<{ chunks: Set<string>; temps: string[] }> {
  const chunks = new Set<string>();
  const temps: string[] = [];
  const listings = await Promise.all(SHARDS.map((s) => readdir(join(dir, 'chunks', s))));
  listings.forEach((names, i) => {
    const shard = SHARDS[i] as string;
    for (const name of names) {
      if (TEMP_NAME.test(name)) temps.push(join(dir, 'chunks', shard, name));
      else if (isChunkDigest(name) && name.startsWith(shard)) chunks.add(name);
    }
  });
  return { chunks, temps };
}

/** Under DIR/packs: the blobs with a data file (`packs`), and those with any pack file (`names`). */
async function scanPacks(dir: string): Promise<{ packs: Set<string>; names: Set<string> }> {
  const packs = new Set<string>();
  const names = new Set<string>();
  for (const name of await readdir(join(dir, 'packs'))) {
    const m = PACK_NAME.exec(name);
    if (!m) continue;
    names.add(m[1] as string);
    if (m[2] === 'pack') packs.add(m[1] as string);
  }
  return { packs, names };
}
