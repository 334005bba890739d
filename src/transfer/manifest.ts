/**
 * Blob manifests: what a blob is, chunk by chunk, so that a host can fetch it
 * from any peer and check every byte before it keeps it.
 *
 * A manifest gives the size, the chunk size, a BLAKE3-256 digest per chunk and
 * the whole file's MD5 (what operators compare with `md5sum`). Its id is the
 * BLAKE3-256 of its canonical JSON (`encodeManifest`: fixed key order, no
 * spaces), so an id names one content exactly and survives re-formatting.
 *
 * parseManifest is the one way in from bytes (coordinator, peer, file): it
 * checks every field and the claimed id, and everything past it trusts the
 * Manifest type. buildManifest reads a file once in bounded memory (a few
 * chunk buffers: the next read overlaps the hashing of the current chunk),
 * whatever the file's size; from SIDE_MD5_MIN_BYTES on, the whole-file MD5 runs
 * on a worker thread beside the BLAKE3 (side-md5.ts). This module never writes
 * a file.
 */
import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { open } from 'node:fs/promises';
import { blake3, createBLAKE3, type IHasher } from 'hash-wasm';
import { CanopyError } from '../errors/index.js';
import { SideMd5 } from './side-md5.js';

export const MANIFEST_VERSION = 1;
export const MIN_CHUNK_SIZE = 64 * 1024;
export const MAX_CHUNK_SIZE = 64 * 1024 * 1024;
export const DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024;
/** Files this big or bigger get their MD5 on a worker thread; below, a worker's start costs more than it saves. */
export const SIDE_MD5_MIN_BYTES = 16 * 1024 * 1024;
/** Chunk buffers the worker's ring holds: one being read, one being hashed here, one in the MD5. */
const SIDE_MD5_SLOTS = 3;

/** A validated blob manifest. Build one with buildManifest or parseManifest only. */
export interface Manifest {
  readonly version: typeof MANIFEST_VERSION;
  /** Bytes in the blob. */
  readonly size: number;
  /** Bytes per chunk; the last chunk may be shorter. A power of two in [64 KiB, 64 MiB]. */
  readonly chunkSize: number;
  /** BLAKE3-256 lowercase hex of each chunk, in order; empty for an empty blob. */
  readonly chunks: readonly string[];
  /** MD5 lowercase hex of the whole blob. */
  readonly md5: string;
}

export interface BuildManifestOptions {
  chunkSize?: number;
  signal?: AbortSignal;
}

export interface ParseManifestOptions {
  /** The id the sender claims; parseManifest fails unless the content hashes to it. */
  id?: string;
  /** Where the manifest came from (file, peer, URL), for error messages. */
  source?: string;
}

const KEYS = ['version', 'size', 'chunkSize', 'chunks', 'md5'] as const;
const BLAKE3_HEX = /^[0-9a-f]{64}$/;
const MD5_HEX = /^[0-9a-f]{32}$/;
const REFETCH = 'fetch the manifest again from the coordinator, or rebuild it from the file';

/** True for a BLAKE3-256 digest as canopy writes it: 64 lowercase hex characters. */
export function isChunkDigest(value: unknown): value is string {
  return typeof value === 'string' && BLAKE3_HEX.test(value);
}

/** BLAKE3-256 lowercase hex of one chunk. */
export function chunkDigest(data: Uint8Array): Promise<string> {
  return blake3(data);
}

/** Number of chunks a blob of `size` bytes has at `chunkSize` (0 for an empty blob). */
export function chunkCount(size: number, chunkSize: number): number {
  return Math.ceil(size / chunkSize);
}

/** Where chunk `index` lies in the blob. Throws RangeError for an index outside the manifest. */
export function chunkRange(manifest: Manifest, index: number): { offset: number; length: number } {
  if (!Number.isInteger(index) || index < 0 || index >= manifest.chunks.length) {
    throw new RangeError(`chunk index ${index} is outside the manifest (${manifest.chunks.length} chunks)`);
  }
  const offset = index * manifest.chunkSize;
  return { offset, length: Math.min(manifest.chunkSize, manifest.size - offset) };
}

/** The canonical JSON of a manifest: the bytes its id is computed over, and its wire form. */
export function encodeManifest(m: Manifest): string {
  const { version, size, chunkSize, chunks, md5 } = m;
  return JSON.stringify({ version, size, chunkSize, chunks, md5 });
}

/** The manifest's id: BLAKE3-256 lowercase hex of encodeManifest(m). */
export function manifestId(m: Manifest): Promise<string> {
  return blake3(encodeManifest(m));
}

/**
 * Reads `path` once and describes it. Memory stays at two chunk buffers.
 * Throws INPUT_NOT_FOUND when the file does not exist, TRANSFER_MANIFEST_INVALID
 * for a bad chunk size or a file that changes size while it is read, and the
 * signal's reason when aborted.
 */
