/**
 * Manifests of files on the coordinator's machine, cached in the store by
 * file identity, so that `canopy dist FILE` (and a push's large `src:` file)
 * of an unchanged file does not read and hash it again (BLAKE3 per chunk and
 * MD5 of the whole file, inside the user's wait).
 *
 * An entry is keyed by (path, device, inode, size, mtime in ns, ctime in ns,
 * chunk size) and reused only while every one of them matches the file; any
 * difference means hashing again. ctime cannot be set from user space, so a
 * file rewritten in place with the same size and its mtime put back (utimes)
 * is still noticed. As for the agents' MD5 cache, a file changed in the
 * `RACY_MS` before it is hashed is not cached: a write within the
 * filesystem's timestamp granularity would leave no trace. A manifest read
 * back is validated against its blob id (a damaged entry is dropped and the
 * file hashed again). At most `limit` entries are kept, the least recently
 * used dropped first.
 *
 * Owns the store's manifestCache and manifestCacheUse sublevels and nothing
 * else; holds no manifest in memory (only the use times of its keys).
 */
import { createHash } from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { Logger } from 'pino';
import { buildManifest, type Manifest, manifestId, validateManifest } from '../transfer/index.js';
import type { CachedManifestRecord, Store } from './store.js';

/** A file changed this recently (ms) is hashed but not cached. */
export const RACY_MS = 2_000;
export const DEFAULT_MANIFEST_CACHE_ENTRIES = 64;

export interface ManifestCacheOptions {
  store: Store;
  logger: Logger;
  /** Entries kept (default 64). */
  limit?: number;
  /** Milliseconds since the epoch (tests pass a clock). */
  now?: () => number;
}

export class ManifestCache {
  /** Manifests built by reading the file, and manifests reused, since this process started. */
  readonly stats = { hashed: 0, reused: 0 };
  private readonly store: Store;
  private readonly log: Logger;
  private readonly limit: number;
  private readonly now: () => number;
  /** Key -> last use (ms), read from the store at first use. */
  private uses: Promise<Map<string, number>> | undefined;

  constructor(opts: ManifestCacheOptions) {
    this.store = opts.store;
    this.log = opts.logger;
    this.limit = Math.max(1, opts.limit ?? DEFAULT_MANIFEST_CACHE_ENTRIES);
    this.now = opts.now ?? Date.now;
  }

  /**
   * The manifest of the file at `path` in chunks of `chunkSize`, and its blob
   * id: from the cache when the file is unchanged, else built (and cached).
   * Throws what buildManifest throws (INPUT_NOT_FOUND, TRANSFER_MANIFEST_INVALID).
   */
  async manifest(path: string, chunkSize: number): Promise<{ manifest: Manifest; blob: string }> {
    const before = await identity(path, chunkSize);
    const hit = before && (await this.lookup(path, before));
    if (hit) return hit;
    const started = this.now();
    const manifest = await buildManifest(path, { chunkSize });
    const blob = await manifestId(manifest);
    this.stats.hashed++;
    const after = await identity(path, chunkSize);
    const settled = before !== undefined && started - before.changedMs > RACY_MS;
    const cached = settled && after?.key === before.key;
    if (cached) await this.remember(before, manifest, blob);
    this.log.info(
      { path, size: manifest.size, chunkSize, blob, ms: this.now() - started, cached },
      'dist.manifest.hashed',
    );
    return { manifest, blob };
  }

  /** The cached manifest of a file whose identity matches, validated; undefined otherwise. */
  private async lookup(
    path: string,
    id: Identity,
  ): Promise<{ manifest: Manifest; blob: string } | undefined> {
    const record = await this.store.manifestCache.get(id.key);
    if (!record || !sameFile(record, id.record)) return undefined;
    let manifest: Manifest;
    try {
      manifest = await validateManifest(record.manifest, {
        id: record.blob,
        source: `the manifest cache (${path})`,
      });
    } catch (err) {
      this.log.warn({ err, path }, 'dist.manifest.cache_damaged');
      await this.forget([id.key]);
      return undefined;
    }
    const uses = await this.loadUses();
    const at = this.now();
    uses.set(id.key, at);
    await this.store.commit([this.store.put(this.store.manifestCacheUse, id.key, { usedAt: at })]);
    this.stats.reused++;
    this.log.info(
      { path, size: manifest.size, chunkSize: manifest.chunkSize, blob: record.blob },
      'dist.manifest.reused',
    );
    return { manifest, blob: record.blob };
  }

  private async remember(id: Identity, manifest: Manifest, blob: string): Promise<void> {
    const uses = await this.loadUses();
    const at = this.now();
    uses.set(id.key, at);
    const record: CachedManifestRecord = {
      ...id.record,
      blob,
      manifest: { ...manifest, chunks: [...manifest.chunks] },
    };
    const ops = [
      this.store.put(this.store.manifestCache, id.key, record),
      this.store.put(this.store.manifestCacheUse, id.key, { usedAt: at }),
    ];
    const oldest = [...uses].sort((a, b) => a[1] - b[1]).slice(0, Math.max(0, uses.size - this.limit));
    for (const [key] of oldest) {
      uses.delete(key);
      ops.push(
        this.store.del(this.store.manifestCache, key),
        this.store.del(this.store.manifestCacheUse, key),
      );
    }
    await this.store.commit(ops);
  }

  private async forget(keys: string[]): Promise<void> {
    const uses = await this.loadUses();
    for (const k of keys) uses.delete(k);
    await this.store.commit(
      keys.flatMap((k) => [
        this.store.del(this.store.manifestCache, k),
        this.store.del(this.store.manifestCacheUse, k),
      ]),
    );
  }

  private loadUses(): Promise<Map<string, number>> {
    this.uses ??= this.store
      .entries(this.store.manifestCacheUse)
      .then((entries) => new Map(entries.map(([k, v]) => [k, v.usedAt] as const)));
    return this.uses;
  }
}

type IdentityFields = Omit<CachedManifestRecord, 'blob' | 'manifest'>;

interface Identity {
  key: string;
  record: IdentityFields;
  /** The later of mtime and ctime, in ms. */
  changedMs: number;
}

/** The file's identity now, or undefined if it is not a regular file (buildManifest then says why). */
async function identity(path: string, chunkSize: number): Promise<Identity | undefined> {
  const st: BigIntStats | undefined = await stat(path, { bigint: true }).catch(() => undefined);
  if (!st?.isFile()) return undefined;
  const record: IdentityFields = {
    path,
    dev: st.dev.toString(),
    ino: st.ino.toString(),
    size: Number(st.size),
    mtimeNs: st.mtimeNs.toString(),
    ctimeNs: st.ctimeNs.toString(),
    chunkSize,
  };
  const key = createHash('sha256').update(JSON.stringify(record)).digest('hex');
  const changed = st.ctimeNs > st.mtimeNs ? st.ctimeNs : st.mtimeNs;
  return { key, record, changedMs: Number(changed / 1_000_000n) };
}

function sameFile(a: IdentityFields, b: IdentityFields): boolean {
  return (
    a.path === b.path &&
    a.dev === b.dev &&
    a.ino === b.ino &&
    a.size === b.size &&
    a.mtimeNs === b.mtimeNs &&
    a.ctimeNs === b.ctimeNs &&
    a.chunkSize === b.chunkSize
  );
}
