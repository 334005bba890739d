/**
 * The agent's chunk store: verified chunks on local disk, named by their
 * BLAKE3-256 digest, under a byte quota, evicted least recently used first.
 * One store per agent, one process per store directory.
 *
 *   DIR/chunks/ab/abcd…            a chunk, named by its digest (64 hex)
 *   DIR/chunks/ab/.abcd….P.N.tmp   a chunk being written, beside its final name
 *   DIR/index.log                  sizes and use order (see IndexLog)
 *   DIR/packs/BLOB.pack, .have     a distribution's blob, chunk i at its offset (see Pack)
 *
 * A distribution opens its blob's pack (openPack): the blob's whole size is
 * reserved against the quota at once (so a store too small fails before a
 * byte is fetched), and from then on put/get/has/waitFor of the blob's chunk
 * digests go to the pack, one positional write or read on an open file per
 * chunk. A pack is an entry like a chunk (key `p:BLOB`): pinned while its
 * distribution runs and serves, evicted whole, least recently used first.
 *
 * Invariants:
 *  - a file under a digest name holds exactly the data of that digest: data
 *    are hashed first, written to a temp file, fsynced, and only then renamed
 *    (and the directory fsynced), so a chunk that put() accepted survives
 *    kill -9 and power loss, and nothing unverified is ever visible;
 *  - the directory is the truth about which chunks exist; the index only adds
 *    sizes and use order, so open() reads one file and lists 256 directories
 *    without a stat or a hash per chunk. open() reconciles the two: removes
 *    temp files, drops entries whose file is gone, and re-hashes files that
 *    have no entry (a crash between rename and index append), keeping those
 *    that verify. After open() the index and the directory agree;
 *  - only the event loop touches `entries` (a Map kept in use order: a use
 *    re-inserts), `used`, `reserved` and the pins, and the quota check, the
 *    reservation and the choice of victims happen in one synchronous step, so
 *    concurrent puts cannot both take the last free bytes;
 *  - at most one put or eviction per digest runs at a time (`busy`).
 * The store never returns bytes of the wrong length; get() re-hashes on
 * request, and assemble() checks the whole-file MD5 of what it wrote.
 *
 * Helpers beside it: chunk-index.ts (the index log), chunk-recovery.ts
 * (open()'s reconciliation) and chunk-files.ts (chunk paths, durable
 * writes, exact reads, assemble()'s sinks).
 */
import { constants } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { mkdir, open } from 'node:fs/promises';
import { join } from 'node:path';
import { createBLAKE3, createMD5, type IHasher } from 'hash-wasm';
import { CanopyError } from '../errors/index.js';
import {
  type AssembleTarget,
  chunkPath,
  openSink,
  readExactly,
  SHARDS,
  type Sink,
  unlinkIfPresent,
  writeChunk,
} from './chunk-files.js';
import { type Entry, IndexLog, PACK_KEY } from './chunk-index.js';
import { type RecoveryReport, reconcile } from './chunk-recovery.js';
import { chunkRange, isChunkDigest, type Manifest } from './manifest.js';
import { Pack, removePack } from './pack.js';

export type { AssembleTarget } from './chunk-files.js';
export type { RecoveryReport } from './chunk-recovery.js';

export interface ChunkStoreOptions {
  /** Most bytes of chunk data the store keeps on disk. */
  quotaBytes: number;
  /** Milliseconds since the epoch; tests pass a fake clock. */
  now?: () => number;
  /**
   * fsync every chunk and its directory before it becomes visible (default
   * true). A relay may turn it off: after a power loss a chunk could then be
   * damaged, which every receiver's BLAKE3 check catches (and a resumed
   * assembly re-hashes what it reuses), while a kill -9 loses nothing.
   */
  durable?: boolean;
  /** Keeps the most recently stored chunks in memory, up to this many bytes, for get() (default 0). */
  cacheBytes?: number;
}

export interface PutOptions {
  /**
   * The caller has already checked that `data` hashes to `digest` (the peer
   * client hashes every chunk as it streams in): skip the second BLAKE3.
   */
  verified?: boolean;
}

