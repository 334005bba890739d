/**
 * Chunk buffers used again. A relay receives every chunk into a buffer of
 * the chunk's size; allocating a fresh one each time costs a page fault per
 * 4 KiB the first time it is written (most of a relay's copying time on a
 * VM), and the dead ones pile up outside V8's heap until a full
 * mark-compact, whose pause holds up every host below this one in the tree
 * (a relay's lag behind its parent grows by its longest stall: see
 * docs/transfer.md "Buffers").
 *
 * Ownership is explicit: `acquire` hands a buffer out; whoever holds it last
 * calls `release` exactly once (the peer client when it drops a chunk, the
 * pack once it wrote the chunk and took it into the MD5). A buffer the pool
 * did not hand out, or one released already, is ignored; at most
 * `maxFreeBytes` of free buffers are kept, the most recently released.
 */

export interface ChunkPoolStats {
  /** Buffers allocated because none of the size was free. */
  allocated: number;
  /** Buffers handed out again. */
  reused: number;
  /** Bytes held free now. */
  freeBytes: number;
}

export class ChunkPool {
  /** Free buffers, oldest first (one list for every size, so an odd size cannot crowd out the rest). */
  private readonly free: Buffer[] = [];
  private readonly out = new WeakSet<Buffer>();
  private freeBytes = 0;
  private allocated = 0;
  private reused = 0;

  constructor(private readonly maxFreeBytes = 8 * 1024 * 1024) {}

  /** A buffer of exactly `size` bytes (its content is whatever it held before). */
  acquire(size: number): Buffer {
    const at = this.free.findLastIndex((b) => b.length === size);
    const buf = at >= 0 ? this.free.splice(at, 1)[0] : undefined;
    if (buf) {
      this.freeBytes -= size;
      this.reused++;
    } else {
      this.allocated++;
    }
    // allocUnsafeSlow: its own memory, never a slice of Node's shared pool.
    const b = buf ?? Buffer.allocUnsafeSlow(size);
    this.out.add(b);
    return b;
  }

  /** Gives `buf` back; it must not be read or written afterwards. */
  release(buf: Buffer): void {
    if (!this.out.delete(buf)) return;
    if (buf.length > this.maxFreeBytes) return;
    this.free.push(buf);
    this.freeBytes += buf.length;
    // Over the cap: the oldest free buffers go (a blob's odd-sized last chunk, an earlier chunk size).
    while (this.freeBytes > this.maxFreeBytes) this.freeBytes -= (this.free.shift() as Buffer).length;
  }

  /** Drops the free buffers (an agent with no distribution running keeps none). */
  clear(): void {
    this.free.length = 0;
    this.freeBytes = 0;
  }

  get stats(): ChunkPoolStats {
    return { allocated: this.allocated, reused: this.reused, freeBytes: this.freeBytes };
  }
}
