/**
 * A blob's chunks in one file: the pack. Chunk i lives at its offset in the
 * file (so a complete pack is the blob itself), and a side log lists the
 * chunks written and verified so far:
 *
 *   DIR/packs/BLOB.pack   the blob's bytes, sized to the blob, holes where chunks are missing
 *   DIR/packs/BLOB.have   the indexes of the chunks held, 4 bytes each (little endian), appended
 *
 * A relay writes each chunk once, with one positional write on a file it
 * keeps open, instead of creating, renaming and later reading a file per
 * chunk (measured: the per-chunk files were the largest cost of a relay
 * after hashing, bench/README.md). The whole file's MD5 is computed in order
 * as the contiguous prefix grows (a chunk that arrived early is read back
 * when its turn comes), so finishing costs no second pass.
 *
 * Invariants:
 *  - an index is appended to the side log only after its chunk's bytes were
 *    written (and, when durable, fsynced): a kill -9 may lose a chunk, never
 *    list one whose bytes are not there. Power loss on a non-durable pack may
 *    leave listed chunks damaged: whoever reuses them re-hashes (verifyHeld);
 *  - writes run one at a time (`tail`), so the MD5 prefix and the log follow
 *    the order the chunks landed in;
 *  - the ChunkStore owns packs (quota, LRU, recovery); a Pack only knows its
 *    two files.
 */
