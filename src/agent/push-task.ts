/**
 * A push task on the agent: for each file, check the destination against
 * this agent's roots, compare its MD5 (cached, so a warm check reads
 * nothing), fetch the content of only the files that differ, install each
 * atomically (validate, backup, rename), then run `notify` once if anything
 * changed and nothing failed (Ansible's handler semantics: a failed host is
 * not notified). `check` mode compares and reports without writing;
 * `rollback` mode restores each destination's newest backup.
 *
 * A large src file does not come over the control channel: the coordinator
 * distributed it peer to peer, before this task, as a staged copy beside
 * its destination (`stagedPathFor`). Such a copy is checked against the
 * file's MD5 and installed like fetched content (it is renamed into place);
 * a copy this task does not install is removed, so none is left behind.
 */
import { lstat, readdir, readFile, unlink } from 'node:fs/promises';
import path from 'node:path';
import { isCanopyError } from '../errors/index.js';
import {
  type FileOutcome,
  NO_OUTPUT,
  type PushFile,
  type PushTask,
  shellQuote,
  type TaskResult,
} from '../protocol/index.js';
import {
  type CommitOptions,
  commitInstall,
  type FileState,
  fixMeta,
  installFile,
  type Md5Cache,
  type MetaOptions,
  md5File,
  metaDiffers,
  recheckDest,
  resolveDest,
  rollback,
  setidRefusal,
} from '../transfer/index.js';
import { lookupAccount, lookupGroupId } from './accounts.js';
import { type ExecPolicy, type ExecResult, runCommand } from './executor.js';

/** Old content is sent back for diffs only up to this size per file ... */
const MAX_DIFF_BYTES = 256 * 1024;
/** ... and this much per task, so a result stays far below the channel's 16 MiB message limit. */
const DIFF_BUDGET_BYTES = 4 * 1024 * 1024;
/** A staged copy is `.NAME` + this + the push's run id, beside NAME (pushes.ts names it the same). */
const STAGED_MARK = '.canopy-tmp-push-';

export interface PushContext {
  policy: ExecPolicy;
  backupDir: string;
  cache: Md5Cache;
  /** Asks the coordinator for the content of files (by index in the task). */
  fetch: (indexes: number[]) => Promise<Map<number, Buffer>>;
  signal?: AbortSignal;
  /** The account validate and notify run as (the push's run_as); default the agent's own. */
  runAs?: string;
}

type PushOutput = Omit<TaskResult, 'taskId' | 'runId'>;

interface Planned {
  index: number;
  file: PushFile;
  dest: string;
  uid?: number;
  gid?: number;
  state: FileState | undefined;
  /** The old content for a diff, read before the install replaces it. */
  diffOld?: Pick<FileOutcome, 'old' | 'oldOmitted'>;
}

export async function runPush(task: PushTask, agentCtx: PushContext): Promise<PushOutput> {
  const startedAt = Date.now();
  const spec = task.spec;
  const ctx: PushContext = spec.runAs ? { ...agentCtx, runAs: spec.runAs } : agentCtx;
  const outcomes: FileOutcome[] = new Array(spec.files.length);
  const planned: Planned[] = [];
  for (const [index, file] of spec.files.entries()) {
    const p = await prepare(index, file, ctx);
    if ('index' in p) planned.push(p);
    else outcomes[index] = p;
  }
  if (spec.mode === 'rollback') {
    for (const p of planned) outcomes[p.index] = await restore(p, ctx);
  } else {
    await compare(planned, outcomes, spec.mode === 'check', spec.diff, ctx);
    const need = planned.filter((p) => outcomes[p.index] === undefined);
    if (need.length > 0) await install(need, outcomes, task.runId, ctx);
    if (spec.mode === 'apply') await dropStaged(spec.files, task.runId, ctx);
  }
  return finish(spec.notify, spec.timeoutMs, outcomes, startedAt, spec.mode !== 'check', ctx);
}

/** Where a file distributed peer to peer for push `runId` waits to be installed (see the module comment). */
export function stagedPathFor(dest: string, runId: string): string {
  const full = path.resolve(dest);
  return path.join(path.dirname(full), `.${path.basename(full)}${STAGED_MARK}${runId}`);
}