export async function buildManifest(path: string, options: BuildManifestOptions = {}): Promise<Manifest> {
  const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
  checkChunkSizeOption(chunkSize, path);
  const b3 = await createBLAKE3();
  const fh = await openForRead(path);
  try {
    const size = (await fh.stat()).size;
    const sink =
      size >= SIDE_MD5_MIN_BYTES && size > chunkSize ? sideMd5(chunkSize) : inlineMd5(size, chunkSize);
    const { chunks, md5 } = await hashChunks(fh, path, size, chunkSize, b3, sink, options.signal);
    await checkUnchanged(fh, path, size);
    return { version: MANIFEST_VERSION, size, chunkSize, chunks, md5 };
  } finally {
    await fh.close();
  }
}

function checkChunkSizeOption(chunkSize: number, path: string): void {
  if (isValidChunkSize(chunkSize)) return;
  throw new CanopyError(
    'TRANSFER_MANIFEST_INVALID',
    `cannot build a manifest of ${path} with chunk size ${chunkSize}: it must be a power of two ` +
      `from 64 KiB to 64 MiB (e.g. 256K, 1M, 4M), or leave it unset for the default`,
    { path, chunkSize },
  );
}

function isValidChunkSize(n: unknown): n is number {
  return (
    typeof n === 'number' &&
    Number.isInteger(n) &&
    n >= MIN_CHUNK_SIZE &&
    n <= MAX_CHUNK_SIZE &&
    (n & (n - 1)) === 0
  );
}

