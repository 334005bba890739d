/**
 * canopy's knowledge of the system rsync's command lines, both ends of a
 * pull over the peer channel: the client command syncFromPeer runs (with
 * `canopy peer-rsh` as its remote shell), and the server command line a peer
 * server accepts from a pulling peer and turns into the argv it spawns.
 *
 * The server side is an allowlist, in the spirit of rsync's own rrsync: the
 * peer may only ever run `rsync --server --sender` (it reads, never writes),
 * with short options that only shape what is sent, a few long options with
 * plain values, and paths that stay inside the authorized tree (no `..`, no
 * absolute path outside it, no symlink leading out of it, no shell or glob
 * character: nothing here runs a shell). Everything else is refused with a
 * message naming the argument. This module never spawns the server's rsync
 * (peer-stream.ts does) and never decides which trees a peer may pull.
 *
 * Known limit, shared with rrsync: the checks cover the command line, not the
 * rsync protocol itself. A peer speaking that protocol directly could send
 * filter rules that make the serving rsync read a merge file elsewhere on the
 * host; only authorized fleet agents get this far.
 */
import { spawn } from 'node:child_process';
import { mkdir, realpath, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, posix, relative, sep } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { CanopyError, CODES, type ErrorCode } from '../errors/index.js';
import { isInside } from './install.js';
import { PEER_CODES } from './peer-wire.js';

/** Where an interrupted file waits, inside its destination directory, for the next sync to resume it. */
export const PARTIAL_DIR = '.canopy-partial';

// --- the server's side: what a pulling peer may run

/** Short options that only shape what is sent: links as links, times, perms, checksums, compression... */
const SHORT_OK = new Set('lptgoDrdcvzHSWxIunqmyAXEOJNU');
/** Short options refused, and why. */
const SHORT_REFUSED: Record<string, string> = {
  L: 'it makes the server follow symlinks, also out of the tree (--copy-links)',
  k: 'it makes the server follow directory symlinks, also out of the tree (--copy-dirlinks)',
  K: 'it is for the receiving side (--keep-dirlinks)',
  s: 'it hides the paths from these checks (--protect-args); pull without it',
  R: 'relative path names (-R) are not served',
};
/** Long options accepted with no value. */
const LONG_OK = new Set([
  '--numeric-ids',
  '--inplace',
  '--append',
  '--safe-links',
  '--ignore-missing-args',
  '--open-noatime',
]);
/** Long options accepted as --name=VALUE, with the value each must match. */
const LONG_VALUED: Record<string, RegExp> = {
  '--timeout': /^\d{1,6}$/,
  '--bwlimit': /^\d{1,12}(\.\d{1,6})?[KMGkmg]?$/,
  '--compress-level': /^-?\d{1,2}$/,
  '--compress-choice': /^[a-z0-9-]{1,20}$/,
  '--checksum-choice': /^[a-z0-9-]{1,20}(,[a-z0-9-]{1,20})?$/,
  '--skip-compress': /^[A-Za-z0-9/]{1,400}$/,
};
/** Long options refused with a reason (anything else not above is refused too). */
const LONG_REFUSED: Record<string, string> = {
  '--rsync-path': 'a peer runs only its own rsync',
  '--rsh': 'a peer never runs another command',
  '--files-from': 'file lists are not served; pull a path of the tree',
  '--remove-source-files': 'it would delete files on the serving agent',
  '--remove-sent-files': 'it would delete files on the serving agent',
  '--copy-unsafe-links': 'it makes the server follow symlinks out of the tree',
  '--copy-links': 'it makes the server follow symlinks out of the tree',
  '--copy-dirlinks': 'it makes the server follow symlinks out of the tree',
  '--copy-devices': 'device contents are not served',
  '--log-file': 'it would write a file on the serving agent',
  '--write-batch': 'it would write a file on the serving agent',
  '--only-write-batch': 'it would write a file on the serving agent',
  '--read-batch': 'batch files are not served',
  '--daemon': 'the peer channel is not an rsync daemon',
  '--config': 'the peer channel is not an rsync daemon',
  '--protect-args': 'it hides the paths from these checks',
  '--secluded-args': 'it hides the paths from these checks',
};
/** rsync's capability string after -e (`e.iLsfxCIvu`, or `e31.0.iLsfx` for a pre-release protocol). */
const CAPABILITIES = /^e(\d+\.\d+)?\.[A-Za-z]*$/;
/** Characters a shell would act on. rsync escapes them with a backslash in remote paths (see safe_arg). */
const SHELL_CHARS = new Set('!#$&;|<>(){}"\'` \t*?[]');
const MAX_PATHS = 16;