/** Destination and owner checks; a FileOutcome when the file cannot be pushed. */
async function prepare(index: number, file: PushFile, ctx: PushContext): Promise<Planned | FileOutcome> {
  const fail = (error: string, code: string): FileOutcome => ({
    dest: file.dest,
    state: 'failed',
    oldMd5: null,
    newMd5: file.md5,
    content: false,
    error,
    code,
  });
  const dest = await resolveDest(file.dest, ctx.policy.roots);
  if (!dest.ok) return fail(dest.reason, 'PUSH_DEST_REFUSED');
  const setid =
    file.mode === undefined ? undefined : setidRefusal(file.dest, file.mode, ctx.policy.allowSetid);
  if (setid) return fail(setid, 'AGENT_SETID_REFUSED');
  const planned: Planned = { index, file, dest: dest.path, state: undefined };
  try {
    if (file.owner !== undefined) {
      const account = await lookupAccount(file.owner);
      if (!account) return fail(`owner "${file.owner}" is not an account on this host`, 'PUSH_FILE');
      planned.uid = account.uid;
    }
    if (file.group !== undefined) {
      const gid = await lookupGroupId(file.group);
      if (gid === undefined) return fail(`group "${file.group}" is not a group on this host`, 'PUSH_FILE');
      planned.gid = gid;
    }
    planned.state = await ctx.cache.state(dest.path);
  } catch (err) {
    return fail(`${file.dest}: ${(err as Error).message}`, 'PUSH_FILE');
  }
  return planned;
}

function meta(p: Planned, ctx: PushContext): MetaOptions {
  return {
    allowSetid: ctx.policy.allowSetid ?? false,
    ...(p.file.mode !== undefined ? { mode: p.file.mode } : {}),
    ...(p.uid !== undefined ? { uid: p.uid } : {}),
    ...(p.gid !== undefined ? { gid: p.gid } : {}),
  };
}

/** Fills the outcome of every file that needs no content; the rest stay undefined. */
async function compare(
  planned: Planned[],
  outcomes: FileOutcome[],
  check: boolean,
  diff: boolean,
  ctx: PushContext,
): Promise<void> {
  const budget = { left: DIFF_BUDGET_BYTES };
  for (const p of planned) {
    const base = { dest: p.file.dest, oldMd5: p.state?.md5 ?? null, newMd5: p.file.md5 };
    const sameContent = p.state?.md5 === p.file.md5;
    if (sameContent && p.state && !metaDiffers(p.state, meta(p, ctx))) {
      outcomes[p.index] = { ...base, state: 'unchanged', content: false };
    } else if (sameContent && p.state) {
      try {
        if (!check) await fixMeta(p.dest, meta(p, ctx), p.state);
      } catch (err) {
        outcomes[p.index] = failed(p, (err as Error).message, isCanopyError(err) ? err.code : undefined);
        continue;
      }
      ctx.cache.forget(p.dest);
      outcomes[p.index] = { ...base, state: check ? 'would-change' : 'changed', content: false };
    } else if (check) {
      outcomes[p.index] = {
        ...base,
        state: 'would-change',
        content: true,
        ...(diff ? await oldText(p, budget) : {}),
      };
    }
  }
  if (diff && !check) {
    for (const p of planned) {
      if (outcomes[p.index] === undefined) p.diffOld = await oldText(p, budget);
    }
  }
}

async function oldText(
  p: Planned,
  budget: { left: number },
): Promise<Pick<FileOutcome, 'old' | 'oldOmitted'>> {
  if (!p.state) return { old: '' };
  if (p.state.size > MAX_DIFF_BYTES) return { oldOmitted: `larger than ${MAX_DIFF_BYTES / 1024} KiB` };
  if (p.state.size > budget.left) return { oldOmitted: 'too many diffs in one push for one host' };
  budget.left -= p.state.size;
  const data = await readFile(p.dest).catch(() => undefined);
  if (!data) return { oldOmitted: 'unreadable' };
  if (data.includes(0)) return { oldOmitted: 'binary' };
  const text = data.toString('utf8');
  if (Buffer.byteLength(text) !== data.length) return { oldOmitted: 'not UTF-8' };
  return { old: text };
}

/** Content is fetched in batches of at most this many bytes (base64 adds a third; messages cap at 16 MiB). */
const FETCH_BATCH_BYTES = 8 * 1024 * 1024;

