/**
 * Installing a file at a destination so that nobody ever sees it half
 * written, and reading what a destination holds without re-reading it.
 *
 * - `resolveDest` checks a destination against an agent's roots: absolute,
 *   inside a root after `..` is resolved, no symlink anywhere between the
 *   root and the file (a symlinked parent directory or a symlink at the
 *   destination itself is refused), and the parent must exist.
 * - `installFile` writes a temporary file in the destination's directory
 *   (`.NAME.canopy-tmp-RANDOM`), fsyncs it, sets mode and owner, lets a
 *   validator look at it, keeps the previous file as a backup, renames it
 *   into place and fsyncs the directory. A failure at any step removes the
 *   temporary file and leaves the old file as it was. A process killed
 *   half-way leaves at most the temporary file, which `removeStaleTemps`
 *   deletes (the agent calls it for every install a crash interrupted).
 * - `Md5Cache` answers "what is the MD5 of this file" from memory while the
 *   file's device, inode, size, mtime and ctime are unchanged, so a warm
 *   check reads no file content.
 * - Backups live outside the destination's directory (a config directory
 *   with `include *.conf` must not pick them up): `BACKUP_DIR/<id>/` per
 *   destination, newest last; `rollback` re-installs the newest.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants, createReadStream } from 'node:fs';
import {
  type FileHandle,
  lstat,
  mkdir,
  open,
  readdir,
  readFile,
  realpath,
  rename,
  stat,
  unlink,
  writeFile,
} from 'node:fs/promises';
import path from 'node:path';
import { CanopyError } from '../errors/index.js';
import { syncDir, writeSynced } from './durable.js';

const TEMP_MARK = '.canopy-tmp-';
const KEEP_BACKUPS = 3;
/** A file modified this recently may change again within the clock's granularity: not cached. */
const RACY_MS = 2_000;

export type DestCheck = { ok: true; path: string; dir: string } | { ok: false; reason: string };

/** Where `dest` may be written under `roots` (absolute directories), or why not. */
export async function resolveDest(dest: string, roots: readonly string[]): Promise<DestCheck> {
  const allowed = roots.length > 0 ? roots.join(', ') : 'none: roots is empty';
  const refuse = (why: string): DestCheck => ({
    ok: false,
    reason: `destination ${JSON.stringify(dest)} ${why} (allowed roots: ${allowed})`,
  });
  if (!path.isAbsolute(dest)) return refuse('is not an absolute path');
  const full = path.resolve(dest);
  const candidates = roots.filter(
    (r) => path.isAbsolute(r) && isInside(path.resolve(r), full) && full !== path.resolve(r),
  );
  if (candidates.length === 0) {
    const via = full === dest ? '' : ` (it resolves to ${JSON.stringify(full)})`;
    return refuse(`is outside the allowed roots${via}; add a root in the agent config or change dest`);
  }
  // Any root that allows it is enough: adding a broader root must not take access away.
  let refusal: DestCheck | undefined;
  for (const root of candidates) {
    const check = await checkUnder(full, root, refuse);
    if (check.ok) return check;
    refusal ??= check;
  }
  return refusal as DestCheck;
}

async function checkUnder(
  full: string,
  root: string,
  refuse: (why: string) => DestCheck,
): Promise<DestCheck> {
  const dir = path.dirname(full);
  let realDir: string;
  let realRoot: string;
  try {
    [realDir, realRoot] = await Promise.all([realpath(dir), realpath(root)]);
  } catch (err) {
    return refuse(
      `cannot be written: its directory ${JSON.stringify(dir)} ${fsReason(err)}; create it first`,
    );
  }
  const expected = path.join(realRoot, path.relative(path.resolve(root), dir));
  if (realDir !== expected) {
    return refuse(
      `is refused: its directory ${JSON.stringify(dir)} goes through a symlink (to ${JSON.stringify(realDir)}); canopy writes only through real directories`,
    );
  }
  try {
    const st = await lstat(full);
    if (st.isSymbolicLink()) return refuse('is a symlink; canopy does not write through symlinks');
    if (!st.isFile()) return refuse('exists and is not a regular file');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return refuse(fsReason(err));
  }
  return { ok: true, path: full, dir };
}