/** The remote command split into the options (as given) and the paths (unescaped), or a refusal. */
export interface ServerCommand {
  options: string[];
  paths: string[];
}

/** What the peer server spawns: the system rsync with `argv`, in `cwd`. */
export interface ServerSpawn {
  cwd: string;
  argv: string[];
}

/**
 * Checks the remote command an rsync client sent (`rsync --server --sender
 * OPTIONS . PATH...`, as its remote shell received it) against the
 * allowlist. Throws TRANSFER_PEER_FORBIDDEN naming the argument at fault.
 */
export function parseServerCommand(args: readonly string[]): ServerCommand {
  const [program, server, sender, ...rest] = args;
  if (program !== 'rsync') {
    refuse(`it runs ${JSON.stringify(program)}: a peer runs only its own rsync (no --rsync-path)`);
  }
  if (server !== '--server')
    refuse(`${JSON.stringify(server)} is not --server: not an rsync client's command`);
  if (sender !== '--sender') {
    refuse(
      `it is not --server --sender: the client would write to this agent, and peers only ever read ` +
        `(pull from the peer: rsync -e "canopy peer-rsh ..." peer:PATH LOCAL)`,
    );
  }
  const dot = rest.indexOf('.');
  if (dot < 0) refuse('it has no "." argument before the paths: not an rsync client command line');
  const options = rest.slice(0, dot);
  for (const option of options) checkOption(option);
  const paths = rest.slice(dot + 1);
  if (paths.length > MAX_PATHS) refuse(`it names ${paths.length} paths (at most ${MAX_PATHS})`);
  return { options, paths: paths.map(unescapePath) };
}

/**
 * The argv and directory the peer server runs rsync with, for a command that
 * parseServerCommand accepted, over the tree rooted at `root` (a directory,
 * or a single file). Throws TRANSFER_PEER_FORBIDDEN for a path outside the
 * tree (through `..`, an absolute path or a symlink), TRANSFER_CHUNK_MISSING
 * for a path or root that does not exist.
 */
export async function serverSpawn(
  command: ServerCommand,
  root: string,
  filter?: string,
): Promise<ServerSpawn> {
  let real: string;
  let isDir: boolean;
  try {
    real = await realpath(root);
    isDir = (await stat(real)).isDirectory();
  } catch (err) {
    throw new CanopyError(
      PEER_CODES.missing,
      `the tree's root ${root} cannot be read on the serving agent (${(err as Error).message}); ` +
        `pull from another peer or the source`,
      { path: root, cause: err },
    );
  }
  const wanted = command.paths.length > 0 ? command.paths : ['.'];
  const paths: string[] = [];
  for (const p of wanted) paths.push(isDir ? await inDirectory(p, real) : inFileTree(p, real));
  return {
    cwd: isDir ? real : dirname(real),
    // A relay's directory may hold files of its own: its filter (treeFilter) lets only the tree's
    // entries out. Server-side rules come before any the client sends, so they decide first.
    argv: [
      '--server',
      '--sender',
      ...(filter ? [`--filter=merge ${filter}`] : []),
      ...command.options,
      '--',
      '.',
      ...paths,
    ],
  };
}