export interface GetOptions {
  /** Re-hash the data read from disk (catches bit rot; costs one BLAKE3 pass). */
  verify?: boolean;
  /**
   * A buffer the caller lends for the read: a packed chunk is read into it when
   * it is big enough, and the result is then a view of it (so the caller must
   * not reuse it while the result is in use). Other chunks ignore it.
   */
  into?: Buffer;
}

export interface AssembleOptions {
  signal?: AbortSignal;
  /**
   * Re-hash every chunk as it is read, failing at the first bad one. Without
   * it only the whole-file MD5 is checked, and the chunks are re-hashed only
   * after a mismatch, to find and drop the bad ones.
   */
  verify?: boolean;
}

const FETCH_AGAIN = 'it was removed from the store; fetch the chunk again (retrying the transfer does)';

export class ChunkStore {
  /** Index records buffered past this many are written even without a put. */
  private static readonly FLUSH_EVERY = 256;
  private readonly busy = new Map<string, Promise<void>>();
  private readonly waiters = new Map<string, Set<(ok: boolean) => void>>();
  /** Recently stored chunks (insertion order = age); their bytes are `recentBytes`. */
  private readonly recent = new Map<string, Buffer>();
  private recentBytes = 0;
  private readonly pins = new Map<string, Set<string>>();
  private readonly pinCount = new Map<string, number>();
  private used = 0;
  private reserved = 0;
  private assembles = 0;
  private closing: Promise<void> | undefined;
  /** Open packs by blob, and where each of their chunk digests lives. */
  private readonly packs = new Map<string, Pack>();
  private readonly packed = new Map<string, { pack: Pack; indexes: number[] }[]>();

  private constructor(
    readonly dir: string,
    readonly quotaBytes: number,
    readonly recovered: RecoveryReport,
    private readonly entries: Map<string, Entry>,
    private readonly log: IndexLog,
    private readonly b3: IHasher,
    private readonly now: () => number,
    private readonly durable = true,
    private readonly cacheBytes = 0,
  ) {
    for (const e of entries.values()) this.used += e.size;
  }

  /**
   * Opens (creating if needed) the store in `dir` and reconciles its index
   * with the chunk files, as the module comment describes. Chunks over the
   * quota (after the quota was lowered) are evicted.
   */
  static async open(dir: string, options: ChunkStoreOptions): Promise<ChunkStore> {
    checkQuota(dir, options.quotaBytes);
    await mkdir(join(dir, 'chunks'), { recursive: true, mode: 0o700 });
    await Promise.all(SHARDS.map((s) => mkdir(join(dir, 'chunks', s), { recursive: true, mode: 0o700 })));
    await mkdir(join(dir, 'packs'), { recursive: true, mode: 0o700 });
    const b3 = await createBLAKE3();
    const indexPath = join(dir, 'index.log');
    const loaded = await IndexLog.read(indexPath);
    const report = await reconcile(dir, loaded.entries, b3);
    const changed = report.entriesDropped + report.orphansAdopted > 0 || !loaded.clean;
    const log = await IndexLog.open(indexPath, loaded.records);
    const now = options.now ?? Date.now;
    const store = new ChunkStore(
      dir,
      options.quotaBytes,
      report,
      loaded.entries,
      log,
      b3,
      now,
      options.durable ?? true,
      options.cacheBytes ?? 0,
    );
    if (changed || log.bloated(loaded.entries.size)) await log.rewrite(() => loaded.entries);
    report.evictedOverQuota = await store.shrinkToQuota();
    return store;
  }

  /** Bytes of chunk data in the store (not counting chunks being written). */
  get usedBytes(): number {
    return this.used;
  }

  /** Number of chunks in the store. */
  get count(): number {
    return this.entries.size;
  }

  /** True when the store holds a verified chunk with this digest (loose, or in an open pack). */
  has(digest: string): boolean {
    return this.entries.has(digest) || this.inPack(digest) !== undefined;
  }

