/**
 * The chunk store's index: an Entry per chunk or pack (size, last use) and
 * IndexLog, the append-only DIR/index.log that records them across restarts.
 * It only records; the store decides what to keep and what to evict.
 */
import type { FileHandle } from 'node:fs/promises';
import { open, readFile } from 'node:fs/promises';
import { replaceFile } from './chunk-files.js';
import { isChunkDigest } from './manifest.js';

export interface Entry {
  size: number;
  lastUse: number;
}

const INDEX_HEADER = 'canopy-chunk-index 1';
export const PACK_KEY = 'p:';

/**
 * The chunk index, an append-only text log after a header line:
 *
 *   + DIGEST SIZE LASTUSE_MS   a chunk was stored
 *   u DIGEST LASTUSE_MS        a chunk was used (moves it to the end of the LRU order)
 *   - DIGEST                   a chunk was removed
 *
 * Replaying it in order gives the chunks in use order. Records are buffered
 * and written by flush() (a put waits for it; uses are written lazily, so a
 * crash may forget recent uses, never a chunk). A torn or unreadable line
 * makes open() rewrite the log; so does a log much longer than the store
 * (compaction: temp file, fsync, rename). Writes run one at a time.
 */
export class IndexLog {
  private buffered: string[] = [];
  private tail: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(
    private readonly path: string,
    private fh: FileHandle,
    private records: number,
  ) {}

  static async read(path: string): Promise<{ entries: Map<string, Entry>; records: number; clean: boolean }> {
    const entries = new Map<string, Entry>();
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      return { entries, records: 0, clean: false };
    }
    const lines = text.split('\n');
    const torn = lines.pop() !== '';
    if (lines.shift() !== INDEX_HEADER) return { entries, records: 0, clean: false };
    const applied = lines.filter((line) => applyRecord(entries, line)).length;
    return { entries, records: lines.length, clean: !torn && applied === lines.length };
  }

  static async open(path: string, records: number): Promise<IndexLog> {
    return new IndexLog(path, await open(path, 'a', 0o600), records);
  }

  get pending(): number {
    return this.buffered.length;
  }

  record(line: string): void {
    this.buffered.push(line);
  }

  /** True when the log has many more records than the store has chunks. */
  bloated(live: number): boolean {
    return this.records > 2 * live + 1024;
  }

  flush(): Promise<void> {
    return this.serial(async () => {
      if (this.buffered.length === 0 || this.closed) return;
      const text = `${this.buffered.join('\n')}\n`;
      this.records += this.buffered.length;
      this.buffered = [];
      await this.fh.write(text);
    });
  }

  /** Replaces the log with one `+` record per entry; `snapshot` is read when the rewrite starts. */
  rewrite(snapshot: () => Map<string, Entry>): Promise<void> {
    return this.serial(async () => {
      const entries = snapshot();
      this.buffered = [];
      const lines = [INDEX_HEADER];
      for (const [d, e] of entries) lines.push(`+ ${d} ${e.size} ${e.lastUse}`);
      await replaceFile(this.path, `${lines.join('\n')}\n`);
      await this.fh.close();
      this.fh = await open(this.path, 'a', 0o600);
      this.records = entries.size;
    });
  }

  async close(): Promise<void> {
    await this.flush();
    await this.serial(async () => {
      this.closed = true;
      await this.fh.close();
    });
  }

  private serial(fn: () => Promise<void>): Promise<void> {
    const run = this.tail.then(fn);
    this.tail = run.catch(() => {});
    return run;
  }
}

/** Applies one index record to `entries`; false when the line is not a valid record. */
function applyRecord(entries: Map<string, Entry>, line: string): boolean {
  const [op, digest, a, b, ...rest] = line.split(' ');
  if (!isEntryKey(digest) || rest.length > 0) return false;
  if (op === '+' && isCount(a) && isCount(b)) {
    entries.delete(digest);
    entries.set(digest, { size: Number(a), lastUse: Number(b) });
  } else if (op === 'u' && isCount(a) && b === undefined) {
    const e = entries.get(digest);
    if (!e) return true;
    entries.delete(digest);
    entries.set(digest, { ...e, lastUse: Number(a) });
  } else if (op === '-' && a === undefined) {
    entries.delete(digest);
  } else {
    return false;
  }
  return true;
}

/** A chunk digest, or `p:` and a blob id (a pack). */
function isEntryKey(key: string | undefined): key is string {
  const k: string = key ?? '';
  if (k.startsWith(PACK_KEY)) return isChunkDigest(k.slice(PACK_KEY.length));
  return isChunkDigest(k);
}

function isCount(s: string | undefined): boolean {
  return s !== undefined && /^\d{1,15}$/.test(s);
}