function checkOption(option: string): void {
  if (/^-B\d{1,9}$/.test(option)) return;
  if (option.startsWith('--')) {
    const [name = '', value] = option.split(/=(.*)/s, 2);
    const why = LONG_REFUSED[name];
    if (why) refuse(`option ${name}: ${why}`);
    if (value === undefined && LONG_OK.has(name)) return;
    const pattern = LONG_VALUED[name];
    if (pattern && value !== undefined && pattern.test(value)) return;
    if (pattern) refuse(`option ${name} needs =VALUE matching ${pattern}, got ${JSON.stringify(option)}`);
    refuse(`option ${JSON.stringify(option)} is not one a peer serves`);
  }
  if (!/^-[^-]/.test(option)) refuse(`${JSON.stringify(option)} before "." is not an option`);
  for (let i = 1; i < option.length; i++) {
    const letter = option[i] as string;
    if (letter === 'e') {
      if (CAPABILITIES.test(option.slice(i))) return;
      refuse(`-e in ${JSON.stringify(option)}: a peer never runs another remote shell or command`);
    }
    if (SHORT_REFUSED[letter]) refuse(`option -${letter}: ${SHORT_REFUSED[letter]}`);
    if (!SHORT_OK.has(letter))
      refuse(`option -${letter} (in ${JSON.stringify(option)}) is not one a peer serves`);
  }
}

/** A path as rsync's client escaped it (a backslash before each shell character), unescaped; no shell, no glob. */
function unescapePath(arg: string): string {
  let out = '';
  for (let i = 0; i < arg.length; i++) {
    let c = arg[i] as string;
    if (c === '\\') c = arg[++i] ?? '';
    else if (SHELL_CHARS.has(c)) refuse(`path ${JSON.stringify(arg)} has an unescaped ${JSON.stringify(c)}`);
    else if (c === '~' && i === 0)
      refuse(`path ${JSON.stringify(arg)} starts with ~ (there is no home here)`);
    if (c === '' || c < ' ' || c === '\x7f') {
      refuse(`path ${JSON.stringify(arg)} has a control character or a trailing backslash`);
    }
    out += c;
  }
  if (out === '') refuse('an empty path');
  return out;
}

/** `p` as a path relative to the directory `root` (a realpath), or a refusal. */
async function inDirectory(p: string, root: string): Promise<string> {
  const trailing = p.endsWith('/') && p !== '/';
  const rel = treeRelative(p, root);
  if (rel !== '.') {
    let real: string;
    try {
      real = await realpath(`${root}${sep}${rel}`);
    } catch (err) {
      throw new CanopyError(
        PEER_CODES.missing,
        `path ${JSON.stringify(p)} does not exist in the tree on the serving agent; pull a path it has`,
        { path: p, cause: err },
      );
    }
    if (!isInside(root, real)) refuse(`path ${JSON.stringify(p)} leads out of the tree through a symlink`);
  }
  return trailing && rel !== '.' ? `${rel}/` : rel;
}

/** For a tree that is one file: only the tree itself ("." or its name). */
function inFileTree(p: string, root: string): string {
  const name = basename(root);
  const rel = treeRelative(p, root === '/' ? root : dirname(root));
  if (rel !== '.' && rel !== name) refuse(`path ${JSON.stringify(p)}: this tree is the single file ${name}`);
  return name;
}

/** `p` normalized relative to `root`: "." for the root itself; refuses `..` and absolute paths outside. */
function treeRelative(p: string, root: string): string {
  if (p.split('/').includes('..')) refuse(`path ${JSON.stringify(p)} contains ".."`);
  const rel = isAbsolute(p) ? relative(root, posix.normalize(p)) : posix.normalize(p).replace(/\/+$/, '');
  if (isAbsolute(p) && !isInside(root, posix.normalize(p))) {
    refuse(`absolute path ${JSON.stringify(p)} is outside the tree`);
  }
  return rel === '' ? '.' : rel;
}

function refuse(why: string): never {
  throw new CanopyError(PEER_CODES.forbidden, `rsync command refused: ${why}`, { reason: why });
}

// --- the client's side: the pull

export interface PeerAddress {
  /** The agent's name: its certificate must name `<name>.agent.canopy`. */
  name: string;
  host: string;
  port: number;
}