  /** Indexes of the manifest's chunks that the store lacks, in order. */
  missing(manifest: Manifest): number[] {
    const out: number[] = [];
    manifest.chunks.forEach((d, i) => {
      if (!this.has(d)) out.push(i);
    });
    return out;
  }

  /**
   * Opens the pack of `blob` for `owner` (a distribution task), creating it
   * if the store has none: the blob's size is reserved against the quota
   * (evicting unpinned entries, least recently used first; TRANSFER_QUOTA,
   * evicting nothing, when that cannot make room). The pack is pinned for
   * `owner`; unpin(owner) closes it once no one else pins it. While open,
   * the blob's chunks are stored and served through it.
   */
  async openPack(owner: string, blob: string, manifest: Manifest): Promise<Pack> {
    this.checkOpen();
    const key = PACK_KEY + blob;
    this.pin(owner, [key]);
    try {
      for (let b = this.busy.get(key); b; b = this.busy.get(key)) await b;
      const open = this.packs.get(blob);
      if (open) return open;
      // One open per blob at a time (`busy`): a concurrent caller waits above, then shares the pack,
      // instead of reserving the blob twice, or removing the files of a pack being created.
      const opening = this.startPack(key, blob, manifest);
      this.setBusy(
        key,
        opening.then(() => {}),
      );
      return await opening;
    } catch (err) {
      this.unpin(owner);
      throw err;
    }
  }

  /** Reserves and records the pack's entry unless the store has one, then opens the pack and serves its chunks. */
  private async startPack(key: string, blob: string, manifest: Manifest): Promise<Pack> {
    if (!this.entries.has(key)) {
      const evictions = await this.makeRoom(`blob ${blob}`, manifest.size);
      try {
        await Promise.all(evictions);
        await removePack(this.packDir, blob);
      } finally {
        this.reserved -= manifest.size;
      }
      this.used += manifest.size;
      this.entries.set(key, { size: manifest.size, lastUse: this.now() });
      this.log.record(`+ ${key} ${manifest.size} ${this.now()}`);
      await this.log.flush();
    } else {
      this.touch(key);
    }
    const pack = await Pack.open(this.packDir, blob, manifest, this.durable);
    if (this.packs.has(blob)) {
      await pack.close();
      return this.packs.get(blob) as Pack;
    }
    this.packs.set(blob, pack);
    manifest.chunks.forEach((d, i) => {
      const homes = this.packed.get(d) ?? [];
      this.packed.set(d, homes);
      const mine = homes.find((h) => h.pack === pack);
      if (mine) mine.indexes.push(i);
      else homes.push({ pack, indexes: [i] });
    });
    return pack;
  }

  /** Protects these chunks (present or future) from eviction until unpin(owner). Adds to earlier pins. */
  pin(owner: string, digests: readonly string[]): void {
    const mine = this.pins.get(owner) ?? new Set<string>();
    this.pins.set(owner, mine);
    for (const d of digests) {
      if (mine.has(d)) continue;
      mine.add(d);
      this.pinCount.set(d, (this.pinCount.get(d) ?? 0) + 1);
    }
  }

  /** Drops every pin of `owner` (closing packs no one pins any more); unknown owners are ignored. */
  unpin(owner: string): void {
    for (const d of this.pins.get(owner) ?? []) {
      const n = (this.pinCount.get(d) ?? 1) - 1;
      if (n > 0) this.pinCount.set(d, n);
      else {
        this.pinCount.delete(d);
        if (d.startsWith(PACK_KEY)) void this.closePack(d.slice(PACK_KEY.length));
      }
    }
    this.pins.delete(owner);
  }

