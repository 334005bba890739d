/**
 * `--activate together` on the agent: the staged copy of a distributed file,
 * and the steps the coordinator sends once every host has staged it.
 *
 * A distribution task with `activate: together` fetches and verifies as
 * usual, then `stageFile` publishes the fsynced, verified temp file (mode
 * and owner applied) as `.NAME.canopy-staged-<first 16 hex of the blob id>`
 * beside the destination: a deterministic name, so the later steps find it,
 * and one no user file has by accident. Then, per host, exactly one of:
 *
 * - `verify`: the destination is still allowed (resolveDest) and the staged
 *   copy still has the manifest's size and MD5; nothing is changed.
 * - `activate`: the same checks, then commitInstall (mode, owner, backup of
 *   the old file, rename, fsync of the directory).
 * - `discard`: the staged copy is removed; the destination is not touched.
 *
 * Every step is idempotent, so a re-sent or resumed step is safe: an activate
 * that finds no staged copy but the destination already holding the file
 * reports it `unchanged` (it was switched by an earlier attempt); a discard
 * that finds nothing reports `discarded`. This module never writes the
 * destination except through commitInstall, and never follows a symlink.
 */
import { lstat, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { CanopyError, isCanopyError } from '../errors/index.js';
import type { ActivationTask, FileOutcome, TaskResult } from '../protocol/index.js';
import {
  commitInstall,
  type FileState,
  fileState,
  type Md5Cache,
  resolveDest,
  setMeta,
  syncDir,
} from '../transfer/index.js';
import { lookupAccount, lookupGroupId } from './accounts.js';
import type { ExecPolicy } from './executor.js';
import { output as taskOutput } from './task-output.js';

type StepOutput = Omit<TaskResult, 'taskId' | 'runId'>;

const STAGED_MARK = '.canopy-staged-';

/** Where the staged copy of `blob` for `dest` lives (beside it, hidden, named by the blob). */
export function stagedPathFor(dest: string, blob: string): string {
  return join(dirname(dest), `.${basename(dest)}${STAGED_MARK}${blob.slice(0, 16)}`);
}

export interface Meta {
  mode?: number;
  uid?: number;
  gid?: number;
  allowSetid?: boolean;
}

/** The numeric owner and group for account names; throws naming the one this host lacks. */
export async function resolveOwner(owner?: string, group?: string): Promise<Meta> {
  const uid = owner ? (await lookupAccount(owner))?.uid : undefined;
  const gid = group ? await lookupGroupId(group) : undefined;
  if (owner && uid === undefined) throw new Error(`owner "${owner}" is not an account on this host`);
  if (group && gid === undefined) throw new Error(`group "${group}" is not a group on this host`);
  return { ...(uid !== undefined ? { uid } : {}), ...(gid !== undefined ? { gid } : {}) };
}

/**
 * Publishes `temp` (verified and fsynced) as the staged copy of `blob` for
 * `dest`: mode and owner as the install will set them (a chown this agent may
 * not do fails now, not at the switch), rename over any older staged copy of
 * the same blob, fsync the directory. On failure neither file is left.
 */
export async function stageFile(
  temp: string,
  opts: { dest: string; blob: string; meta: Meta; previous: FileState | undefined },
): Promise<string> {
  const staged = stagedPathFor(opts.dest, opts.blob);
  try {
    await setMeta(temp, opts.meta, opts.previous, opts.dest);
    await rename(temp, staged);
    await syncDir(dirname(opts.dest));
  } catch (err) {
    await unlink(temp).catch(() => {});
    await unlink(staged).catch(() => {});
    throw err;
  }
  return staged;
}

export interface ActivationContext {
  policy: ExecPolicy;
  backupDir: string;
  /** MD5s by (device, inode, size, mtime, ctime): verify then activate reads the staged copy once. */
  cache: Md5Cache;
  now?: () => number;
}

/** Runs one step (verify, activate, discard) on this host's staged copy. */
export async function runActivation(task: ActivationTask, ctx: ActivationContext): Promise<StepOutput> {
  const now = ctx.now ?? Date.now;
  const startedAt = now();
  const spec = task.spec;
  const output = (state: StepOutput['state'], error: string | undefined, files: FileOutcome[]): StepOutput =>
    taskOutput(startedAt, now(), state, error, files);
  const outcome = (state: FileOutcome['state'], oldMd5: string | null, extra: Partial<FileOutcome> = {}) => ({
    dest: spec.dest,
    state,
    oldMd5,
    newMd5: spec.md5,
    content: state === 'changed',
    ...extra,
  });
  const fail = (err: unknown, state: 'failed' | 'refused' = 'failed'): StepOutput => {
    const error = (err as Error).message;
    const code = isCanopyError(err) ? err.code : undefined;
    return output(state, error, [outcome('failed', null, { error, ...(code ? { code } : {}) })]);
  };
  const dest = await resolveDest(spec.dest, ctx.policy.roots);
  if (!dest.ok) {
    return fail(new CanopyError('PUSH_DEST_REFUSED', dest.reason, { path: spec.dest }), 'refused');
  }
  const staged = stagedPathFor(dest.path, spec.blob);
  try {
    if (spec.step === 'discard') {
      const removed = await unlink(staged).then(
        () => true,
        (err: NodeJS.ErrnoException) => {
          if (err.code === 'ENOENT') return false;
          throw err;
        },
      );
      if (removed) await syncDir(dest.dir);
      return output('ok', undefined, [outcome('discarded', null)]);
    }
    const present = await checkStaged(staged, spec, ctx.cache);
    if (!present) {
      // An earlier attempt of this step may have switched already (the agent died before its result).
      const current = spec.step === 'activate' ? await fileState(dest.path) : undefined;
      if (current?.md5 === spec.md5) {
        return output('ok', undefined, [outcome('unchanged', current.md5)]);
      }
      throw new CanopyError(
        'DIST_STAGED_MISSING',
        `the staged copy ${staged} of ${spec.dest} is gone (removed after it was verified?); ` +
          `nothing was switched on this host: run the distribution again`,
        { path: staged },
      );
    }
    if (spec.step === 'verify') {
      return output('ok', undefined, [outcome('staged', null, { content: true })]);
    }
    const meta = await resolveOwner(spec.owner, spec.group);
    const previous = await fileState(dest.path);
    await commitInstall(staged, spec.md5, {
      dest: dest.path,
      allowSetid: ctx.policy.allowSetid ?? false,
      ...(spec.mode !== undefined ? { mode: spec.mode } : {}),
      ...meta,
      backup: true,
      backupDir: ctx.backupDir,
      ...(previous ? { previous } : {}),
    });
    ctx.cache.forget(staged);
    return output('ok', undefined, [outcome('changed', previous?.md5 ?? null)]);
  } catch (err) {
    return fail(err);
  }
}

/**
 * False when there is no staged copy; throws TRANSFER_DIGEST_MISMATCH when it
 * is there but is not the manifest's file (size, then MD5). A copy that fails
 * during `activate` is removed (no step would use it); during `verify` it is
 * left for the discard that follows.
 */
async function checkStaged(staged: string, spec: ActivationTask['spec'], cache: Md5Cache): Promise<boolean> {
  const st = await lstat(staged).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (!st) return false;
  let why: string | undefined;
  if (!st.isFile()) why = 'is not a regular file';
  else if (st.size !== spec.size) why = `has ${st.size} bytes, the manifest says ${spec.size}`;
  else {
    const md5 = (await cache.state(staged))?.md5;
    if (md5 !== spec.md5) why = `has MD5 ${md5}, the manifest says ${spec.md5}`;
  }
  if (!why) return true;
  if (spec.step === 'activate') await unlink(staged).catch(() => {});
  throw new CanopyError(
    'TRANSFER_DIGEST_MISMATCH',
    `the staged copy ${staged} of ${spec.dest} ${why}: it changed after it was verified; ` +
      `refusing to switch this host (run the distribution again)`,
    { path: staged, expected: spec.md5 },
  );
}