export interface SyncFromPeerOptions {
  /** The parent in the tree to pull from. */
  peer: PeerAddress;
  /** The tree id the running distribution lets this agent pull from that peer. */
  tree: string;
  /**
   * Path inside the tree, as rsync reads a source: "dir/" is the directory's
   * contents, "dir" the directory itself; default "." (the whole tree; for a
   * single-file tree, the file).
   */
  remotePath?: string;
  /** Where it lands: the destination directory, or for a single file the file's path. */
  localPath: string;
  /** This agent's data directory: `canopy peer-rsh` reads its identity (certificate, key, fleet CA) there. */
  dataDir: string;
  /** The argv that runs the canopy CLI, e.g. [process.execPath, '/opt/canopy/dist/src/cli/main.js']. */
  canopy: readonly string[];
  /** The rsync program; default "rsync" from PATH. */
  rsyncPath?: string;
  /** Keep an interrupted file in PARTIAL_DIR and resume from it; default true. */
  partial?: boolean;
  /** Publish every updated file at the end, together (--delay-updates); default true. */
  delayUpdates?: boolean;
  /** Delete local files the tree does not have; default false. */
  delete?: boolean;
  /** Compare whole-file checksums instead of size and time; default false. */
  checksum?: boolean;
  /** Compress on the wire (-z); default false (the peer channel is usually a LAN). */
  compress?: boolean;
  /** Clear the setuid/setgid bits of every file received (--chmod=Fug-s); default false. */
  stripSetid?: boolean;
  /** Name every entry of the tree in the result (`entries`), changed or not (-ii); default false. */
  listEntries?: boolean;
  /** rsync's I/O timeout in seconds (both ends give up after that long without data); default 300. */
  timeoutSeconds?: number;
  /** Aborting kills rsync with SIGTERM (it keeps the partial file) and rejects with the reason. */
  signal?: AbortSignal;
  /**
   * Caps the pull at this many bytes per second (at least 1024): rsync's
   * `--bwlimit`, in whole KiB/s rounded down (bwlimitKiB). The local rsync
   * hands it to the serving rsync (`--server --sender ... --bwlimit=N`), which
   * paces what it writes: the download is capped at its source.
   */
  rateLimit?: number;
  /**
   * Called as file data arrives, with rsync's own count of it (its
   * `--info=progress2` lines, parsed from its output; rsync 3.1.0 or later):
   * at most about once a second, and only when the count grew.
   */
  progress?: (p: SyncProgress) => void;
}

/** Where a running pull stands, by rsync's `--info=progress2`. */
export interface SyncProgress {
  /**
   * Bytes of file data done: every file transferred so far plus the part of
   * the current one, literal and matched data alike (a delta counts the whole
   * file it rebuilds). Files already up to date do not count, so a delta
   * ends below the tree's size.
   */
  bytes: number;
}

/** What a sync moved, from rsync's --stats. */
export interface SyncResult {
  /** 0, or 24 (some source files vanished during the sync). */
  exitCode: number;
  /** Regular files transferred (created or updated). */
  files: number;
  /** Files in the tree (of every kind). */
  filesTotal: number;
  /** Bytes this agent received from the peer, on the wire. */
  bytesReceived: number;
  /** Bytes this agent sent to the peer (mostly block checksums). */
  bytesSent: number;
  /** File data the peer sent verbatim. */
  literalBytes: number;
  /** File data rebuilt from what this agent already had (the old version, a partial file). */
  matchedBytes: number;
  /** The size of every file in the tree. */
  totalFileSize: number;
  /** rsync's standard error (the last 64 KiB). */
  stderr: string;
  /** The argv rsync ran with, for logs. */
  argv: string[];
  /** With listEntries: every entry of the tree as rsync named it (directories end in "/"). */
  entries?: string[];
}

/** Marks rsync's itemized lines among its other output. */
const ENTRY_PREFIX = 'canopy-entry:';
/**
 * `canopy-entry:>f+++++++++ etc/app.conf` (or `.f          etc/app.conf` unchanged): the
 * 11-character item, a space, the name. Deletions (`*deleting`) are not entries.
 */
const ENTRY = /^canopy-entry:[<>ch.][fdLDS].{9} (.+)$/;

/** Collects the names of rsync's itemized lines as its output comes, in pieces cut anywhere. */
function entryReader(stream: NodeJS.ReadableStream): () => string[] {
  const names: string[] = [];
  let partial = '';
  // A name's UTF-8 may be cut between two pieces: the decoder keeps the unfinished character.
  const decoder = new StringDecoder('utf8');
  stream.on('data', (d: Buffer) => {
    const lines = (partial + decoder.write(d)).split(/[\r\n]/);
    partial = lines.pop() ?? '';
    for (const line of lines) {
      const m = ENTRY.exec(line);
      if (m?.[1] && m[1] !== './') names.push(m[1]);
    }
  });
  return () => names;
}

