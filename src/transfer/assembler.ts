/**
 * Builds a blob's file while its chunks arrive: each verified chunk is
 * written at its offset in a temp file beside the destination (any order),
 * and the whole file's MD5 is computed in order as the contiguous prefix
 * grows (a chunk that arrived early is read back from the file when its
 * turn comes, so at most one chunk is held). When the last chunk lands,
 * finishing is a check of the MD5 and an fsync, not a second pass over the
 * file: on a fleet that finishes together that pass would be the tail of
 * the whole distribution.
 *
 * The caller owns the temp path (tempPathFor) and publishes it with
 * commitInstall; abort() removes it.
 */
import { createHash, type Hash } from 'node:crypto';
import { type FileHandle, open, unlink } from 'node:fs/promises';
import { CanopyError } from '../errors/index.js';
import { chunkRange, type Manifest } from './manifest.js';

export class FileAssembler {
  private readonly have: Uint8Array;
  private readonly md5: Hash = createHash('md5');
  private next = 0;
  private added = 0;
  private tail: Promise<void> = Promise.resolve();
  private failed: unknown;

  private constructor(
    readonly path: string,
    private readonly manifest: Manifest,
    private readonly fh: FileHandle,
  ) {
    this.have = new Uint8Array(manifest.chunks.length);
  }

  /** Creates `path` (it must not exist; mode 0600 until the install sets the real mode). */
  static async create(path: string, manifest: Manifest): Promise<FileAssembler> {
    const fh = await open(path, 'wx+', 0o600);
    try {
      await fh.truncate(manifest.size);
    } catch (err) {
      await fh.close();
      await unlink(path).catch(() => {});
      throw err;
    }
    return new FileAssembler(path, manifest, fh);
  }

  /** Chunks written so far. */
  get count(): number {
    return this.added;
  }

  get complete(): boolean {
    return this.added === this.manifest.chunks.length;
  }

  /** Writes chunk `index` (already verified against its digest); a chunk added twice is ignored. */
  add(index: number, data: Uint8Array): Promise<void> {
    const run = this.tail.then(() => this.write(index, data));
    this.tail = run.catch((err) => {
      this.failed ??= err;
    });
    return run;
  }

  /**
   * Waits for pending writes, checks that every chunk was added and that the
   * file's MD5 is the manifest's, and fsyncs it. Throws
   * TRANSFER_DIGEST_MISMATCH (the file is removed) on a wrong MD5.
   */
  async finish(): Promise<void> {
    await this.tail;
    if (this.failed) throw this.failed;
    if (!this.complete) {
      throw new CanopyError(
        'TRANSFER_CHUNK_MISSING',
        `${this.path}: ${this.manifest.chunks.length - this.added} chunk(s) were never written`,
        { path: this.path },
      );
    }
    const actual = this.md5.digest('hex');
    if (actual !== this.manifest.md5) {
      await this.abort();
      throw new CanopyError(
        'TRANSFER_DIGEST_MISMATCH',
        `the assembled ${this.path} has MD5 ${actual}, the manifest says ${this.manifest.md5}, although ` +
          `every chunk matched its BLAKE3 digest: the manifest is inconsistent or the disk corrupted the ` +
          `file; nothing was installed, run the distribution again`,
        { path: this.path, expected: this.manifest.md5, actual },
      );
    }
    await this.fh.sync();
    await this.fh.close();
  }

  /** Closes and removes the temp file. */
  async abort(): Promise<void> {
    await this.tail;
    await this.fh.close().catch(() => {});
    await unlink(this.path).catch(() => {});
  }

  private async write(index: number, data: Uint8Array): Promise<void> {
    if (this.have[index]) return;
    const { offset, length } = chunkRange(this.manifest, index);
    if (data.length !== length) {
      throw new CanopyError(
        'TRANSFER_DIGEST_MISMATCH',
        `chunk ${index} has ${data.length} bytes, the manifest says ${length}`,
        { path: this.path },
      );
    }
    let done = 0;
    while (done < length) {
      const { bytesWritten } = await this.fh.write(data, done, length - done, offset + done);
      done += bytesWritten;
    }
    this.have[index] = 1;
    this.added++;
    if (index !== this.next) return;
    this.md5.update(data);
    this.next++;
    let buf: Buffer | undefined;
    while (this.next < this.have.length && this.have[this.next]) {
      const r = chunkRange(this.manifest, this.next);
      buf ??= Buffer.allocUnsafe(this.manifest.chunkSize);
      const { bytesRead } = await this.fh.read(buf, 0, r.length, r.offset);
      this.md5.update(buf.subarray(0, bytesRead));
      this.next++;
    }
  }
}
