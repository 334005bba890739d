/**
 * The seeds this agent serves (`canopy dist --source`): which blob is read
 * from which file, until when, in memory and on disk. Each seed is one
 * record, DATA/seeds/<blob>.json (a temp file written and fsynced, renamed,
 * the directory fsynced), written before the source task answers and removed
 * when the seed's time is up (the coordinator gives every seed a time to
 * live: the distribution's deadline plus the relays' serving time; it sends
 * no "done"). So a restarted agent serves again exactly the seeds the
 * coordinator still counts on, and stale ones do not pile up: an expired
 * record is removed by its timer, or at the next start.
 *
 * At start, restore() reads every record; an expired or unreadable one is
 * removed. For the others the file is checked again: still allowed (inside
 * the roots), same device, inode, size, mtime and ctime as when it was
 * hashed. An unchanged file is served again without being hashed again (each
 * chunk is checked against its digest the first time it is served:
 * source-task.ts). A changed or missing one is not served: the seed stays
 * registered, broken, so that every request for the blob is answered with
 * why (naming this agent and the path) until its time is up, and the agent
 * logs `dist.source.changed` as an error.
 *
 * It never decides who may fetch a blob (the `serve` callback feeds the peer
 * server's authorization) and never writes a seeded file.
 * Invariant: a seed is in `seeds` only once its record is on disk, and its
 * record is removed only after it left `seeds` (a removal that failed is
 * retried by the next restore()).
 */