/**
 * rsync filter rules that let a serving rsync send exactly `entries` (as a pull listed them) and
 * nothing else from its directory: "+ /name" for each (anchored; wildcard characters escaped),
 * then "- *". Names rsync had to escape (\#ooo: control characters) are left out.
 */
export function treeFilter(entries: readonly string[]): string {
  const rules: string[] = [];
  for (const name of entries) {
    if (name.includes('\\#')) continue;
    const escaped = /[*?[]/.test(name) ? name.replace(/[*?[\\]/g, (c) => `\\${c}`) : name;
    rules.push(`+ /${escaped}`);
  }
  rules.push('- *');
  return `${rules.join('\n')}\n`;
}

/** rsync's exit codes that mean the link or the peer failed, rather than a file. */
const LINK_FAILURES = new Set([5, 10, 12, 30, 35, 255]);
/** The code of an rsync failure no closer code describes. Proposed: a TRANSFER_RSYNC_FAILED code of its own. */
const RSYNC_FAILED: ErrorCode = PEER_CODES.lost;
const OUTPUT_TAIL = 64 * 1024;
const KILL_GRACE_MS = 10_000;

/**
 * rsync's `--bwlimit` value for a cap in bytes per second: whole KiB/s (rsync's
 * unit), rounded down so the pull never goes faster than the cap. A cap below
 * 1 KiB/s cannot be given to rsync (0 would mean no limit): refused.
 */
export function bwlimitKiB(bytesPerSecond: number): number {
  const kib = Math.floor(bytesPerSecond / 1024);
  if (!Number.isFinite(bytesPerSecond) || kib < 1) {
    throw new CanopyError(
      'USAGE',
      `rate limit ${bytesPerSecond} bytes/s is below rsync's smallest --bwlimit (1 KiB/s = 1024 bytes/s); ` +
        'give a rate limit of at least 1024 bytes per second',
      { rateLimit: bytesPerSecond },
    );
  }
  return kib;
}

/** The rsync argv syncFromPeer runs (exported for logs and tests). */
export function rsyncClientArgv(o: SyncFromPeerOptions): string[] {
  const rsh = [
    ...o.canopy,
    'peer-rsh',
    '--data',
    o.dataDir,
    '--peer',
    `${o.peer.name}@${o.peer.host.includes(':') ? `[${o.peer.host}]` : o.peer.host}:${o.peer.port}`,
    '--tree',
    o.tree,
  ];
  const remote = o.remotePath === undefined || o.remotePath === '' ? '.' : o.remotePath;
  const host = /^[A-Za-z0-9][A-Za-z0-9.-]*$/.test(o.peer.name) ? o.peer.name : 'peer';
  const delay = o.delayUpdates ?? true;
  return [
    '-a',
    '--stats',
    '--no-human-readable',
    `--timeout=${o.timeoutSeconds ?? 300}`,
    ...((o.partial ?? true) ? ['--partial', `--partial-dir=${PARTIAL_DIR}`] : []),
    ...(delay ? ['--delay-updates'] : []),
    ...(o.delete ? [delay ? '--delete-delay' : '--delete'] : []),
    ...(o.checksum ? ['--checksum'] : []),
    ...(o.compress ? ['-z'] : []),
    ...(o.stripSetid ? ['--chmod=Fug-s'] : []),
    ...(o.listEntries ? ['-ii', `--out-format=${ENTRY_PREFIX}%i %n`] : []),
    ...(o.rateLimit !== undefined ? [`--bwlimit=${bwlimitKiB(o.rateLimit)}`] : []),
    ...(o.progress ? ['--info=progress2'] : []),
    '-e',
    rsh.map(rshWord).join(' '),
    '--',
    `${host}:${remote.startsWith(':') ? `./${remote}` : remote}`,
    o.localPath,
  ];
}

/**
 * Pulls `remotePath` of tree `tree` from the peer into `localPath` with the
 * system rsync, tunnelled through the peer channel (`canopy peer-rsh`).
 * Resolves with rsync's figures when it exits 0 or 24. Throws the peer's
 * refusal (TRANSFER_PEER_FORBIDDEN, AGENT_CERT_REFUSED, ... as peer-rsh
 * reported it), a link failure (TRANSFER_PEER_LOST), INPUT_NOT_FOUND when
 * rsync is not installed, or the signal's reason; each names the peer and
 * carries rsync's exit code and stderr.
 */
export async function syncFromPeer(o: SyncFromPeerOptions): Promise<SyncResult> {
  o.signal?.throwIfAborted();
  const argv = rsyncClientArgv(o);
  await mkdir(dirname(o.localPath), { recursive: true });
  const rsync = o.rsyncPath ?? 'rsync';
  const child = spawn(rsync, argv, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, LC_ALL: 'C' },
  });
  const out = tail(child.stdout);
  const err = tail(child.stderr);
  const entries = o.listEntries ? entryReader(child.stdout) : undefined;
  if (o.progress) {
    const report = o.progress;
    const reader = new Progress2Reader();
    child.stdout.on('data', (d: Buffer) => {
      const bytes = reader.push(d.toString('latin1'));
      if (bytes !== undefined) report({ bytes });
    });
  }
  let killTimer: NodeJS.Timeout | undefined;
  const onAbort = () => {
    child.kill('SIGTERM');
    killTimer = setTimeout(() => child.kill('SIGKILL'), KILL_GRACE_MS);
    killTimer.unref();
  };
  o.signal?.addEventListener('abort', onAbort, { once: true });
  const exit = await new Promise<{ code: number | null; signal: string | null; error?: Error }>((resolve) => {
    child.once('error', (error) => resolve({ code: null, signal: null, error }));
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  o.signal?.removeEventListener('abort', onAbort);
  clearTimeout(killTimer);
  const where = `peer ${o.peer.name} (${o.peer.host}:${o.peer.port})`;
  if (exit.error) {
    throw new CanopyError(
      'INPUT_NOT_FOUND',
      `cannot run ${rsync} to pull tree ${o.tree} from ${where}: ${exit.error.message}; install rsync on this host`,
      { peer: o.peer.name, tree: o.tree, cause: exit.error },
    );
  }
  if (o.signal?.aborted) throw o.signal.reason;
  const stderr = err();
  const result = {
    ...parseRsyncStats(out()),
    exitCode: exit.code ?? 255,
    stderr,
    argv,
    ...(entries ? { entries: entries() } : {}),
  };
  if (exit.code === 0 || exit.code === 24) return result;
  throw syncError(o, where, result, exit.signal);
}

function syncError(o: SyncFromPeerOptions, where: string, r: SyncResult, signal: string | null): CanopyError {
  const fields = {
    peer: o.peer.name,
    tree: o.tree,
    path: o.remotePath ?? '.',
    exitCode: r.exitCode,
    stderr: r.stderr,
  };
  const remote = parseRshError(r.stderr);
  // peer-rsh's message already names the peer, its address and the tree.
  if (remote) return new CanopyError(remote.code, remote.message, fields);
  const how = signal ? `was killed by ${signal}` : `exited with code ${r.exitCode}`;
  const lines = r.stderr.trim().split('\n');
  // A crashed peer-rsh prints a stack: its first line says what happened, the frames do not.
  const crash = lines.find((l) => l.startsWith('canopy: internal error:'));
  const last = [crash, ...lines.filter((l) => !/^\s+at /.test(l)).slice(-3)].filter(Boolean).join(' | ');
  const hint = LINK_FAILURES.has(r.exitCode)
    ? 'the link or the peer failed: pull again (the partial file resumes) or from another peer'
    : TOO_OLD.test(r.stderr)
      ? `this host's rsync is too old for ${r.argv.find((a) => a.startsWith('--info=')) ?? 'these options'} ` +
        '(rsync 3.1.0 or later is needed): upgrade rsync on this host'
      : 'see the message; the partial file, if any, resumes on the next pull';
  return new CanopyError(
    LINK_FAILURES.has(r.exitCode) ? PEER_CODES.lost : RSYNC_FAILED,
    `rsync pulling ${o.remotePath ?? '.'} of tree ${o.tree} from ${where} ${how} (${last || 'no message'}); ${hint}`,
    fields,
  );
}

/** What an rsync older than 3.1.0 says about `--info=progress2` (and `--no-human-readable`). */
const TOO_OLD = /--(info|no-human-readable)\S*: unknown option/;

/**
 * One `--info=progress2` line: bytes done (plain with --no-human-readable;
 * commas tolerated), the percentage and a space, then rate and time:
 * `      1048576  20%    1.00MB/s    0:00:03 (xfr#1, to-chk=3/5)`.
 */
const PROGRESS2 = /^\s*(\d[\d,]*)\s+\d{1,3}%\s/;
/** A piece of output this long without a line end is no progress line: dropped. */
const MAX_LINE = 4096;

/**
 * Reads rsync's `--info=progress2` lines out of its standard output as it
 * comes, in pieces cut anywhere. rsync rewrites the line in place: each
 * starts with a carriage return and is only ended by the next one, a second
 * later, so an unended piece is read too once it holds a whole figure (the
 * percentage after it says so). Other lines (--stats) are skipped. Reports
 * only growth: the count never goes back.
 */
export class Progress2Reader {
  private partial = '';
  private best = -1;

  /** Feeds output; returns the bytes done when the count grew, else undefined. */
  push(text: string): number | undefined {
    const pieces = (this.partial + text).split(/[\r\n]/);
    this.partial = pieces.at(-1) ?? '';
    if (this.partial.length > MAX_LINE) this.partial = '';
    let grew: number | undefined;
    for (const piece of pieces) {
      const m = PROGRESS2.exec(piece);
      if (!m) continue;
      const n = Number((m[1] as string).replaceAll(',', ''));
      if (Number.isSafeInteger(n) && n > this.best) {
        this.best = n;
        grew = n;
      }
    }
    return grew;
  }
}

/** rsync's --stats figures (numbers without separators: --no-human-readable); zero for what is missing. */
export function parseRsyncStats(text: string): Omit<SyncResult, 'exitCode' | 'stderr' | 'argv'> {
  const n = (label: string) => {
    const m = new RegExp(`^${label}: ([\\d,.]+)`, 'm').exec(text);
    return m ? Number((m[1] as string).replace(/[,.]/g, '')) : 0;
  };
  return {
    files: n('Number of regular files transferred'),
    filesTotal: n('Number of files'),
    bytesReceived: n('Total bytes received'),
    bytesSent: n('Total bytes sent'),
    literalBytes: n('Literal data'),
    matchedBytes: n('Matched data'),
    totalFileSize: n('Total file size'),
  };
}

// --- how peer-rsh tells syncFromPeer what failed (through rsync's stderr)

const RSH_ERROR = /^canopy peer-rsh: ([A-Z][A-Z0-9_]{0,63}): (.*)$/m;

/** The line `canopy peer-rsh` writes to stderr when it fails: the code, then the message. */
export function formatRshError(err: CanopyError): string {
  return `canopy peer-rsh: ${err.code}: ${err.message.replace(/\s*\n\s*/g, ' ')}\n`;
}

/** The first peer-rsh failure in rsync's stderr, with its code (unknown codes as TRANSFER_PEER_PROTOCOL). */
export function parseRshError(stderr: string): { code: ErrorCode; message: string } | undefined {
  const m = RSH_ERROR.exec(stderr);
  if (!m) return undefined;
  const code = Object.hasOwn(CODES, m[1] as string) ? (m[1] as ErrorCode) : PEER_CODES.protocol;
  return { code, message: m[2] as string };
}

/** A word of rsync's --rsh command line: rsync splits it at spaces, honouring quotes ('' inside is a quote). */
function rshWord(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./[\]-]+$/.test(word) ? word : `'${word.replaceAll("'", "''")}'`;
}

/** Collects the last OUTPUT_TAIL bytes of a stream; returns a reader of what was collected. */
function tail(stream: NodeJS.ReadableStream): () => string {
  let kept: Buffer[] = [];
  let size = 0;
  stream.on('data', (d: Buffer) => {
    kept.push(d);
    size += d.length;
    while (size - (kept[0]?.length ?? 0) >= OUTPUT_TAIL && kept.length > 1) size -= kept.shift()?.length ?? 0;
  });
  return () => {
    const all = Buffer.concat(kept);
    kept = [all];
    return all.subarray(Math.max(0, all.length - OUTPUT_TAIL)).toString('utf8');
  };
}