/**
 * resolveDest again, just before a file is written beside `dest`: a directory on the way that was
 * swapped for a symlink since the first check (during a long download, say) is refused now.
 */
export async function recheckDest(dest: string, roots: readonly string[]): Promise<void> {
  const check = await resolveDest(dest, roots);
  if (!check.ok) {
    throw new CanopyError(
      'PUSH_DEST_REFUSED',
      `${check.reason}; it changed after it was first checked, so nothing was written`,
      {
        path: dest,
      },
    );
  }
}

/** True when `target` is `root` or below it, by path segments (/srv/app2 is not inside /srv/app). */
export function isInside(root: string, target: string): boolean {
  const rel = path.relative(root, target);
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel));
}

function fsReason(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'does not exist';
  if (code === 'EACCES' || code === 'EPERM') return 'is not accessible to the agent';
  if (code === 'ENOTDIR') return 'has a path component that is not a directory';
  return (err as Error).message;
}

/** MD5 (hex) of a file's content, streamed. */
export async function md5File(file: string): Promise<string> {
  const hash = createHash('md5');
  for await (const chunk of createReadStream(file, { highWaterMark: 1024 * 1024 })) hash.update(chunk);
  return hash.digest('hex');
}

export function md5Of(data: Buffer | string): string {
  return createHash('md5').update(data).digest('hex');
}

export interface FileState {
  md5: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  ino: number;
  mtimeMs: number;
}

interface CacheEntry {
  key: string;
  md5: string;
}

/** MD5s of files by (device, inode, size, mtime, ctime): a hit reads no file content. */
export class Md5Cache {
  readonly #entries = new Map<string, CacheEntry>();
  #hits = 0;
  #misses = 0;

  constructor(private readonly max = 100_000) {}