async function openForRead(path: string): Promise<FileHandle> {
  try {
    return await open(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    throw new CanopyError(
      'INPUT_NOT_FOUND',
      `${path} does not exist; check the path of the file to distribute`,
      {
        path,
        cause: err,
      },
    );
  }
}

/** Where chunks are read and how the whole file's MD5 is taken over them. */
interface Md5Sink {
  /** The buffer chunk `i` is read into (waits while none is free). */
  bufferFor(i: number): Promise<Buffer>;
  /** Chunk `i`, read into bufferFor(i)'s buffer: folded into the MD5; chunks come in file order. */
  add(i: number, data: Buffer): void;
  digest(): Promise<string>;
  close(): Promise<void>;
}

/** Both hashes here: two chunk buffers in turn, node's MD5. */
function inlineMd5(size: number, chunkSize: number): Md5Sink {
  const bufLen = Math.min(size, chunkSize);
  const bufs = [Buffer.allocUnsafe(bufLen), Buffer.allocUnsafe(size > chunkSize ? bufLen : 0)];
  const md5 = createHash('md5');
  return {
    bufferFor: async (i) => bufs[i % 2] as Buffer,
    add: (_i, data) => md5.update(data),
    digest: async () => md5.digest('hex'),
    close: async () => {},
  };
}

/** The MD5 on a worker thread (side-md5.ts): chunks are read into the slots of its ring. */
function sideMd5(chunkSize: number): Md5Sink {
  const side = new SideMd5(SIDE_MD5_SLOTS, chunkSize);
  const slots = new Map<number, number>();
  return {
    bufferFor: async (i) => {
      const slot = await side.take();
      slots.set(i, slot);
      return side.view(slot);
    },
    add: (i, data) => {
      side.update(slots.get(i) as number, data.length);
      slots.delete(i);
    },
    digest: () => side.digest(),
    close: () => side.close(),
  };
}

/**
 * Hashes every chunk of the open file: BLAKE3 per chunk (one hasher, init per
 * chunk) and the MD5 over all (`sink`). While chunk i is hashed, chunk i+1 is
 * being read into another buffer.
 */
async function hashChunks(
  fh: FileHandle,
  path: string,
  size: number,
  chunkSize: number,
  b3: IHasher,
  sink: Md5Sink,
  signal: AbortSignal | undefined,
): Promise<{ chunks: string[]; md5: string }> {
  const count = chunkCount(size, chunkSize);
  const read = async (i: number) =>
    readFull(fh, path, await sink.bufferFor(i), i * chunkSize, size, chunkSize);
  const chunks: string[] = [];
  let next = count > 0 ? read(0) : undefined;
  try {
    for (let i = 0; i < count; i++) {
      const data = await (next as Promise<Buffer>);
      next = i + 1 < count ? read(i + 1) : undefined;
      signal?.throwIfAborted();
      chunks.push(b3.init().update(data).digest('hex'));
      sink.add(i, data);
    }
    return { chunks, md5: await sink.digest() };
  } finally {
    await sink.close();
    // A read still in flight must finish before the caller closes the file.
    await next?.catch(() => {});
  }
}

/** Reads the chunk at `offset` completely into `buf`, or fails if the file got shorter. */
async function readFull(
  fh: FileHandle,
  path: string,
  buf: Buffer,
  offset: number,
  size: number,
  chunkSize: number,
): Promise<Buffer> {
  const length = Math.min(chunkSize, size - offset);
  let filled = 0;
  while (filled < length) {
    const { bytesRead } = await fh.read(buf, filled, length - filled, offset + filled);
    if (bytesRead === 0) throw changedWhileReading(path, size, offset + filled);
    filled += bytesRead;
  }
  return buf.subarray(0, length);
}

async function checkUnchanged(fh: FileHandle, path: string, size: number): Promise<void> {
  const now = (await fh.stat()).size;
  if (now !== size) throw changedWhileReading(path, size, now);
}

function changedWhileReading(path: string, was: number, now: number): CanopyError {
  return new CanopyError(
    'TRANSFER_MANIFEST_INVALID',
    `${path} changed size while its manifest was built (${was} bytes, then ${now}); ` +
      `wait until whatever writes it has finished, then build the manifest again`,
    { path },
  );
}

/**
 * Validates a manifest from bytes (JSON text) and, when `options.id` is given,
 * that its content hashes to that id. Throws TRANSFER_MANIFEST_INVALID naming
 * the source, the field at fault and the fix.
 */
export async function parseManifest(json: string, options: ParseManifestOptions = {}): Promise<Manifest> {
  const source = options.source ?? 'manifest';
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch (err) {
    throw invalid(source, `is not JSON (${(err as Error).message})`, undefined, err);
  }
  return validateManifest(value, options);
}

/** As parseManifest, for a value already decoded from JSON (e.g. inside a protocol message). */
export async function validateManifest(
  value: unknown,
  options: ParseManifestOptions = {},
): Promise<Manifest> {
  const source = options.source ?? 'manifest';
  const m = checkShape(value, source);
  checkChunks(m, source);
  if (options.id !== undefined) await checkId(m, options.id, source);
  return m;
}

function checkShape(value: unknown, source: string): Manifest {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw invalid(source, `must be a JSON object with the keys ${KEYS.join(', ')}`);
  }
  const o = value as Record<string, unknown>;
  const extra = Object.keys(o).find((k) => !(KEYS as readonly string[]).includes(k));
  if (extra !== undefined) throw invalid(source, `has an unknown key "${extra}"`, extra);
  const absent = KEYS.find((k) => !(k in o));
  if (absent !== undefined) throw invalid(source, `lacks the key "${absent}"`, absent);
  if (o.version !== MANIFEST_VERSION) {
    throw invalid(
      source,
      `has version ${JSON.stringify(o.version)}, but this canopy reads version ${MANIFEST_VERSION} only; ` +
        `run the same canopy version on the coordinator and the agents`,
      'version',
    );
  }
  if (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0) {
    throw invalid(source, `has size ${JSON.stringify(o.size)}, not a whole number of bytes >= 0`, 'size');
  }
  if (!isValidChunkSize(o.chunkSize)) {
    throw invalid(
      source,
      `has chunkSize ${JSON.stringify(o.chunkSize)}, not a power of two from 65536 (64 KiB) to 67108864 (64 MiB)`,
      'chunkSize',
    );
  }
  if (typeof o.md5 !== 'string' || !MD5_HEX.test(o.md5)) {
    throw invalid(source, `has md5 ${JSON.stringify(o.md5)}, not 32 lowercase hex characters`, 'md5');
  }
  if (!Array.isArray(o.chunks))
    throw invalid(source, 'has chunks that are not an array of digests', 'chunks');
  return {
    version: MANIFEST_VERSION,
    size: o.size,
    chunkSize: o.chunkSize,
    chunks: [...o.chunks],
    md5: o.md5,
  };
}

function checkChunks(m: Manifest, source: string): void {
  const bad = m.chunks.findIndex((d) => !isChunkDigest(d));
  if (bad >= 0) {
    throw invalid(
      source,
      `has chunks[${bad}] = ${JSON.stringify(m.chunks[bad])}, not a BLAKE3-256 digest (64 lowercase hex characters)`,
      `chunks[${bad}]`,
    );
  }
  const want = chunkCount(m.size, m.chunkSize);
  if (m.chunks.length !== want) {
    throw invalid(
      source,
      `lists ${m.chunks.length} chunks, but size ${m.size} at chunkSize ${m.chunkSize} makes ${want}`,
      'chunks',
    );
  }
}

async function checkId(m: Manifest, claimed: string, source: string): Promise<void> {
  const actual = await manifestId(m);
  if (actual === claimed) return;
  throw invalid(
    source,
    `does not match its id: it was announced as ${claimed}, but its content hashes to ${actual} ` +
      `(altered in transit, or the manifest of another blob)`,
    'id',
  );
}

function invalid(source: string, problem: string, field?: string, cause?: unknown): CanopyError {
  return new CanopyError('TRANSFER_MANIFEST_INVALID', `${source} ${problem}; ${REFETCH}`, {
    path: source,
    field,
    cause,
  });
}
