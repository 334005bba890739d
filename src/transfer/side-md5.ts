/**
 * A whole-file MD5 computed on another thread while the caller hashes the same
 * bytes with BLAKE3 on its own: building a manifest costs max(BLAKE3, MD5)
 * instead of their sum (about 2.5 s per GB instead of 3.4 on the machine this
 * was measured on; docs/transfer.md "Manifest").
 *
 * The bytes are read once, into a ring of shared buffers (slots): the caller
 * reads a chunk into a free slot, hashes it, and hands the slot to the worker,
 * which folds it into its MD5 (OpenSSL's, through node:crypto) and gives the
 * slot back. Slots are handed over in order and the worker takes its messages
 * in order, so the MD5 sees the file in order. Memory is the ring, whatever
 * the file's size. The worker's code is a string (`eval`), so it runs the same
 * from the compiled build and from the TypeScript sources under tsx.
 */
import { Worker } from 'node:worker_threads';

/** The worker: MD5 over the slots it is handed, in order; answers each with the slot's index. */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const ring = new Uint8Array(workerData.ring);
const hash = createHash('md5');
parentPort.on('message', (m) => {
  if (m.end) {
    parentPort.postMessage({ md5: hash.digest('hex') });
    return;
  }
  hash.update(ring.subarray(m.slot * workerData.slotSize, m.slot * workerData.slotSize + m.length));
  parentPort.postMessage({ slot: m.slot });
});
`;

export class SideMd5 {
  /** Workers started and not yet exited, in this process (a leak shows here). */
  static running = 0;
  private readonly worker: Worker;
  private readonly ring: SharedArrayBuffer;
  private readonly free: number[] = [];
  private readonly waiting: Array<{ resolve: (slot: number) => void; reject: (err: Error) => void }> = [];
  private finished: { resolve: (md5: string) => void; reject: (err: Error) => void } | undefined;
  private failure: Error | undefined;

  /** A worker with `slots` buffers of `slotSize` bytes each. */
  constructor(
    readonly slots: number,
    readonly slotSize: number,
  ) {
    this.ring = new SharedArrayBuffer(slots * slotSize);
    for (let s = 0; s < slots; s++) this.free.push(s);
    this.worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { ring: this.ring, slotSize } });
    SideMd5.running++;
    this.worker.on('message', (m: { slot?: number; md5?: string }) => {
      if (m.md5 !== undefined) this.finished?.resolve(m.md5);
      else this.release(m.slot as number);
    });
    this.worker.on('error', (err: Error) => this.fail(err));
    this.worker.on('exit', (code) => {
      SideMd5.running--;
      this.fail(new Error(`the MD5 worker exited (code ${code})`));
    });
  }

  /** The bytes of slot `slot`, for the caller to read a chunk into. */
  view(slot: number): Buffer {
    return Buffer.from(this.ring, slot * this.slotSize, this.slotSize);
  }

  /** A slot the worker is done with; waits while all are in use. Rejects if the worker failed. */
  take(): Promise<number> {
    if (this.failure) return Promise.reject(this.failure);
    const slot = this.free.shift();
    if (slot !== undefined) return Promise.resolve(slot);
    return new Promise<number>((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  /** Hands the first `length` bytes of `slot` to the MD5; slots must be handed in file order. */
  update(slot: number, length: number): void {
    this.worker.postMessage({ slot, length });
  }

  /** The MD5 (hex) of everything handed over. */
  digest(): Promise<string> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<string>((resolve, reject) => {
      this.finished = { resolve, reject };
      this.worker.postMessage({ end: true });
    });
  }

  /** Stops the worker (also mid-way: a failed or aborted build). Idempotent. */
  async close(): Promise<void> {
    this.failure ??= new Error('the MD5 worker was closed');
    await this.worker.terminate();
  }

  private release(slot: number): void {
    const next = this.waiting.shift();
    if (next) next.resolve(slot);
    else this.free.push(slot);
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const w of this.waiting.splice(0)) w.reject(this.failure);
    this.finished?.reject(this.failure);
    this.finished = undefined;
  }
}