async function install(
  need: Planned[],
  outcomes: FileOutcome[],
  runId: string,
  ctx: PushContext,
): Promise<void> {
  const fetch: Planned[] = [];
  for (const p of need) {
    const staged = await stagedCopy(p.file.dest, runId, ctx);
    if (staged) outcomes[p.index] = await installStaged(p, staged, ctx);
    else fetch.push(p);
  }
  let batch: Planned[] = [];
  let bytes = 0;
  for (const p of fetch) {
    if (batch.length > 0 && bytes + p.file.size > FETCH_BATCH_BYTES) {
      await installBatch(batch, outcomes, ctx);
      batch = [];
      bytes = 0;
    }
    batch.push(p);
    bytes += p.file.size;
  }
  if (batch.length > 0) await installBatch(batch, outcomes, ctx);
}

async function installBatch(need: Planned[], outcomes: FileOutcome[], ctx: PushContext): Promise<void> {
  let contents: Map<number, Buffer>;
  try {
    contents = await ctx.fetch(need.map((p) => p.index));
  } catch (err) {
    // One file the coordinator cannot serve (a large one that was not staged here) fails the whole
    // answer: ask again file by file, so the others still go in.
    if (need.length > 1) {
      for (const p of need) await installBatch([p], outcomes, ctx);
      return;
    }
    for (const p of need)
      outcomes[p.index] = failed(p, `could not fetch the content: ${(err as Error).message}`);
    return;
  }
  for (const p of need) {
    const content = contents.get(p.index);
    if (!content) {
      outcomes[p.index] = failed(p, 'the coordinator sent no content for this file');
      continue;
    }
    try {
      const r = await installFile({ ...commitOptions(p, ctx), content, md5: p.file.md5 });
      outcomes[p.index] = installed(p, r, ctx);
    } catch (err) {
      outcomes[p.index] = failed(p, (err as Error).message, isCanopyError(err) ? err.code : undefined);
    }
  }
}

/** How a file is published: mode and owner, validate, backup (the same for fetched and staged content). */
function commitOptions(p: Planned, ctx: PushContext): CommitOptions {
  return {
    dest: p.dest,
    ...meta(p, ctx),
    ...(p.file.validate ? { validate: (tmp) => validate(p.file.validate ?? '', tmp, ctx) } : {}),
    backup: p.file.backup ?? false,
    backupDir: ctx.backupDir,
    ...(p.state ? { previous: p.state } : {}),
  };
}

function installed(p: Planned, r: { oldMd5: string | null; newMd5: string }, ctx: PushContext): FileOutcome {
  ctx.cache.forget(p.dest);
  return {
    dest: p.file.dest,
    state: 'changed',
    oldMd5: r.oldMd5,
    newMd5: r.newMd5,
    content: true,
    ...p.diffOld,
  };
}

/** This push's staged copy of `dest`, if the coordinator distributed one here (checked like a dest). */
async function stagedCopy(dest: string, runId: string, ctx: PushContext): Promise<string | undefined> {
  const raw = stagedPathFor(dest, runId);
  // The common case, one failing lstat: nothing was staged for this file.
  if (!(await lstat(raw).catch(() => undefined))) return undefined;
  const check = await resolveDest(raw, ctx.policy.roots);
  if (!check.ok) return undefined;
  return (await lstat(check.path).catch(() => undefined))?.isFile() ? check.path : undefined;
}

/**
 * Installs a staged copy: its MD5 must be the file's (the distribution checked it; this checks
 * nothing replaced it since), then it is published as fetched content would be, by rename. Other
 * pushes' staged copies of the same destination (a host that dropped out before its push task ran)
 * are removed once the file is in place.
 */
async function installStaged(p: Planned, staged: string, ctx: PushContext): Promise<FileOutcome> {
  try {
    const md5 = await md5File(staged);
    if (md5 !== p.file.md5) {
      await unlink(staged).catch(() => {});
      return failed(
        p,
        `the staged copy ${staged} has MD5 ${md5}, expected ${p.file.md5}; it was removed and nothing was installed (re-run the push)`,
        'TRANSFER_DIGEST_MISMATCH',
      );
    }
    await recheckDest(p.file.dest, ctx.policy.roots);
    const r = await commitInstall(staged, md5, commitOptions(p, ctx));
    await dropStaleStaged(p.dest);
    return installed(p, r, ctx);
  } catch (err) {
    return failed(p, (err as Error).message, isCanopyError(err) ? err.code : undefined);
  }
}

