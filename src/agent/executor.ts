/**
 * The agent's command executor: checks a command the coordinator sent against this agent's policy
 * (working-directory roots, run-as allowlist, env names, limits), runs it in its own process group,
 * captures bounded output, and stops the whole group on timeout or abort.
 *
 * It never runs anything the policy refused, never passes an argv through a shell (only a command given
 * as one string runs as `/bin/sh -c`), never hands the agent's own environment to a command, never holds
 * more than `maxOutputBytes` of a stream, and never waits on a pipe that outlives the command: once the
 * main process has exited, the pipes get PIPE_GRACE_MS to close and are then dropped. A grandchild that
 * left the group (setsid) keeps running; one still in the group is killed only if we stopped the command.
 */
import { type ChildProcess, type SpawnOptions, spawn } from 'node:child_process';
import { realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { MAX_OUTPUT_BYTES, MAX_TIMER_MS, NO_OUTPUT } from '../protocol/index.js';
import { isInside } from '../transfer/index.js';
import { type Account, currentAccount, lookupAccount } from './accounts.js';

export interface CommandSpec {
  /** argv (run without a shell) or a shell string, run as ['/bin/sh', '-c', '--', command]. */
  command: string[] | string;
  /** > 0; measured until the main process exits. */
  timeoutMs: number;
  /** Added to the minimal base env (PATH, HOME, USER, LOGNAME, SHELL, LANG); may override it. */
  env?: Record<string, string>;
  /** Absolute; default policy.defaultCwd. Must resolve inside one of policy.roots. */
  cwd?: string;
  /** Account name; default the agent's own account. Checked against policy.runAs either way. */
  runAs?: string;
  /** Per stream; default 1 MiB. */
  maxOutputBytes?: number;
  /** Delay between SIGTERM and SIGKILL to the process group; default 5000. */
  killGraceMs?: number;
}

export interface ExecPolicy {
  /** Absolute directories; a command's cwd must resolve (realpath) inside one of them or equal it. */
  roots: string[];
  /** Accounts commands may run as; empty means only the agent's own account. */
  runAs: string[];
  defaultCwd: string;
  /** Files may be installed with a setuid/setgid mode (agent config allow_setid); default no. */
  allowSetid?: boolean;
}

export type ExecState = 'ok' | 'failed' | 'timeout' | 'refused';

export interface ExecResult {
  /**
   * ok: exit 0. failed: nonzero exit, killed by a signal, could not be spawned, or aborted through
   * opts.signal (then `error` starts with "aborted"). timeout: stopped by our timer. refused: the
   * policy said no and nothing was spawned.
   */
  state: ExecState;
  exitCode: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  /** Every byte the process wrote, including what was dropped beyond the cap. */
  stdoutBytes: number;
  stderrBytes: number;
  startedAt: number;
  endedAt: number;
  durationMs: number;
  error?: string;
}

/** What checkPolicy allows: the real cwd, and uid/gid only when the command must switch accounts. */
export interface PolicyDecision {
  ok: true;
  cwd: string;
  uid?: number;
  gid?: number;
  account: string;
  home: string;
  shell: string;
}

export type PolicyRefusal = { ok: false; reason: string };

export const DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024;
export const DEFAULT_KILL_GRACE_MS = 5000;
/** How long the pipes may stay open after the main process exited (a grandchild may hold them). */
const PIPE_GRACE_MS = 200;
const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;
const FALLBACK_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

const q = (value: unknown): string => JSON.stringify(value) ?? String(value);
const refuse = (reason: string): PolicyRefusal => ({ ok: false, reason });

/** Decides whether `spec` may run under `policy`, and as whom and where. Nothing is spawned. */
export async function checkPolicy(
  spec: CommandSpec,
  policy: ExecPolicy,
): Promise<PolicyDecision | PolicyRefusal> {
  const problem = checkLimits(spec) ?? checkCommand(spec.command) ?? checkEnv(spec.env);
  if (problem !== undefined) return refuse(problem);
  const account = await resolveAccount(spec.runAs, policy.runAs);
  if (!account.ok) return account;
  const cwd = await resolveCwd(spec.cwd ?? policy.defaultCwd, policy.roots);
  if (!cwd.ok) return cwd;
  const { name, home, shell, uid, gid } = account.account;
  return { ok: true, cwd: cwd.cwd, account: name, home, shell, ...(account.switchUser ? { uid, gid } : {}) };
}

/**
 * Runs `spec` if the policy allows it, and resolves when it is over; it never rejects.
 * Aborting `opts.signal` stops the process group like a timeout does (SIGTERM, SIGKILL after
 * killGraceMs) and resolves with state 'failed' once the main process is gone.
 */
export async function runCommand(
  spec: CommandSpec,
  policy: ExecPolicy,
  opts: { signal?: AbortSignal } = {},
): Promise<ExecResult> {
  const { signal } = opts;
  if (signal?.aborted) return abortedBeforeStart(signal);
  const decision = await checkPolicy(spec, policy);
  if (!decision.ok) return notStarted('refused', decision.reason);
  if (signal?.aborted) return abortedBeforeStart(signal);
  const env = buildEnv(decision, spec.env);
  const options: SpawnOptions = { cwd: decision.cwd, env };
  if (decision.uid !== undefined) options.uid = decision.uid;
  if (decision.gid !== undefined) options.gid = decision.gid;
  const limits: RunLimits = {
    timeoutMs: spec.timeoutMs,
    killGraceMs: spec.killGraceMs ?? DEFAULT_KILL_GRACE_MS,
    maxOutputBytes: spec.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES,
  };
  return new CommandRun(toArgv(spec.command), options, limits, decision.account, signal).run();
}

function checkLimits(spec: CommandSpec): string | undefined {
  const { timeoutMs, maxOutputBytes, killGraceMs } = spec;
  if (typeof timeoutMs !== 'number' || !Number.isFinite(timeoutMs) || timeoutMs <= 0) {
    return `timeoutMs ${q(timeoutMs)} is not a positive number of milliseconds`;
  }
  if (timeoutMs > MAX_TIMER_MS) return `timeoutMs ${timeoutMs} is too large (at most ${MAX_TIMER_MS})`;
  if (maxOutputBytes !== undefined && !isIntegerIn(maxOutputBytes, MAX_OUTPUT_BYTES)) {
    return `maxOutputBytes ${q(maxOutputBytes)} must be a whole number from 0 to ${MAX_OUTPUT_BYTES}`;
  }
  if (killGraceMs !== undefined && !isIntegerIn(killGraceMs, MAX_TIMER_MS)) {
    return `killGraceMs ${q(killGraceMs)} must be a whole number of milliseconds from 0 to ${MAX_TIMER_MS}`;
  }
  return undefined;
}

function isIntegerIn(value: unknown, max: number): boolean {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= max;
}

function checkCommand(command: unknown): string | undefined {
  if (typeof command === 'string') {
    if (command.trim() === '') return 'command is an empty shell string';
    if (command.includes('\0')) return 'command contains a NUL byte, which no process can receive';
    return undefined;
  }
  if (!Array.isArray(command) || command.length === 0) {
    return 'command must be a non-empty argv list or a shell string';
  }
  for (const [i, arg] of command.entries()) {
    if (typeof arg !== 'string') return `command[${i}] is not a string`;
    if (arg.includes('\0')) return `command[${i}] contains a NUL byte, which no process can receive`;
  }
  if (command[0] === '') return 'command[0], the program to run, is empty';
  return undefined;
}

function checkEnv(env: Record<string, string> | undefined): string | undefined {
  for (const [key, value] of Object.entries(env ?? {})) {
    if (!ENV_KEY.test(key)) {
      return `env key ${q(key)} is not a valid variable name (letters, digits and _, not starting with a digit)`;
    }
    if (typeof value !== 'string') return `env ${key} must be a string, got ${typeof value}`;
    if (value.includes('\0')) return `env ${key} contains a NUL byte, which no process can receive`;
  }
  return undefined;
}

type AccountCheck = { ok: true; account: Account; switchUser: boolean } | PolicyRefusal;

async function resolveAccount(runAs: string | undefined, allowlist: string[]): Promise<AccountCheck> {
  const self = currentAccount();
  const name = runAs ?? self.name;
  const allowed = allowlist.length > 0 ? allowlist : [self.name];
  if (!allowed.includes(name)) return refuse(notAllowedReason(name, runAs === undefined, allowlist, self));
  if (name === self.name) return { ok: true, account: self, switchUser: false };
  let account: Account | undefined;
  try {
    account = await lookupAccount(name);
  } catch (err) {
    return refuse(`could not look up run-as account ${q(name)}: ${(err as Error).message}`);
  }
  if (account === undefined) {
    return refuse(
      `run-as account ${q(name)} does not exist on this host (getent passwd found no entry); ` +
        'create the account or remove it from run_as in the agent config',
    );
  }
  const switchUser = account.uid !== self.uid || account.gid !== self.gid;
  if (switchUser && self.uid !== 0) {
    return refuse(
      `cannot run as ${q(name)}: the agent runs as ${q(self.name)} (uid ${self.uid}), and only an agent ` +
        'running as root can switch accounts; run the agent as root or leave runAs unset',
    );
  }
  return { ok: true, account, switchUser };
}

function notAllowedReason(name: string, defaulted: boolean, allowlist: string[], self: Account): string {
  if (allowlist.length === 0) {
    return (
      `run-as account ${q(name)} is not allowed: this agent's run_as allowlist is empty, so commands run ` +
      `only as the agent's own account ${q(self.name)}; add ${q(name)} to run_as in the agent config`
    );
  }
  const allowed = allowlist.join(', ');
  if (defaulted) {
    return (
      `the command names no run-as account, so it would run as the agent's own account ${q(name)}, which is ` +
      `not in this agent's run_as allowlist (allowed: ${allowed}); set runAs to one of those, or add ` +
      `${q(name)} to run_as in the agent config`
    );
  }
  return (
    `run-as account ${q(name)} is not in this agent's run_as allowlist (allowed: ${allowed}); ` +
    'add it to run_as in the agent config'
  );
}

type CwdCheck = { ok: true; cwd: string } | PolicyRefusal;

async function resolveCwd(cwd: string, roots: string[]): Promise<CwdCheck> {
  const allowed = roots.length > 0 ? roots.join(', ') : 'none: roots is empty';
  if (typeof cwd !== 'string' || !path.isAbsolute(cwd)) {
    return refuse(`working directory ${q(cwd)} is not an absolute path (allowed roots: ${allowed})`);
  }
  let real: string;
  try {
    real = await realpath(cwd);
  } catch (err) {
    return refuse(`working directory ${q(cwd)} ${describeFsError(err)}`);
  }
  const realRoots = await Promise.all(roots.map((root) => realRoot(root)));
  if (!realRoots.some((root) => root !== undefined && isInside(root, real))) {
    const resolved = real === cwd ? '' : ` resolves to ${q(real)}, which`;
    return refuse(
      `working directory ${q(cwd)}${resolved} is outside the allowed roots (allowed: ${allowed}); ` +
        'use a directory under one of them, or add a root to roots in the agent config',
    );
  }
  try {
    if (!(await stat(real)).isDirectory()) return refuse(`working directory ${q(cwd)} is not a directory`);
  } catch (err) {
    return refuse(`working directory ${q(cwd)} ${describeFsError(err)}`);
  }
  return { ok: true, cwd: real };
}

/** A configured root as a real path; a root that is relative or missing contains nothing. */
async function realRoot(root: string): Promise<string | undefined> {
  if (!path.isAbsolute(root)) return undefined;
  try {
    return await realpath(root);
  } catch {
    return undefined;
  }
}

function describeFsError(err: unknown): string {
  switch ((err as NodeJS.ErrnoException).code) {
    case 'ENOENT':
      return 'does not exist';
    case 'ENOTDIR':
      return 'does not exist (a part of the path is not a directory)';
    case 'EACCES':
      return 'cannot be reached by the agent (permission denied)';
    case 'ELOOP':
      return 'cannot be resolved (too many levels of symbolic links)';
    default:
      return `cannot be resolved: ${(err as Error).message}`;
  }
}

function buildEnv(
  decision: PolicyDecision,
  extra: Record<string, string> | undefined,
): Record<string, string> {
  const env: Record<string, string> = {
    PATH: process.env.PATH || FALLBACK_PATH,
    HOME: decision.home,
    USER: decision.account,
    LOGNAME: decision.account,
    SHELL: decision.shell,
    // Spread (not Object.assign), so a key named __proto__ stays a plain variable.
    ...extra,
  };
  if (env.LANG === undefined) env.LANG = 'C.UTF-8';
  return env;
}

function toArgv(command: string[] | string): [string, ...string[]] {
  // `--`: a command string that starts with '-' is the command, not options of sh.
  if (typeof command === 'string') return ['/bin/sh', '-c', '--', command];
  const [program = '', ...args] = command;
  return [program, ...args];
}

function notStarted(state: ExecState, error: string): ExecResult {
  const now = Date.now();
  return { state, ...NO_OUTPUT, startedAt: now, endedAt: now, durationMs: 0, error };
}

function abortedBeforeStart(signal: AbortSignal): ExecResult {
  return notStarted('failed', `aborted before the command started (${abortReason(signal)})`);
}

function abortReason(signal: AbortSignal): string {
  const reason: unknown = signal.reason;
  if (reason instanceof Error) return reason.message;
  return typeof reason === 'string' ? reason : 'the operation was aborted';
}

interface RunLimits {
  timeoutMs: number;
  killGraceMs: number;
  maxOutputBytes: number;
}

/**
 * One running command. Its events (exit, close, timers, abort) all end in finish(), which runs once.
 * Invariant: once we started stopping the group, it has been sent SIGKILL by the time we resolve, so
 * nothing we were asked to stop outlives the result.
 */
class CommandRun {
  private readonly stdout: OutputBuffer;
  private readonly stderr: OutputBuffer;
  private child: ChildProcess | undefined;
  private exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private spawnError: string | undefined;
  private stopping: { why: 'timeout' | 'abort'; detail: string } | undefined;
  private killSent = false;
  private done = false;
  private timeoutTimer: NodeJS.Timeout | undefined;
  private killTimer: NodeJS.Timeout | undefined;
  private pipeTimer: NodeJS.Timeout | undefined;
  private startedAt = 0;
  private startedMono = 0;
  private resolve: (result: ExecResult) => void = () => {};

  constructor(
    private readonly argv: [string, ...string[]],
    private readonly options: SpawnOptions,
    private readonly limits: RunLimits,
    private readonly account: string,
    private readonly signal: AbortSignal | undefined,
  ) {
    this.stdout = new OutputBuffer(limits.maxOutputBytes);
    this.stderr = new OutputBuffer(limits.maxOutputBytes);
  }

  run(): Promise<ExecResult> {
    return new Promise((resolve) => {
      this.resolve = resolve;
      this.start();
    });
  }

  private readonly onAbort = (): void => {
    this.stop('abort', this.signal === undefined ? '' : abortReason(this.signal));
  };

  private start(): void {
    this.startedAt = Date.now();
    this.startedMono = performance.now();
    const [program, ...args] = this.argv;
    let child: ChildProcess;
    try {
      // detached: the child calls setsid(), so its pid is also the id of a new process group.
      child = spawn(program, args, { ...this.options, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      this.spawnError = this.describeSpawnError(err);
      this.finish();
      return;
    }
    this.child = child;
    child.stdout?.on('data', (chunk: Buffer) => this.stdout.write(chunk));
    child.stderr?.on('data', (chunk: Buffer) => this.stderr.write(chunk));
    // A failed read only loses output; the exit status still decides the result, so never crash on it.
    child.stdout?.on('error', () => {});
    child.stderr?.on('error', () => {});
    child.on('error', (err) => this.onError(err));
    child.on('exit', (code, signal) => this.onExit(code, signal));
    child.on('close', () => this.finish());
    this.timeoutTimer = setTimeout(() => this.stop('timeout', ''), this.limits.timeoutMs);
    this.signal?.addEventListener('abort', this.onAbort, { once: true });
  }

  private onError(err: Error): void {
    // Without a pid the process never started (ENOENT, EACCES) and no 'exit' will follow.
    if (this.child?.pid !== undefined) return;
    this.spawnError = this.describeSpawnError(err);
    this.finish();
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null): void {
    this.exit = { code, signal };
    clearTimeout(this.timeoutTimer);
    // A grandchild (ours, or one that left the group with setsid) may hold the pipes open for good.
    this.pipeTimer = setTimeout(() => this.finish(), PIPE_GRACE_MS);
  }

  private stop(why: 'timeout' | 'abort', detail: string): void {
    if (this.done || this.exit !== undefined || this.stopping !== undefined) return;
    this.stopping = { why, detail };
    this.killGroup('SIGTERM');
    this.killTimer = setTimeout(() => this.killGroup('SIGKILL'), this.limits.killGraceMs);
  }

  private killGroup(signal: NodeJS.Signals): void {
    const pid = this.child?.pid;
    if (pid === undefined) return;
    if (signal === 'SIGKILL') this.killSent = true;
    try {
      process.kill(-pid, signal);
    } catch {
      // ESRCH: every process of the group is gone already.
    }
  }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.timeoutTimer);
    clearTimeout(this.killTimer);
    clearTimeout(this.pipeTimer);
    this.signal?.removeEventListener('abort', this.onAbort);
    if (this.stopping !== undefined && !this.killSent) this.killGroup('SIGKILL');
    this.child?.stdout?.destroy();
    this.child?.stderr?.destroy();
    this.resolve(this.result());
  }

  private result(): ExecResult {
    const endedAt = Date.now();
    const outcome = this.outcome();
    const result: ExecResult = {
      state: outcome.state,
      exitCode: this.exit?.code ?? null,
      signal: this.exit?.signal ?? null,
      stdout: this.stdout.text(),
      stderr: this.stderr.text(),
      stdoutTruncated: this.stdout.truncated,
      stderrTruncated: this.stderr.truncated,
      stdoutBytes: this.stdout.total,
      stderrBytes: this.stderr.total,
      startedAt: this.startedAt,
      endedAt,
      durationMs: Math.round(performance.now() - this.startedMono),
    };
    if (outcome.error !== undefined) result.error = outcome.error;
    return result;
  }

  private outcome(): { state: ExecState; error?: string } {
    if (this.spawnError !== undefined) return { state: 'failed', error: this.spawnError };
    if (this.stopping !== undefined) {
      const how = `stopped its process group with SIGTERM${
        this.killSent ? `, then SIGKILL (after at most ${this.limits.killGraceMs} ms)` : ''
      }`;
      if (this.stopping.why === 'timeout') {
        return { state: 'timeout', error: `timed out after ${this.limits.timeoutMs} ms; ${how}` };
      }
      return { state: 'failed', error: `aborted (${this.stopping.detail}); ${how}` };
    }
    return { state: this.exit?.code === 0 ? 'ok' : 'failed' };
  }

  private describeSpawnError(err: unknown): string {
    const program = this.argv[0];
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && !program.includes('/')) {
      const env = this.options.env as Record<string, string> | undefined;
      return `command ${q(program)} was not found on PATH (${env?.PATH ?? ''})`;
    }
    if (code === 'ENOENT') {
      return `command ${q(program)} was not found: the file, or the #! interpreter it names, does not exist`;
    }
    if (code === 'EACCES') {
      return (
        `command ${q(program)} could not be started as ${q(this.account)}: permission denied; check that ` +
        'it is an executable file (chmod +x) that this account may read and run'
      );
    }
    return `command ${q(program)} could not be started: ${(err as Error).message}`;
  }
}