  get stats(): { hits: number; misses: number; size: number } {
    return { hits: this.#hits, misses: this.#misses, size: this.#entries.size };
  }

  /** The file's state, or undefined when there is no file. */
  async state(file: string, now = Date.now()): Promise<FileState | undefined> {
    let st: Awaited<ReturnType<typeof stat>> & { mtimeNs: bigint; ctimeNs: bigint };
    try {
      st = (await stat(file, { bigint: true })) as typeof st;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
    const hit = this.#entries.get(file);
    let md5: string;
    if (hit?.key === key) {
      this.#hits++;
      md5 = hit.md5;
    } else {
      this.#misses++;
      md5 = await md5File(file);
      const changedMs = Number(st.ctimeNs > st.mtimeNs ? st.ctimeNs : st.mtimeNs) / 1e6;
      if (now - changedMs > RACY_MS) this.remember(file, { key, md5 });
      else this.#entries.delete(file);
    }
    return {
      md5,
      size: Number(st.size),
      mode: Number(st.mode) & 0o7777,
      uid: Number(st.uid),
      gid: Number(st.gid),
      ino: Number(st.ino),
      mtimeMs: Number(st.mtimeNs / 1_000_000n),
    };
  }

  forget(file: string): void {
    this.#entries.delete(file);
  }

  private remember(file: string, entry: CacheEntry): void {
    this.#entries.delete(file);
    this.#entries.set(file, entry);
    if (this.#entries.size > this.max) {
      const oldest = this.#entries.keys().next().value;
      if (oldest !== undefined) this.#entries.delete(oldest);
    }
  }
}

export interface InstallOptions {
  /** Checked with resolveDest: the caller must have done so. */
  dest: string;
  content: Buffer;
  /** The content's MD5 as the sender computed it; a mismatch installs nothing. */
  md5: string;
  /** Default: the existing file's mode, else 0644. */
  mode?: number;
  /** Numeric ids; default: the existing file's, else the agent's. */
  uid?: number;
  gid?: number;
  /** A setuid/setgid mode (asked, or kept from the existing file) is refused unless true. */
  allowSetid?: boolean;
  /** Runs on the fsynced temporary file before the rename; a failure installs nothing. */
  validate?: (tempPath: string) => Promise<{ ok: boolean; output: string }>;
  /** Keep the previous file (if any) in backupDir. */
  backup?: boolean;
  backupDir: string;
  /** The destination's current state, if the caller has it. */
  previous?: FileState;
}

export interface InstallResult {
  oldMd5: string | null;
  newMd5: string;
  backup?: string;
}

/** Installs `content` at `dest` atomically (see the module comment). */
export async function installFile(opts: InstallOptions): Promise<InstallResult> {
  const actual = md5Of(opts.content);
  if (actual !== opts.md5) {
    throw new CanopyError(
      'TRANSFER_DIGEST_MISMATCH',
      `content for ${opts.dest} has MD5 ${actual}, expected ${opts.md5}; nothing was installed (re-run the push)`,
      { path: opts.dest },
    );
  }
  const temp = tempPathFor(opts.dest);
  try {
    await writeSynced(temp, opts.content);
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw err;
  }
  return commitInstall(temp, actual, opts);
}

export type CommitOptions = Omit<InstallOptions, 'content' | 'md5'>;

/**
 * Publishes a temporary file that already holds the verified, fsynced
 * content (from `tempPathFor(dest)`: the distribution path assembles chunks
 * there): mode and owner, validate, backup, rename, fsync the directory.
 * Any failure removes the temporary file and leaves the destination as it was.
 */
export async function commitInstall(temp: string, md5: string, opts: CommitOptions): Promise<InstallResult> {
  let backup: string | undefined;
  let previous: FileState | undefined;
  try {
    // The directory as it is now: if it is swapped (for a symlink elsewhere, say) while this
    // install validates and backs up, the rename below is refused.
    const dir = await dirIdentity(opts.dest);
    previous = opts.previous ?? (await fileState(opts.dest));
    await setMeta(temp, opts, previous, opts.dest);
    if (opts.validate) {
      const v = await opts.validate(temp);
      if (!v.ok) {
        throw new CanopyError(
          'PUSH_VALIDATE_FAILED',
          `validate refused the new ${opts.dest}; the old file is unchanged:\n${v.output.trimEnd()}`,
          { path: opts.dest },
        );
      }
    }
    if (opts.backup && previous) backup = await keepBackup(opts.dest, opts.backupDir, previous);
    if ((await dirIdentity(opts.dest)) !== dir) throw changedUnder(path.dirname(opts.dest), 'was replaced');
    await rename(temp, opts.dest);
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw err;
  }
  await syncDir(path.dirname(opts.dest));
  return { oldMd5: previous?.md5 ?? null, newMd5: md5, ...(backup ? { backup } : {}) };
}

/** A file's state (MD5 read now, nothing cached), or undefined when there is none. */
export async function fileState(file: string): Promise<FileState | undefined> {
  return new Md5Cache(0).state(file);
}

/** A fresh temporary path beside `dest` (removeStaleTemps finds it after a crash). */
export function tempPathFor(dest: string): string {
  return path.join(
    path.dirname(dest),
    `.${path.basename(dest)}${TEMP_MARK}${randomBytes(6).toString('hex')}`,
  );
}

export type MetaOptions = Pick<InstallOptions, 'mode' | 'uid' | 'gid' | 'allowSetid'>;

/**
 * Why `mode` may not be installed at `dest`, or undefined when it may: a setuid/setgid mode is
 * refused unless the agent allows them, since a set-id file owned by root runs as root and a push
 * could otherwise step around the run_as allowlist.
 */
export function setidRefusal(
  dest: string,
  mode: number,
  allowSetid: boolean | undefined,
): string | undefined {
  if ((mode & 0o6000) === 0 || allowSetid) return undefined;
  return (
    `${dest}: mode 0${(mode & 0o7777).toString(8)} is setuid/setgid, which this agent does not install ` +
    '(a set-id file runs as its owner, whatever run_as allows); drop the 04000/02000 bits from the mode ' +
    '(or from the file there now), or start the agent with allow_setid: true'
  );
}

/** Mode and owner on the temporary file, so the rename publishes them with the content. */
export async function setMeta(
  file: string,
  opts: MetaOptions,
  previous: FileState | undefined,
  dest = file,
): Promise<void> {
  const mode = opts.mode ?? previous?.mode ?? 0o644;
  const setid = setidRefusal(dest, mode, opts.allowSetid);
  if (setid) throw new CanopyError('AGENT_SETID_REFUSED', setid, { path: dest });
  const fh = await open(file, 'r');
  try {
    const uid = opts.uid ?? previous?.uid;
    const gid = opts.gid ?? previous?.gid;
    if (uid !== undefined || gid !== undefined) await fh.chown(uid ?? -1, gid ?? -1);
    await fh.chmod(mode);
  } finally {
    await fh.close();
  }
}

/**
 * Sets mode and owner on an installed file whose content is already right: in place, unless the
 * file has other hard links (one may be outside the roots): then a copy with the new mode and
 * owner replaces it by rename, and the other names keep theirs.
 */
export async function fixMeta(dest: string, opts: MetaOptions, previous: FileState): Promise<void> {
  const fh = await openNoFollow(dest);
  let temp: string | undefined;
  try {
    if ((await fh.stat()).nlink > 1) temp = await copyToTemp(fh, dest);
  } finally {
    await fh.close();
  }
  if (!temp) {
    await setMeta(dest, opts, previous);
    return;
  }
  try {
    await setMeta(temp, opts, previous, dest);
    await rename(temp, dest);
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw err;
  }
  await syncDir(path.dirname(dest));
}

/**
 * A copy of the file at `dest` (never through a symlink), fsynced, in a fresh temporary path
 * beside it (tempPathFor); nothing is left behind when the copy fails.
 */
export async function copyBeside(dest: string): Promise<string> {
  const fh = await openNoFollow(dest);
  try {
    return await copyToTemp(fh, dest);
  } finally {
    await fh.close();
  }
}

/** copyOpen into a fresh tempPathFor(dest), removed again if the copy fails. */
async function copyToTemp(src: FileHandle, dest: string): Promise<string> {
  const temp = tempPathFor(dest);
  try {
    await copyOpen(src, temp);
    return temp;
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw err;
  }
}

/** Opens the file at `dest` for reading, refusing a symlink there (swapped in since it was checked). */
function openNoFollow(dest: string): Promise<FileHandle> {
  return open(dest, constants.O_RDONLY | constants.O_NOFOLLOW).catch((err: NodeJS.ErrnoException) => {
    throw changedUnder(dest, err.code === 'ELOOP' ? 'is now a symlink' : err.message);
  });
}

/** True when the file's mode/owner differ from what opts asks for. */
export function metaDiffers(state: FileState, opts: Pick<InstallOptions, 'mode' | 'uid' | 'gid'>): boolean {
  return (
    (opts.mode !== undefined && state.mode !== opts.mode) ||
    (opts.uid !== undefined && state.uid !== opts.uid) ||
    (opts.gid !== undefined && state.gid !== opts.gid)
  );
}

/** Deletes temporary files an interrupted install of `dest` left behind; returns their paths. */
export async function removeStaleTemps(dest: string): Promise<string[]> {
  const dir = path.dirname(dest);
  const prefix = `.${path.basename(dest)}${TEMP_MARK}`;
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const p = path.join(dir, name);
    await unlink(p).catch(() => {});
    removed.push(p);
  }
  if (removed.length > 0) await syncDir(dir).catch(() => {});
  return removed;
}

// ---------------------------------------------------------------- backups

function backupHome(dest: string, backupDir: string): string {
  return path.join(backupDir, createHash('sha256').update(dest).digest('hex').slice(0, 32));
}

async function keepBackup(dest: string, backupDir: string, previous: FileState): Promise<string> {
  const md5 = previous.md5;
  const home = backupHome(dest, backupDir);
  await mkdir(home, { recursive: true, mode: 0o700 });
  await writeFile(path.join(home, 'dest'), dest, { mode: 0o600 });
  // A sequence number, not a time: two backups in one millisecond, or a clock stepping back,
  // must not reorder them.
  const last = (await listBackups(home)).at(-1);
  const seq = last ? Number(last.slice(0, 14)) + 1 : 1;
  const name = `${seq.toString().padStart(14, '0')}-${md5}`;
  const file = path.join(home, name);
  // The file checked earlier, not whatever is at the path now: a symlink swapped in since (to a
  // file outside the roots) is not followed, and another file is not taken for the old one.
  const src = await openNoFollow(dest);
  try {
    const st = await src.stat({ bigint: true });
    const same =
      st.isFile() &&
      Number(st.ino) === previous.ino &&
      Number(st.size) === previous.size &&
      Number(st.mtimeNs / 1_000_000n) === previous.mtimeMs;
    if (!same) throw changedUnder(dest, 'is now another file');
    // The backup keeps the old file's permission bits (not set-id ones): a rollback restores them.
    await copyOpen(src, `${file}.tmp`, previous.mode & 0o777);
  } catch (err) {
    await unlink(`${file}.tmp`).catch(() => {});
    throw err;
  } finally {
    await src.close();
  }
  await rename(`${file}.tmp`, file);
  const all = await listBackups(home);
  for (const old of all.slice(0, Math.max(0, all.length - KEEP_BACKUPS))) {
    await unlink(path.join(home, old)).catch(() => {});
  }
  return file;
}

async function listBackups(home: string): Promise<string[]> {
  try {
    return (await readdir(home)).filter((n) => /^\d{14}-[0-9a-f]{32}$/.test(n)).sort();
  } catch {
    return [];
  }
}

export interface RollbackResult {
  oldMd5: string | null;
  newMd5: string;
  restoredFrom: string;
}

/**
 * Restores the newest backup of `dest` (atomically, keeping the file's mode
 * and owner) and drops that backup, so a second rollback goes one further back.
 */
export async function rollback(dest: string, backupDir: string): Promise<RollbackResult> {
  const home = backupHome(dest, backupDir);
  const newest = (await listBackups(home)).at(-1);
  if (!newest) {
    throw new CanopyError(
      'PUSH_NO_BACKUP',
      `no backup of ${dest} on this host; only files pushed with "backup: true" can be rolled back`,
      { path: dest },
    );
  }
  const file = path.join(home, newest);
  const content = await readFile(file);
  // The old file's permission bits, kept on the backup.
  const mode = (await stat(file)).mode & 0o777;
  const r = await installFile({ dest, content, md5: md5Of(content), backupDir, mode });
  await unlink(file);
  return { oldMd5: r.oldMd5, newMd5: r.newMd5, restoredFrom: file };
}

function changedUnder(dest: string, what: string): CanopyError {
  return new CanopyError(
    'PUSH_DEST_REFUSED',
    `${dest} ${what}: it changed while canopy was replacing it, so nothing was installed; run again`,
    { path: dest },
  );
}

/** Copies an open file (from its start) to a new file `to`, fsynced, with `mode`. */
async function copyOpen(src: FileHandle, to: string, mode = 0o600): Promise<void> {
  const out = await open(to, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  try {
    const buf = Buffer.allocUnsafe(1024 * 1024);
    for (let at = 0; ; ) {
      const { bytesRead } = await src.read(buf, 0, buf.length, at);
      if (bytesRead === 0) break;
      await out.write(buf, 0, bytesRead);
      at += bytesRead;
    }
    await out.chmod(mode);
    await out.sync();
  } finally {
    await out.close();
  }
}

/** Where a destination's directory really is (symlinks resolved) and which directory it is. */
async function dirIdentity(dest: string): Promise<string> {
  const dir = path.dirname(dest);
  const [real, st] = await Promise.all([realpath(dir), stat(dir, { bigint: true })]);
  return `${real}\0${st.dev}:${st.ino}`;
}