  /**
   * Returns the chunk's data and marks it used. Throws TRANSFER_CHUNK_MISSING
   * when absent, and TRANSFER_DIGEST_MISMATCH (after removing the chunk) when
   * the file has the wrong length or, with `verify`, the wrong digest.
   */
  async get(digest: string, options: GetOptions = {}): Promise<Buffer> {
    this.checkOpen();
    const packed = this.inPack(checkDigest(digest));
    if (packed) return this.getPacked(digest, packed.pack, packed.index, options);
    const entry = this.entries.get(digest);
    if (!entry) throw this.chunkMissing(digest);
    const cached = options.verify ? undefined : this.recent.get(digest);
    if (cached) {
      await this.markUsed(digest);
      return cached;
    }
    const data = await this.readWhole(digest);
    const actual = data.length === entry.size && !options.verify ? digest : this.hash(data);
    if (actual !== digest || data.length !== entry.size) {
      await this.discard(digest);
      throw this.corrupt(digest, `holds ${data.length} bytes hashing to ${actual}`);
    }
    await this.markUsed(digest);
    return data;
  }

  /**
   * Stores a chunk after checking that `data` hashes to `digest`; storing a
   * chunk already present only marks it used. Evicts unpinned chunks, least
   * recently used first, to stay within the quota. Throws
   * TRANSFER_DIGEST_MISMATCH (nothing is written) or TRANSFER_QUOTA (nothing
   * is evicted).
   */
  async put(digest: string, data: Uint8Array, options: PutOptions = {}): Promise<void> {
    this.checkOpen();
    const actual = options.verified ? checkDigest(digest) : this.hash(data);
    if (actual !== checkDigest(digest)) {
      throw new CanopyError(
        'TRANSFER_DIGEST_MISMATCH',
        `chunk refused by the store in ${this.dir}: expected digest ${digest}, but the ${data.length} bytes ` +
          `received hash to ${actual}; nothing was stored. The sender's copy or the link is bad: fetch the ` +
          `chunk again, from another peer or the source`,
        { path: this.dir, expected: digest, actual },
      );
    }
    for (let b = this.busy.get(digest); b; b = this.busy.get(digest)) await b;
    this.checkOpen();
    if (this.entries.has(digest)) return this.touch(digest);
    const work = this.store(digest, data);
    this.setBusy(digest, work);
    await work;
  }

  /**
   * Copies into an open pack the chunks it lacks that the store holds
   * elsewhere (loose, or in another open pack: a new version of a blob
   * often shares most chunks with the old one), each re-hashed on the way
   * (a damaged one is dropped, not copied). Returns how many it copied.
   */
  async fillPack(pack: Pack): Promise<number> {
    let copied = 0;
    for (let i = 0; i < pack.manifest.chunks.length; i++) {
      const digest = pack.manifest.chunks[i] as string;
      if (pack.has(i) || !this.has(digest)) continue;
      const data = await this.get(digest, { verify: true }).catch(() => undefined);
      if (!data) continue;
      await pack.write(i, data);
      copied++;
    }
    return copied;
  }

  /**
   * Stores chunk `index` of an open pack (already checked against its
   * digest), and at every other index of that pack with the same digest (a
   * blob may repeat a chunk); it is then served from memory for a while.
   * With `release` (a pooled buffer, see chunk-pool.ts) it is not kept in
   * memory: `release` is called exactly once, when the pack is done with
   * `data`, whether the store succeeds or throws.
   */
  async putInPack(pack: Pack, index: number, data: Uint8Array, release?: () => void): Promise<void> {
    if (this.closing) release?.();
    this.checkOpen();
    const digest = pack.manifest.chunks[index] as string;
    const mine = this.packed.get(digest)?.find((h) => h.pack === pack);
    const indexes = mine?.indexes ?? [index];
    // With `release` the caller's buffer goes back once every write of it is done with it; it is
    // not kept in the recent-chunk cache (children are served from the pack file instead).
    let left = indexes.length;
    const done = release && (() => --left === 0 && release());
    for (const [k, i] of indexes.entries()) {
      try {
        await pack.write(i, data, done);
      } catch (err) {
        for (let rest = k + 1; rest < indexes.length; rest++) done?.();
        throw err;
      }
    }
    if (!release) this.remember(digest, data);
    for (const wake of [...(this.waiters.get(digest) ?? [])]) wake(true);
    await this.markUsed(PACK_KEY + pack.blob);
  }