/** Keeps the first `cap` bytes of a stream in one buffer that grows up to `cap`, and counts the rest. */
class OutputBuffer {
  private buf = Buffer.alloc(0);
  private kept = 0;
  total = 0;

  constructor(private readonly cap: number) {}

  get truncated(): boolean {
    return this.total > this.cap;
  }

  write(chunk: Buffer): void {
    this.total += chunk.length;
    const take = Math.min(chunk.length, this.cap - this.kept);
    if (take <= 0) return;
    if (this.kept + take > this.buf.length) this.grow(this.kept + take);
    chunk.copy(this.buf, this.kept, 0, take);
    this.kept += take;
  }

  /** UTF-8, lossy; when cut at the cap, a character the cut split in two is dropped whole. */
  text(): string {
    const bytes = this.buf.subarray(0, this.kept);
    return (this.truncated ? dropSplitLastChar(bytes) : bytes).toString('utf8');
  }

  private grow(needed: number): void {
    const next = Buffer.allocUnsafe(Math.min(this.cap, Math.max(needed, this.buf.length * 2, 4096)));
    this.buf.copy(next, 0, 0, this.kept);
    this.buf = next;
  }
}

function dropSplitLastChar(bytes: Buffer): Buffer {
  const end = bytes.length;
  // The last character's lead byte is preceded by at most 3 continuation bytes (10xxxxxx).
  let lead = end - 1;
  while (lead >= 0 && end - lead <= 3 && ((bytes[lead] ?? 0) & 0xc0) === 0x80) lead--;
  if (lead < 0) return bytes;
  const b = bytes[lead] ?? 0;
  const width = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
  return end - lead < width ? bytes.subarray(0, lead) : bytes;
}