/** Removes the staged copies this push did not install (unchanged on arrival, refused, failed). */
async function dropStaged(files: PushFile[], runId: string, ctx: PushContext): Promise<void> {
  for (const f of files) {
    const staged = await stagedCopy(f.dest, runId, ctx);
    if (staged) await unlink(staged).catch(() => {});
  }
}

async function dropStaleStaged(dest: string): Promise<void> {
  const prefix = `.${path.basename(dest)}${STAGED_MARK}`;
  const dir = path.dirname(dest);
  for (const name of await readdir(dir).catch(() => [])) {
    if (name.startsWith(prefix)) await unlink(path.join(dir, name)).catch(() => {});
  }
}

function failed(p: Planned, error: string, code?: string): FileOutcome {
  return {
    dest: p.file.dest,
    state: 'failed',
    oldMd5: p.state?.md5 ?? null,
    newMd5: p.file.md5,
    content: false,
    error,
    ...(code ? { code } : {}),
  };
}

async function validate(
  command: string,
  tmp: string,
  ctx: PushContext,
): Promise<{ ok: boolean; output: string }> {
  const r = await runCommand(
    {
      command: command.replaceAll('%s', shellQuote(tmp)),
      timeoutMs: 60_000,
      cwd: path.dirname(tmp),
      ...(ctx.runAs ? { runAs: ctx.runAs } : {}),
    },
    ctx.policy,
    ctx.signal ? { signal: ctx.signal } : {},
  );
  const output = [r.stdout, r.stderr, r.error ?? ''].filter(Boolean).join('\n');
  const how = r.state === 'ok' ? '' : r.exitCode !== null ? ` (exit ${r.exitCode})` : ` (${r.state})`;
  return { ok: r.state === 'ok', output: `${command}${how}:\n${output}` };
}

async function restore(p: Planned, ctx: PushContext): Promise<FileOutcome> {
  try {
    const r = await rollback(p.dest, ctx.backupDir);
    ctx.cache.forget(p.dest);
    return { dest: p.file.dest, state: 'changed', oldMd5: r.oldMd5, newMd5: r.newMd5, content: true };
  } catch (err) {
    return failed(p, (err as Error).message, isCanopyError(err) ? err.code : undefined);
  }
}

async function finish(
  notify: string | undefined,
  timeoutMs: number,
  outcomes: FileOutcome[],
  startedAt: number,
  writes: boolean,
  ctx: PushContext,
): Promise<PushOutput> {
  const anyFailed = outcomes.some((o) => o.state === 'failed');
  const anyChanged = outcomes.some((o) => o.state === 'changed');
  let run: ExecResult | undefined;
  if (notify && writes && anyChanged && !anyFailed) {
    run = await runCommand(
      { command: notify, timeoutMs, ...(ctx.runAs ? { runAs: ctx.runAs } : {}) },
      ctx.policy,
      ctx.signal ? { signal: ctx.signal } : {},
    );
  }
  const endedAt = Date.now();
  const failures = outcomes.filter((o) => o.state === 'failed').map((o) => `${o.dest}: ${o.error}`);
  if (run && run.state !== 'ok') failures.push(`notify ${run.state}: ${run.error ?? `exit ${run.exitCode}`}`);
  const refusedOnly =
    anyFailed && outcomes.every((o) => o.state !== 'failed' || o.code === 'PUSH_DEST_REFUSED');
  return {
    state: failures.length === 0 ? 'ok' : refusedOnly && !run ? 'refused' : 'failed',
    ...(run
      ? {
          exitCode: run.exitCode,
          signal: run.signal,
          stdout: run.stdout,
          stderr: run.stderr,
          stdoutTruncated: run.stdoutTruncated,
          stderrTruncated: run.stderrTruncated,
          stdoutBytes: run.stdoutBytes,
          stderrBytes: run.stderrBytes,
          notified: true,
        }
      : NO_OUTPUT),
    startedAt,
    endedAt,
    durationMs: endedAt - startedAt,
    ...(failures.length > 0 ? { error: failures.join('\n').slice(0, 65536) } : {}),
    files: outcomes,
  };
}