import { createHash, type Hash } from 'node:crypto';
import { constants } from 'node:fs';
import { copyFile, type FileHandle, open, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { createBLAKE3 } from 'hash-wasm';
import { CanopyError } from '../errors/index.js';
import { chunkRange, type Manifest } from './manifest.js';

/** Out-of-order chunks a pack keeps in memory for its MD5 (16 chunks of the default 256 KiB). */
const AHEAD_BYTES = 4 * 1024 * 1024;

export class Pack {
  readonly held: Uint8Array;
  private heldCount = 0;
  private heldBytes = 0;
  private md5: Hash = createHash('md5');
  /** The MD5 covers chunks [0, next). */
  private next = 0;
  /**
   * Chunks written past the MD5's prefix, kept (up to AHEAD_BYTES) until the
   * prefix reaches them, so the MD5 does not read them back from the file.
   */
  private readonly ahead = new Map<number, { data: Uint8Array; release: (() => void) | undefined }>();
  private aheadBytes = 0;
  private tail: Promise<void> = Promise.resolve();
  private failed: unknown;
  private closed = false;

  private constructor(
    readonly path: string,
    readonly blob: string,
    readonly manifest: Manifest,
    private readonly fh: FileHandle,
    private readonly log: FileHandle,
    private readonly durable: boolean,
  ) {
    this.held = new Uint8Array(manifest.chunks.length);
  }

  /** The data file of blob `blob` in `dir` (DIR/packs of a store). */
  static dataPath(dir: string, blob: string): string {
    return join(dir, `${blob}.pack`);
  }

  static logPath(dir: string, blob: string): string {
    return join(dir, `${blob}.have`);
  }

  /** Opens the pack of `blob` in `dir`, creating it (sized to the blob) if absent; reads what it holds. */
  static async open(dir: string, blob: string, manifest: Manifest, durable: boolean): Promise<Pack> {
    const path = Pack.dataPath(dir, blob);
    let fh: FileHandle;
    try {
      fh = await open(path, 'r+');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      fh = await open(path, 'w+', 0o600);
    }
    let log: FileHandle | undefined;
    try {
      if ((await fh.stat()).size !== manifest.size) await fh.truncate(manifest.size);
      const listed = await readLog(Pack.logPath(dir, blob));
      log = await open(Pack.logPath(dir, blob), 'a', 0o600);
      // Drop a torn last record, else the next append would start mid-record and misalign all that follow.
      const logSize = (await log.stat()).size;
      if (logSize % 4 !== 0) await log.truncate(logSize - (logSize % 4));
      const pack = new Pack(path, blob, manifest, fh, log, durable);
      for (const i of listed) if (i < manifest.chunks.length) pack.mark(i);
      return pack;
    } catch (err) {
      await fh.close();
      await log?.close();
      throw err;
    }
  }

  get count(): number {
    return this.heldCount;
  }

  get bytes(): number {
    return this.heldBytes;
  }

  get complete(): boolean {
    return this.heldCount === this.held.length;
  }

  has(index: number): boolean {
    return this.held[index] === 1;
  }

  /**
   * Writes chunk `index` (already verified against its digest) and lists it;
   * a held chunk is left alone. `data` must not change afterwards: the pack
   * may keep it until its in-order MD5 reaches the chunk. `release`, if
   * given, is called exactly once when the pack no longer needs `data`
   * (written and in the MD5, or dropped; also when the write fails).
   */
  write(index: number, data: Uint8Array, release?: () => void): Promise<void> {
    // A refused chunk is the caller's error, not the pack's: checked here so it does not end up in `failed`.
    try {
      this.checkLength(index, data);
    } catch (err) {
      release?.();
      return Promise.reject(err);
    }
    // `tail` never rejects (its failures are kept in `failed`): writeNow always runs, and releases.
    const run = this.tail.then(() => this.writeNow(index, data, release));
    this.tail = run.catch((err) => {
      this.failed ??= err;
    });
    return run;
  }

  /** The bytes of a held chunk, read from the file (into `into` if it is big enough). */
  async read(index: number, into?: Buffer): Promise<Buffer> {
    const { offset, length } = chunkRange(this.manifest, index);
    const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    await readAt(this.fh, buf, offset);
    return buf;
  }

  /**
   * Re-hashes every held chunk and forgets those whose bytes do not match
   * their digest (after a power loss, or a disk that damaged them); returns
   * their indexes. The side log is rewritten without them.
   */
  async verifyHeld(): Promise<number[]> {
    await this.tail;
    const b3 = await createBLAKE3();
    const bad: number[] = [];
    const buf = Buffer.allocUnsafe(this.manifest.chunkSize);
    for (let i = 0; i < this.held.length; i++) {
      if (!this.held[i]) continue;
      const data = await this.read(i, buf);
      if (b3.init().update(data).digest('hex') !== this.manifest.chunks[i]) bad.push(i);
    }
    if (bad.length > 0) await this.forget(bad);
    return bad;
  }

  /** Lists every chunk as held without writing (the file was filled by copyFrom). */
  async markAll(): Promise<void> {
    await this.tail;
    const all = new Uint8Array(this.held.length * 4);
    const view = new DataView(all.buffer);
    for (let i = 0; i < this.held.length; i++) {
      view.setUint32(i * 4, i, true);
      this.mark(i);
    }
    await this.log.write(all);
  }

  /** Fills the data file from `file` (which must hold exactly the blob; the caller checked its MD5). */
  async copyFrom(file: string): Promise<void> {
    await this.tail;
    await copyFile(file, this.path, constants.COPYFILE_FICLONE);
    await this.markAll();
  }

  /**
   * Checks that every chunk is held and that the file's MD5 is the
   * manifest's, finishing the in-order MD5 over what is left; then writes
   * the blob to `target` (a new file: a reflink where the filesystem can,
   * else a kernel copy), fsynced. Throws TRANSFER_CHUNK_MISSING or
   * TRANSFER_DIGEST_MISMATCH (nothing is written to `target`).
   */
  async copyTo(target: string): Promise<void> {
    await this.tail;
    if (this.failed) throw this.failed;
    if (!this.complete) {
      throw new CanopyError(
        'TRANSFER_CHUNK_MISSING',
        `${this.path}: ${this.held.length - this.heldCount} chunk(s) of blob ${this.blob} are still missing`,
        { path: this.path },
      );
    }
    await this.advance();
    const actual = this.md5.copy().digest('hex');
    if (actual !== this.manifest.md5) {
      throw new CanopyError(
        'TRANSFER_DIGEST_MISMATCH',
        `the blob ${this.blob} assembled in ${this.path} has MD5 ${actual}, the manifest says ` +
          `${this.manifest.md5}, although every chunk matched its BLAKE3 digest when it arrived: the disk ` +
          `damaged it or the manifest is inconsistent; nothing was installed, run the distribution again`,
        { path: this.path, expected: this.manifest.md5, actual },
      );
    }
    await copyFile(this.path, target, constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE);
    const out = await open(target, 'r+');
    try {
      await out.sync();
    } finally {
      await out.close();
    }
  }

  /** Closes both files (pending writes first). Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.tail;
    for (const kept of this.ahead.values()) kept.release?.();
    this.ahead.clear();
    this.aheadBytes = 0;
    await this.fh.close().catch(() => {});
    await this.log.close().catch(() => {});
  }

  private mark(index: number): void {
    if (this.held[index]) return;
    this.held[index] = 1;
    this.heldCount++;
    this.heldBytes += chunkRange(this.manifest, index).length;
  }

  /** Throws RangeError for an index outside the manifest, TRANSFER_DIGEST_MISMATCH for a wrong length. */
  private checkLength(index: number, data: Uint8Array): void {
    const { length } = chunkRange(this.manifest, index);
    if (data.length !== length) {
      throw new CanopyError(
        'TRANSFER_DIGEST_MISMATCH',
        `chunk ${index} of blob ${this.blob} has ${data.length} bytes, the manifest says ${length}`,
        { path: this.path },
      );
    }
  }

  private async writeNow(index: number, data: Uint8Array, release: (() => void) | undefined): Promise<void> {
    let kept = false;
    try {
      if (this.held[index]) return;
      const { offset, length } = chunkRange(this.manifest, index);
      for (let done = 0; done < length; ) {
        done += (await this.fh.write(data, done, length - done, offset + done)).bytesWritten;
      }
      if (this.durable) await this.fh.datasync();
      const rec = Buffer.allocUnsafe(4);
      rec.writeUInt32LE(index, 0);
      await this.log.write(rec);
      this.mark(index);
      if (index === this.next) {
        this.md5.update(data);
        this.next++;
        await this.advance();
      } else if (index > this.next && this.aheadBytes + data.length <= AHEAD_BYTES) {
        this.ahead.set(index, { data, release });
        this.aheadBytes += data.length;
        kept = true;
      }
    } finally {
      if (!kept) release?.();
    }
  }

  /** Extends the MD5 over held chunks that follow the prefix, reading them back from the file. */
  private async advance(): Promise<void> {
    let buf: Buffer | undefined;
    while (this.next < this.held.length && this.held[this.next]) {
      const kept = this.ahead.get(this.next);
      if (kept) {
        this.ahead.delete(this.next);
        this.aheadBytes -= kept.data.length;
        this.md5.update(kept.data);
        kept.release?.();
      } else {
        buf ??= Buffer.allocUnsafe(this.manifest.chunkSize);
        this.md5.update(await this.read(this.next, buf));
      }
      this.next++;
    }
  }

  /** Drops chunks from the held set: rewrites the side log, restarts the MD5 if the prefix had them. */
  private async forget(indexes: number[]): Promise<void> {
    for (const i of indexes) {
      if (!this.held[i]) continue;
      this.held[i] = 0;
      this.heldCount--;
      this.heldBytes -= chunkRange(this.manifest, i).length;
    }
    for (const i of indexes) {
      const kept = this.ahead.get(i);
      if (kept) {
        this.aheadBytes -= kept.data.length;
        kept.release?.();
      }
      this.ahead.delete(i);
    }
    if (Math.min(...indexes) < this.next) {
      this.md5 = createHash('md5');
      this.next = 0;
    }
    const keep: number[] = [];
    this.held.forEach((h, i) => {
      if (h) keep.push(i);
    });
    const all = Buffer.allocUnsafe(keep.length * 4);
    keep.forEach((i, k) => {
      all.writeUInt32LE(i, k * 4);
    });
    await this.log.truncate(0);
    await this.log.write(all);
  }
}

/** Removes a pack's two files (absent ones are fine). */
export async function removePack(dir: string, blob: string): Promise<void> {
  for (const p of [Pack.dataPath(dir, blob), Pack.logPath(dir, blob)]) {
    await unlink(p).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }
}

/** The indexes a side log lists; a torn last record (a kill -9 mid-append) is ignored. */
async function readLog(path: string): Promise<number[]> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const out: number[] = [];
  for (let at = 0; at + 4 <= bytes.length; at += 4) out.push(bytes.readUInt32LE(at));
  return out;
}

async function readAt(fh: FileHandle, buf: Buffer, position: number): Promise<void> {
  for (let filled = 0; filled < buf.length; ) {
    const { bytesRead } = await fh.read(buf, filled, buf.length - filled, position + filled);
    if (bytesRead === 0) throw new Error(`pack file ended after ${position + filled} bytes`);
    filled += bytesRead;
  }
}