import { lstat, mkdir, readdir, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { type Static, Type } from '@sinclair/typebox';
import { type TypeCheck, TypeCompiler } from '@sinclair/typebox/compiler';
import { isCanopyError } from '../errors/index.js';
import { MAX_TIMER_MS } from '../protocol/index.js';
import { type Manifest, replaceSynced, resolveDest, validateManifest } from '../transfer/index.js';
import type { ExecPolicy } from './executor.js';
import {
  bitset,
  closeSeed,
  identityChange,
  identityOf,
  readSeedChunk,
  type Seed,
  seedRefusal,
} from './source-task.js';

/** What the store writes to its log; a pino Logger fits. */
export interface SeedLog {
  info(fields: object, event: string): void;
  warn(fields: object, event: string): void;
  error(fields: object, event: string): void;
}

export interface SeedStoreOptions {
  /** Where the records live (DATA/seeds). */
  dir: string;
  /** This agent's name, for messages. */
  host: string;
  /** The roots a restored seed's file must still be inside. */
  policy: ExecPolicy;
  log: SeedLog;
  now?: () => number;
  /** Lets the peer server serve `blob` until `until` (a seed added or restored). */
  serve: (blob: string, manifest: Manifest, until: number, rateLimit?: number) => void;
  /** The seed of `blob` is over (its time passed): the peer server stops serving it. */
  ended: (blob: string) => void;
}

const DigestHex = Type.String({ pattern: '^[0-9a-f]{64}$' });
const Decimal = Type.String({ pattern: '^-?[0-9]{1,40}$' });
const SeedRecordSchema = Type.Object(
  {
    v: Type.Literal(1),
    blob: DigestHex,
    path: Type.String({ minLength: 2, maxLength: 4096, pattern: '^/' }),
    until: Type.Integer({ minimum: 0 }),
    rateLimit: Type.Optional(Type.Integer({ minimum: 1 })),
    identity: Type.Object(
      { dev: Decimal, ino: Decimal, size: Type.Integer({ minimum: 0 }), mtimeNs: Decimal, ctimeNs: Decimal },
      { additionalProperties: false },
    ),
    /** Checked by validateManifest, against `blob`. */
    manifest: Type.Unknown(),
  },
  { additionalProperties: false },
);
type SeedRecord = Static<typeof SeedRecordSchema>;
let recordCheck: TypeCheck<typeof SeedRecordSchema> | undefined;

/** A seed ends this long after its `until` (requests at the edge see it as expired first). */
const END_SLACK_MS = 1_000;

export class SeedStore {
  private readonly seeds = new Map<string, Seed>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly now: () => number;
  private made: Promise<unknown> | undefined;

  constructor(private readonly opts: SeedStoreOptions) {
    this.now = opts.now ?? Date.now;
  }

  /** True if `blob` is a seed of this agent (served from its file, or refused saying why). */
  has(blob: string): boolean {
    return this.seeds.has(blob);
  }

  /**
   * Chunk `index` of seed `blob` from its file; undefined if it is not a seed
   * (or its time is up) or the read failed for a passing reason. Throws
   * (seedRefusal) naming the agent, the path and what changed once the file changed.
   */
  async chunk(blob: string, index: number): Promise<Uint8Array | undefined> {
    const seed = this.seeds.get(blob);
    if (!seed || seed.until <= this.now()) return undefined;
    const wasBroken = seed.broken !== undefined;
    try {
      return await readSeedChunk(seed, index);
    } catch (err) {
      if (!wasBroken && seed.broken !== undefined) {
        this.opts.log.error({ blob, path: seed.path, reason: (err as Error).message }, 'dist.source.changed');
        await closeSeed(seed);
      }
      throw err;
    }
  }

  /**
   * Records a seed (its record durable before it is served) and serves it.
   * A seed of the same blob is replaced, and the later of the two ends wins.
   * Throws if the record cannot be written; nothing is served then.
   */
  async add(seed: Seed): Promise<void> {
    const old = this.seeds.get(seed.blob);
    seed.until = Math.max(seed.until, old?.until ?? 0);
    await this.write(seed);
    if (old && old !== seed) await closeSeed(old);
    this.register(seed);
    this.opts.log.info(
      { blob: seed.blob, path: seed.path, size: seed.manifest.size, until: seed.until },
      'dist.source.serving',
    );
  }

  /**
   * At start: every record still in time is checked against its file and
   * served again (or held broken, saying why); expired and unreadable
   * records are removed. Resolves once every seed is registered.
   */
  async restore(): Promise<void> {
    await this.ready();
    for (const name of await readdir(this.opts.dir)) {
      const file = join(this.opts.dir, name);
      if (name.startsWith('.')) {
        await unlink(file).catch(() => {}); // a write cut short by a crash
        continue;
      }
      if (!name.endsWith('.json')) continue;
      const record = await this.load(file, name);
      if (!record) continue;
      if (record.until <= this.now()) {
        await unlink(file).catch(() => {});
        this.opts.log.info({ blob: record.blob, path: record.path }, 'dist.source.expired');
        continue;
      }
      await this.revive(record);
    }
  }

  /** Stops the timers and closes the files; the records stay for the next start. */
  async close(): Promise<void> {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    for (const seed of this.seeds.values()) await closeSeed(seed);
  }

  /** Turns a record back into a seed: served if its file is the one hashed, else held broken. */
  private async revive(r: SeedRecord & { manifest: Manifest }): Promise<void> {
    const seed: Seed = {
      host: this.opts.host,
      path: r.path,
      blob: r.blob,
      manifest: r.manifest,
      until: r.until,
      ...(r.rateLimit ? { rateLimit: r.rateLimit } : {}),
      identity: r.identity,
      file: undefined,
      verified: bitset(r.manifest.chunks.length),
    };
    const changed = await this.recheck(seed);
    if (changed) seed.broken = changed;
    this.register(seed);
    const fields = { blob: seed.blob, path: seed.path, until: seed.until };
    if (changed) this.opts.log.error({ ...fields, reason: seedRefusal(seed).message }, 'dist.source.changed');
    else this.opts.log.info(fields, 'dist.source.restored');
  }

  /** Why a restored seed's file may not be served any more, or undefined if it may. */
  private async recheck(seed: Seed): Promise<string | undefined> {
    const allowed = await resolveDest(seed.path, this.opts.policy.roots);
    if (!allowed.ok) return `the file is no longer allowed: ${allowed.reason}`;
    try {
      const what = identityChange(seed.identity, identityOf(await lstat(seed.path, { bigint: true })));
      return what
        ? `the file changed since it was hashed (found at the agent's restart): ${what}`
        : undefined;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      return code === 'ENOENT'
        ? "the file no longer exists (found at the agent's restart)"
        : `the file cannot be checked: ${(err as Error).message}`;
    }
  }

  private register(seed: Seed): void {
    this.seeds.set(seed.blob, seed);
    this.opts.serve(seed.blob, seed.manifest, seed.until, seed.rateLimit);
    this.arm(seed);
  }

  /** Ends seed `blob` now (its distribution ended): no longer served, its record removed. False if there is none. */
  async stop(blob: string): Promise<boolean> {
    const seed = this.seeds.get(blob);
    if (!seed) return false;
    clearTimeout(this.timers.get(blob));
    await this.end(seed);
    return true;
  }

  /** Ends the seed once its time is up (re-armed while a timer cannot reach that far). */
  private arm(seed: Seed): void {
    // A later end than a timer holds is re-armed when it fires.
    clearTimeout(this.timers.get(seed.blob));
    const wait = Math.min(MAX_TIMER_MS, Math.max(0, seed.until - this.now()) + END_SLACK_MS);
    const timer = setTimeout(() => {
      if (this.seeds.get(seed.blob) !== seed) return;
      if (seed.until > this.now()) this.arm(seed);
      else void this.end(seed);
    }, wait);
    timer.unref();
    this.timers.set(seed.blob, timer);
  }

  private async end(seed: Seed): Promise<void> {
    this.seeds.delete(seed.blob);
    this.timers.delete(seed.blob);
    this.opts.ended(seed.blob);
    await closeSeed(seed);
    try {
      await unlink(this.recordPath(seed.blob));
      this.opts.log.info({ blob: seed.blob, path: seed.path }, 'dist.source.ended');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      this.opts.log.warn({ err, blob: seed.blob }, 'dist.source.record_not_removed');
    }
  }

  private async write(seed: Seed): Promise<void> {
    await this.ready();
    const record: SeedRecord = {
      v: 1,
      blob: seed.blob,
      path: seed.path,
      until: seed.until,
      ...(seed.rateLimit ? { rateLimit: seed.rateLimit } : {}),
      identity: seed.identity,
      manifest: seed.manifest,
    };
    // A temp name per write (replaceSynced): two distributions of one blob may record it at once.
    await replaceSynced(this.recordPath(seed.blob), JSON.stringify(record));
  }

  /** A record from disk, validated (schema, name, manifest against its id); removed if invalid. */
  private async load(file: string, name: string): Promise<(SeedRecord & { manifest: Manifest }) | undefined> {
    try {
      const value: unknown = JSON.parse(await readFile(file, 'utf8'));
      recordCheck ??= TypeCompiler.Compile(SeedRecordSchema);
      if (!recordCheck.Check(value)) {
        const first = recordCheck.Errors(value).First();
        throw new Error(`${first?.path || '/'}: ${first?.message ?? 'invalid'}`);
      }
      if (name !== `${value.blob}.json`) throw new Error(`it records blob ${value.blob}, not its name`);
      const manifest = await validateManifest(value.manifest, { id: value.blob, source: file });
      return { ...value, manifest };
    } catch (err) {
      const reason = isCanopyError(err) ? err.message : (err as Error).message;
      this.opts.log.warn({ file, reason }, 'dist.source.record_invalid');
      await unlink(file).catch(() => {});
      return undefined;
    }
  }

  private recordPath(blob: string): string {
    return join(this.opts.dir, `${blob}.json`);
  }

  private ready(): Promise<unknown> {
    this.made ??= mkdir(this.opts.dir, { recursive: true, mode: 0o700 }).catch((err: unknown) => {
      this.made = undefined; // asked again next time
      throw err;
    });
    return this.made;
  }
}