  /**
   * Resolves true as soon as the store holds `digest` (at once if it does),
   * false after `ms` or when `signal` aborts. A peer serving a blob it is
   * still fetching answers a request for the next chunk when it lands
   * instead of refusing it and having the child ask again.
   */
  waitFor(digest: string, ms: number, signal?: AbortSignal): Promise<boolean> {
    if (this.has(digest)) return Promise.resolve(true);
    if (ms <= 0 || signal?.aborted) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      const waiters = this.waiters.get(digest) ?? new Set<(ok: boolean) => void>();
      this.waiters.set(digest, waiters);
      const done = (ok: boolean) => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        waiters.delete(done);
        if (waiters.size === 0 && this.waiters.get(digest) === waiters) this.waiters.delete(digest);
        resolve(ok);
      };
      const onAbort = () => done(false);
      const timer = setTimeout(() => done(false), ms);
      signal?.addEventListener('abort', onAbort, { once: true });
      waiters.add(done);
    });
  }

  /**
   * Writes the manifest's chunks in order into `target` (see AssembleTarget),
   * one chunk in memory at a time, and checks the whole file's MD5. The
   * chunks are pinned meanwhile. Throws TRANSFER_CHUNK_MISSING (before
   * writing anything) when chunks are absent, TRANSFER_DIGEST_MISMATCH when
   * the MD5 or a chunk is wrong (bad chunks are removed, so missing() lists
   * them), and the signal's reason when aborted. The caller owns the temp
   * file: on error, discard it.
   */
  async assemble(manifest: Manifest, target: AssembleTarget, options: AssembleOptions = {}): Promise<void> {
    this.checkOpen();
    const absent = this.missing(manifest);
    if (absent.length > 0) throw this.chunksMissing(absent, manifest);
    const owner = `assemble#${++this.assembles}`;
    this.pin(owner, manifest.chunks);
    try {
      const sink = await openSink(target);
      try {
        await this.writeAll(manifest, sink, options);
        await sink.finish(manifest.size);
      } finally {
        await sink.close();
      }
    } finally {
      this.unpin(owner);
    }
  }

  /** Writes pending index records and waits for running puts. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await Promise.all(this.busy.values());
      await Promise.all([...this.packs.keys()].map((b) => this.closePack(b)));
      await this.log.close();
    })();
    return this.closing;
  }

  private get packDir(): string {
    return join(this.dir, 'packs');
  }

  /** An open pack holding a chunk with this digest, and its index there. */
  private inPack(digest: string): { pack: Pack; index: number } | undefined {
    for (const h of this.packed.get(digest) ?? []) {
      const index = h.indexes.find((i) => h.pack.has(i));
      if (index !== undefined) return { pack: h.pack, index };
    }
    return undefined;
  }

  private async getPacked(digest: string, pack: Pack, index: number, options: GetOptions): Promise<Buffer> {
    const cached = options.verify ? undefined : this.recent.get(digest);
    const data = cached ?? (await pack.read(index, options.into));
    if (options.verify && this.hash(data) !== digest) {
      throw new CanopyError(
        'TRANSFER_DIGEST_MISMATCH',
        `chunk ${index} (${digest}) of the pack ${pack.path} was damaged on disk; ${FETCH_AGAIN}`,
        { path: pack.path, expected: digest },
      );
    }
    await this.markUsed(PACK_KEY + pack.blob);
    return data;
  }

  private async closePack(blob: string): Promise<void> {
    const pack = this.packs.get(blob);
    if (!pack) return;
    this.packs.delete(blob);
    for (const d of new Set(pack.manifest.chunks)) {
      const others = (this.packed.get(d) ?? []).filter((h) => h.pack !== pack);
      if (others.length > 0) this.packed.set(d, others);
      else this.packed.delete(d);
      this.forget(d);
    }
    await pack.close();
  }

  private async writeAll(manifest: Manifest, sink: Sink, options: AssembleOptions): Promise<void> {
    const md5 = (await createMD5()).init();
    const buf = Buffer.allocUnsafe(Math.min(manifest.size, manifest.chunkSize));
    for (let i = 0; i < manifest.chunks.length; i++) {
      options.signal?.throwIfAborted();
      const { offset, length } = chunkRange(manifest, i);
      const data = await this.readChunk(manifest, i, buf.subarray(0, length));
      if (options.verify) await this.checkChunk(manifest, i, data);
      md5.update(data);
      await sink.write(data, offset);
      await this.markUsed(manifest.chunks[i] as string);
    }
    const actual = md5.digest('hex');
    if (actual !== manifest.md5) throw await this.md5Mismatch(manifest, actual, buf);
  }

  /** Reads chunk `i` of the manifest into `buf`, whose length is the chunk's length. */
  private async readChunk(manifest: Manifest, i: number, buf: Buffer): Promise<Buffer> {
    const digest = manifest.chunks[i] as string;
    const fh = await this.openChunk(digest);
    try {
      const { size } = await fh.stat();
      if (size !== buf.length) await this.wrongLength(manifest, i, size, buf.length);
      await readExactly(fh, buf);
      return buf;
    } finally {
      await fh.close();
    }
  }

  private async checkChunk(manifest: Manifest, i: number, data: Buffer): Promise<void> {
    const digest = manifest.chunks[i] as string;
    const actual = this.hash(data);
    if (actual === digest) return;
    await this.discard(digest);
    throw this.corrupt(digest, `(chunk ${i} of the blob) hashes to ${actual}`);
  }

  /** A chunk's length differs from the manifest's: a damaged file, or a manifest that lies. */
  private async wrongLength(manifest: Manifest, i: number, size: number, want: number): Promise<never> {
    const digest = manifest.chunks[i] as string;
    if (size === this.entries.get(digest)?.size) {
      throw new CanopyError(
        'TRANSFER_MANIFEST_INVALID',
        `manifest places ${want} bytes at chunk ${i}, but its digest ${digest} names a chunk of ${size} ` +
          `bytes; the manifest is damaged or forged: fetch it again from the coordinator`,
        { path: this.dir, chunk: i, digest },
      );
    }
    await this.discard(digest);
    throw this.corrupt(digest, `(chunk ${i} of the blob) is ${size} bytes on disk, not ${want}`);
  }

  /** After an MD5 mismatch: re-hash the chunks to find (and drop) the bad ones, then describe it. */
  private async md5Mismatch(manifest: Manifest, actual: string, buf: Buffer): Promise<CanopyError> {
    const bad: number[] = [];
    for (let i = 0; i < manifest.chunks.length; i++) {
      const data = await this.readChunk(manifest, i, buf.subarray(0, chunkRange(manifest, i).length));
      if (this.hash(data) !== manifest.chunks[i]) bad.push(i);
    }
    for (const i of bad) await this.discard(manifest.chunks[i] as string);
    const why =
      bad.length > 0
        ? `chunks ${listIndexes(bad)} were damaged on disk in ${this.dir}; ${FETCH_AGAIN.replace('it was', 'they were')}`
        : `every chunk matches its BLAKE3 digest, so the manifest's md5 is wrong: rebuild the manifest from the source file`;
    return new CanopyError(
      'TRANSFER_DIGEST_MISMATCH',
      `assembled file has MD5 ${actual}, but the manifest gives ${manifest.md5}: ${why}`,
      { path: this.dir, expected: manifest.md5, actual, chunks: bad },
    );
  }

  /** Writes a verified chunk durably, after making room for it. */
  private async store(digest: string, data: Uint8Array): Promise<void> {
    const evictions = await this.makeRoom(digest, data.length);
    try {
      await Promise.all(evictions);
      await writeChunk(this.dir, digest, data, this.durable);
    } finally {
      this.reserved -= data.length;
    }
    const now = this.now();
    this.used += data.length;
    this.entries.set(digest, { size: data.length, lastUse: now });
    this.log.record(`+ ${digest} ${data.length} ${now}`);
    this.remember(digest, data);
    for (const wake of [...(this.waiters.get(digest) ?? [])]) wake(true);
    await this.log.flush();
    if (this.log.bloated(this.entries.size)) await this.log.rewrite(() => this.entries);
  }

  /**
   * Reserves `size` bytes, evicting unpinned chunks in use order if needed.
   * When chunks still being written stand in the way, waits for one of them
   * to land (it becomes evictable) and tries again. Throws TRANSFER_QUOTA,
   * evicting nothing, when even that would not make room.
   */
  private async makeRoom(digest: string, size: number): Promise<Promise<void>[]> {
    for (;;) {
      const plan = this.planRoom(size);
      if (plan === 'full') throw this.quotaError(digest, size);
      if (plan === 'wait') {
        await Promise.race(this.busy.values());
        continue;
      }
      this.reserved += size;
      return plan.map((d) => this.discard(d));
    }
  }

  /** The unpinned chunks to evict, least recently used first, for `size` more bytes. */
  private planRoom(size: number): string[] | 'wait' | 'full' {
    const over = this.used + this.reserved + size - this.quotaBytes;
    const victims: string[] = [];
    let freed = 0;
    for (const [d, e] of this.entries) {
      if (freed >= over) return victims;
      if (this.pinCount.has(d)) continue;
      victims.push(d);
      freed += e.size;
    }
    if (freed >= over) return victims;
    return freed + this.reserved >= over ? 'wait' : 'full';
  }

  private async shrinkToQuota(): Promise<number> {
    const plan = this.planRoom(0);
    const victims = Array.isArray(plan) ? plan : [];
    await Promise.all(victims.map((d) => this.discard(d)));
    return victims.length;
  }

  /** Removes a chunk: at once from memory and the index, then its file. */
  private discard(digest: string): Promise<void> {
    const entry = this.entries.get(digest);
    if (!entry) return this.busy.get(digest) ?? Promise.resolve();
    this.entries.delete(digest);
    this.forget(digest);
    this.used -= entry.size;
    this.log.record(`- ${digest}`);
    const work = digest.startsWith(PACK_KEY)
      ? this.closePack(digest.slice(PACK_KEY.length)).then(() =>
          removePack(this.packDir, digest.slice(PACK_KEY.length)),
        )
      : unlinkIfPresent(chunkPath(this.dir, digest));
    this.setBusy(digest, work);
    return work;
  }

  private setBusy(digest: string, work: Promise<void>): void {
    const settled = work.then(
      () => {},
      () => {},
    );
    this.busy.set(digest, settled);
    void settled.then(() => {
      if (this.busy.get(digest) === settled) this.busy.delete(digest);
    });
  }

  private touch(digest: string): void {
    const entry = this.entries.get(digest);
    if (!entry) return;
    entry.lastUse = this.now();
    this.entries.delete(digest);
    this.entries.set(digest, entry);
    this.log.record(`u ${digest} ${entry.lastUse}`);
  }

  /** touch(), writing the buffered index records once there are many. */
  private async markUsed(digest: string): Promise<void> {
    this.touch(digest);
    if (this.log.pending >= ChunkStore.FLUSH_EVERY) await this.log.flush();
  }

  private remember(digest: string, data: Uint8Array): void {
    if (this.cacheBytes <= 0 || data.length > this.cacheBytes) return;
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.length);
    this.recent.set(digest, buf);
    this.recentBytes += buf.length;
    for (const [d, b] of this.recent) {
      if (this.recentBytes <= this.cacheBytes) break;
      this.recent.delete(d);
      this.recentBytes -= b.length;
    }
  }

  private forget(digest: string): void {
    const b = this.recent.get(digest);
    if (!b) return;
    this.recent.delete(digest);
    this.recentBytes -= b.length;
  }

  private hash(data: Uint8Array): string {
    return this.b3.init().update(data).digest('hex');
  }

  private async readWhole(digest: string): Promise<Buffer> {
    const fh = await this.openChunk(digest);
    try {
      return await fh.readFile();
    } finally {
      await fh.close();
    }
  }

  /** Opens a chunk file; a file that vanished behind the store's back is forgotten. */
  private async openChunk(digest: string): Promise<FileHandle> {
    try {
      return await open(chunkPath(this.dir, digest), constants.O_RDONLY);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      await this.discard(digest);
      throw this.chunkMissing(digest, err);
    }
  }

  private checkOpen(): void {
    if (this.closing) throw new Error(`chunk store ${this.dir} is closed`);
  }

  private chunkMissing(digest: string, cause?: unknown): CanopyError {
    return new CanopyError(
      'TRANSFER_CHUNK_MISSING',
      `chunk ${digest} is not in the chunk store ${this.dir}; fetch it first (missing() lists what a manifest lacks)`,
      { path: this.dir, digest, cause },
    );
  }

  private chunksMissing(indexes: number[], manifest: Manifest): CanopyError {
    const first = manifest.chunks[indexes[0] as number];
    return new CanopyError(
      'TRANSFER_CHUNK_MISSING',
      `cannot assemble: the chunk store ${this.dir} lacks ${indexes.length} of the blob's ` +
        `${manifest.chunks.length} chunks (${listIndexes(indexes)}; chunk ${indexes[0]} is ${first}); ` +
        `fetch them first`,
      { path: this.dir, chunks: indexes },
    );
  }

  private corrupt(digest: string, what: string): CanopyError {
    const path = chunkPath(this.dir, digest);
    return new CanopyError(
      'TRANSFER_DIGEST_MISMATCH',
      `chunk file ${path} ${what}, but its name is its digest (expected ${digest}): the disk damaged it; ` +
        FETCH_AGAIN,
      { path, expected: digest },
    );
  }

  private quotaError(digest: string, size: number): CanopyError {
    let pinned = 0;
    for (const [d, e] of this.entries) if (this.pinCount.has(d)) pinned += e.size;
    const atLeast = pinned + this.reserved + size;
    const owners = [...this.pins.keys()].slice(0, 5).join(', ') || 'none';
    return new CanopyError(
      'TRANSFER_QUOTA',
      `chunk store ${this.dir} is full: quota ${human(this.quotaBytes)}, ${human(this.used)} used ` +
        `(${human(pinned)} pinned by running distributions: ${owners}; ${human(this.reserved)} being written), ` +
        `and ${digest.startsWith('blob ') ? digest : `chunk ${digest}`} needs ${human(size)} more. Raise the store's quota to at least ${human(atLeast)}, ` +
        `or run fewer distributions at once`,
      {
        path: this.dir,
        quotaBytes: this.quotaBytes,
        usedBytes: this.used,
        neededBytes: size,
        pinnedBytes: pinned,
      },
    );
  }
}

function checkDigest(digest: string): string {
  if (isChunkDigest(digest)) return digest;
  throw new CanopyError(
    'TRANSFER_DIGEST_MISMATCH',
    `${JSON.stringify(digest)} is not a BLAKE3-256 chunk digest (64 lowercase hex characters); ` +
      `the manifest or peer message that named it is damaged: fetch it again`,
    { digest },
  );
}

function checkQuota(dir: string, quotaBytes: number): void {
  if (Number.isSafeInteger(quotaBytes) && quotaBytes > 0) return;
  throw new CanopyError(
    'TRANSFER_QUOTA',
    `chunk store ${dir}: quota ${JSON.stringify(quotaBytes)} is not a positive whole number of bytes; ` +
      `set the store's quota in bytes (e.g. 10737418240 for 10 GiB)`,
    { path: dir },
  );
}

function listIndexes(indexes: number[]): string {
  const shown = indexes.slice(0, 10).join(', ');
  return indexes.length > 10 ? `${shown} and ${indexes.length - 10} more` : shown;
}

function human(bytes: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let n = bytes;
  let u = 0;
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return u === 0 ? `${bytes} bytes` : `${n.toFixed(1)} ${units[u]} (${bytes} bytes)`;
}
