/**
 * The push file (YAML) and what the CLI sends for it: the templates
 * (every file in the directories of the templates it names, so includes and
 * imports resolve) and the plain `src:` files, base64. `src:` paths are
 * relative to the push file's directory; template names to the template
 * root (`templates:`, default that same directory), where includes and
 * imports resolve too, as in an Ansible role's templates/. Neither may leave
 * its directory. A `src:` file above `dist_above` (default 8 MiB) is not
 * sent: the request names it by its absolute path, and the coordinator
 * (on whose machine it must then be, as for `canopy dist`) distributes it
 * peer to peer.
 *
 *   targets: role=web                 # or a list
 *   templates: templates              # the template root (optional)
 *   files:
 *     - template: nginx.conf.njk        # relative to the template root
 *       dest: /etc/nginx/nginx.conf   # may use {{ inventory_hostname }} etc.
 *       mode: "0644"
 *       owner: root                   # group likewise
 *       validate: nginx -t -c %s
 *       backup: true
 *     - src: files/logrotate.conf
 *       dest: /etc/logrotate.d/app
 *   notify: systemctl reload nginx
 *   run_as: deploy                    # validate and notify run as (optional; the agent's run_as decides)
 *   timeout: 60s                      # per validate / notify (optional)
 *   dist_above: 8M                    # src files larger than this go peer to peer (optional)
 */
import { type Dirent, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, isAbsolute, join, normalize, posix, relative, resolve, sep } from 'node:path';
import { ACCOUNT_RE, parseDuration, parseSize } from '../agent/config.js';
import { CanopyError } from '../errors/index.js';
import { PUSH_BODY_LIMIT } from '../protocol/limits.js';
import { didYouMean, formatPos, isMapping, YamlSource } from '../render/index.js';
import { bytes } from './dist-progress.js';

/**
 * A file sent with the push goes to the agents over their control channel (16 MiB messages,
 * base64), up to this size: the default, and the largest, `dist_above`.
 */
export const MAX_INLINE_BYTES = 8 * 1024 * 1024;

const TOP_KEYS = [
  'targets',
  'templates',
  'files',
  'notify',
  'run_as',
  'timeout',
  'concurrency',
  'dist_above',
] as const;
const FILE_KEYS = ['template', 'src', 'dest', 'mode', 'owner', 'group', 'validate', 'backup'] as const;
const MAX_TEMPLATE_FILES = 2000;
const MAX_TEMPLATE_BYTES = 1024 * 1024;

export interface PushFileEntry {
  template?: string;
  src?: string;
  dest: string;
  mode?: string;
  owner?: string;
  group?: string;
  validate?: string;
  backup?: boolean;
}

export interface PushFileSpec {
  path: string;
  /** Absolute: where template names (and their includes) resolve. */
  templateRoot: string;
  targets: string[];
  files: PushFileEntry[];
  notify?: string;
  /** The account validate and notify run as (each agent checks it against its run_as). */
  runAs?: string;
  /** Seconds. */
  timeout?: number;
  concurrency?: number;
  /** Bytes: src files larger than this go peer to peer. */
  distAbove?: number;
}

export function readPushFile(path: string): PushFileSpec {
  const src = YamlSource.read(path, '1.2', 'PUSH_FILE');
  const fail = (keyPath: (string | number)[], message: string): never => {
    const pos = src.posOf(keyPath);
    throw new CanopyError('PUSH_FILE', `${formatPos(pos)}: ${message}`, {
      file: path,
      line: pos.line,
      column: pos.column,
    });
  };
  const top = src.value;
  if (!isMapping(top)) return fail([], 'a push file is a mapping with targets: and files:');
  for (const k of Object.keys(top)) {
    if (!(TOP_KEYS as readonly string[]).includes(k)) {
      fail([k], `unknown key "${k}"${didYouMean(k, TOP_KEYS)} (known: ${TOP_KEYS.join(', ')})`);
    }
  }
  const targets = typeof top.targets === 'string' ? [top.targets] : top.targets;
  if (!Array.isArray(targets) || targets.length === 0 || !targets.every((t) => typeof t === 'string' && t)) {
    fail(['targets'], 'targets: must be a target (all, a host, a group, role=web) or a list of them');
  }
  if (!Array.isArray(top.files) || top.files.length === 0) {
    fail(['files'], 'files: must be a list of {template or src, dest}');
  }
  const files = (top.files as unknown[]).map((f, i) => fileEntry(f, i, fail));
  const base = dirname(resolve(path));
  if (top.templates !== undefined && (typeof top.templates !== 'string' || !top.templates)) {
    fail(['templates'], 'templates: must be a directory (relative to the push file)');
  }
  const templateRoot = resolve(base, (top.templates as string | undefined) ?? '.');
  const spec: PushFileSpec = { path, templateRoot, targets: targets as string[], files };
  if (top.notify !== undefined) {
    if (typeof top.notify !== 'string' || !top.notify.trim())
      fail(['notify'], 'notify: must be a shell command');
    spec.notify = top.notify as string;
  }
  if (top.run_as !== undefined) {
    if (typeof top.run_as !== 'string' || !ACCOUNT_RE.test(top.run_as))
      fail(['run_as'], 'run_as: must be an account name (validate and notify run as it)');
    spec.runAs = top.run_as as string;
  }
  if (top.timeout !== undefined) spec.timeout = seconds(top.timeout, ['timeout'], fail);
  if (top.concurrency !== undefined) {
    if (!Number.isInteger(top.concurrency) || (top.concurrency as number) < 1) {
      fail(['concurrency'], 'concurrency: must be a positive whole number');
    }
    spec.concurrency = top.concurrency as number;
  }
  if (top.dist_above !== undefined) {
    try {
      spec.distAbove = distAbove(top.dist_above as string | number, 'dist_above');
    } catch (err) {
      fail(['dist_above'], (err as Error).message);
    }
  }
  return spec;
}

/**
 * The size above which a src file goes peer to peer: "512K", "8M", a number of bytes, or 0 (every
 * src file). At most MAX_INLINE_BYTES, since a smaller file would still go over the control channel.
 */
export function distAbove(text: string | number, what: string): number {
  const n = text === 0 || text === '0' ? 0 : parseSize(text, what);
  if (n > MAX_INLINE_BYTES) {
    throw new CanopyError(
      'USAGE',
      `${what}: ${text} is more than 8M, the most a file sent over the agents' control channel may have; larger src files always go peer to peer`,
    );
  }
  return n;
}

type Fail = (keyPath: (string | number)[], message: string) => never;

function fileEntry(f: unknown, i: number, fail: Fail): PushFileEntry {
  const at = (k?: string) => (k === undefined ? ['files', i] : ['files', i, k]);
  if (!isMapping(f)) return fail(at(), `files[${i}] must be a mapping with template or src, and dest`);
  for (const k of Object.keys(f)) {
    if (!(FILE_KEYS as readonly string[]).includes(k)) {
      fail(
        at(k),
        `unknown key "${k}" in files[${i}]${didYouMean(k, FILE_KEYS)} (known: ${FILE_KEYS.join(', ')})`,
      );
    }
  }
  if ((f.template === undefined) === (f.src === undefined)) {
    fail(at(), `files[${i}] needs exactly one of template: (rendered per host) and src: (copied as is)`);
  }
  const entry: PushFileEntry = { dest: '' };
  for (const k of ['template', 'src', 'dest', 'owner', 'group', 'validate'] as const) {
    const v = f[k];
    if (v === undefined) continue;
    if (typeof v !== 'string' || v === '') fail(at(k), `${k}: must be a non-empty string`);
    entry[k] = v as string;
  }
  if (!entry.dest) fail(at(), `files[${i}] needs dest: (the absolute path on the host)`);
  if (!entry.dest.startsWith('/') && !entry.dest.startsWith('{')) {
    fail(at('dest'), `dest: "${entry.dest}" must be an absolute path`);
  }
  if (f.mode !== undefined) entry.mode = mode(f.mode, at('mode'), fail);
  if (f.backup !== undefined) {
    if (typeof f.backup !== 'boolean') fail(at('backup'), 'backup: must be true or false');
    entry.backup = f.backup as boolean;
  }
  if (entry.validate !== undefined && !entry.validate.includes('%s')) {
    fail(at('validate'), 'validate: must contain %s (replaced by the path of the file to check)');
  }
  return entry;
}

/**
 * A quoted octal string ("0644" or "644"). An unquoted number is refused: YAML 1.2 reads 0644 as
 * 644 and 0o644 as 420, and YAML 1.1 (Ansible) reads 0644 as 420 — which one the writer meant
 * cannot be known, and a wrong mode is silent.
 */
function mode(v: unknown, at: (string | number)[], fail: Fail): string {
  if (typeof v === 'number') {
    return fail(at, `mode: ${v} is a number; quote it as a string, e.g. mode: "0644"`);
  }
  if (typeof v !== 'string' || !/^0?[0-7]{3,4}$/.test(v)) {
    return fail(at, `mode: ${JSON.stringify(v)} is not an octal mode such as "0644"`);
  }
  return v.padStart(4, '0');
}

function seconds(v: unknown, at: (string | number)[], fail: Fail): number {
  if (typeof v === 'number' && v > 0 && Number.isFinite(v)) return v;
  if (typeof v === 'string') {
    try {
      return parseDuration(v, 'timeout') / 1000;
    } catch (err) {
      return fail(at, (err as Error).message);
    }
  }
  return fail(at, 'timeout: must be a duration such as 60s or 2m');
}

/** A relative path inside `base`, or a PUSH_FILE error naming the push file. */
function inside(base: string, name: string, pushFile: string, what: string, relTo: string): string {
  const full = resolve(base, name);
  const rel = relative(base, full);
  if (isAbsolute(name) || rel === '' || rel.startsWith(`..${sep}`) || rel === '..') {
    throw new CanopyError(
      'PUSH_FILE',
      `${pushFile}: ${what} "${name}" must be a path inside ${base} (relative to ${relTo})`,
      { file: pushFile },
    );
  }
  return rel.split(sep).join('/');
}

/**
 * The templates to send: every file in the directories of the named templates, and what they
 * include, import or extend by a literal name from elsewhere in the template root.
 */
export function collectTemplates(spec: PushFileSpec): Record<string, string> {
  const base = spec.templateRoot;
  const out: Record<string, string> = {};
  const dirs = new Set<string>();
  for (const f of spec.files) {
    if (f.template === undefined) continue;
    const rel = inside(base, f.template, spec.path, 'template', 'the template root');
    f.template = rel;
    try {
      // A fifo or a device would block the read (or never end): only regular files are templates.
      if (!statSync(join(base, rel)).isFile()) throw new Error('not a regular file');
      out[rel] = readFileSync(join(base, rel), 'utf8');
    } catch (err) {
      throw new CanopyError('INPUT_NOT_FOUND', `${spec.path}: template ${rel}: ${(err as Error).message}`, {
        file: spec.path,
        template: rel,
      });
    }
    dirs.add(dirname(rel));
  }
  for (const dir of dirs) walk(base, dir, out);
  addReferenced(base, out);
  return out;
}

function walk(base: string, dir: string, out: Record<string, string>): void {
  let entries: Dirent[];
  try {
    entries = readdirSync(join(base, dir), { withFileTypes: true });
  } catch {
    return; // unreadable: its files are not sent (an include of one fails naming it)
  }
  for (const entry of entries) {
    if (entry.name.startsWith('.')) continue;
    const rel = normalize(dir === '.' ? entry.name : `${dir}/${entry.name}`);
    if (entry.isDirectory()) walk(base, rel, out);
    else if (!(rel in out)) {
      if (Object.keys(out).length >= MAX_TEMPLATE_FILES) return;
      const text = readTemplate(base, rel);
      if (text !== undefined) out[rel] = text;
    }
  }
}

/**
 * A file beside the templates, or undefined when it is not one to send: not a regular file (a
 * dangling or looping symlink, a fifo), larger than MAX_TEMPLATE_BYTES, or unreadable.
 */
function readTemplate(base: string, rel: string): string | undefined {
  try {
    const st = statSync(join(base, rel), { throwIfNoEntry: false });
    if (!st?.isFile() || st.size > MAX_TEMPLATE_BYTES) return undefined;
    return readFileSync(join(base, rel), 'utf8');
  } catch {
    return undefined;
  }
}

/** `{% include "x" %}`, import, from ... import, extends: a name given as a string literal. */
const REFERENCE = /\{%-?\s*(?:include|import|extends|from)\s+(["'])([^"'\n]+)\1/g;

/**
 * Adds the templates that the collected ones name literally from elsewhere in the template root
 * (names are relative to the root; "./" and "../" to the naming template), and theirs in turn.
 */
function addReferenced(base: string, out: Record<string, string>): void {
  const queue = Object.keys(out);
  for (let name = queue.pop(); name !== undefined; name = queue.pop()) {
    for (const m of (out[name] ?? '').matchAll(REFERENCE)) {
      const ref = m[2] ?? '';
      const rel = posix.normalize(
        ref.startsWith('./') || ref.startsWith('../') ? posix.join(posix.dirname(name), ref) : ref,
      );
      if (rel in out || rel === '..' || rel.startsWith('../') || posix.isAbsolute(rel)) continue;
      if (Object.keys(out).length >= MAX_TEMPLATE_FILES) return;
      const text = readTemplate(base, rel);
      if (text === undefined) continue;
      out[rel] = text;
      queue.push(rel);
    }
  }
}

/** A src file that goes peer to peer: named in the request by its absolute path, not sent. */
export interface DistributedSource {
  /** As the push file gives it, relative to the push file. */
  src: string;
  path: string;
  size: number;
}

/**
 * The plain files to send, base64, and the ones larger than `distAbove`, whose entries now name
 * them by absolute path (the coordinator distributes those peer to peer from its own machine).
 */
export function collectSources(
  spec: PushFileSpec,
  distAbove: number,
): { sources: Record<string, string>; distributed: DistributedSource[] } {
  const base = dirname(resolve(spec.path));
  const sources: Record<string, string> = {};
  const distributed: DistributedSource[] = [];
  for (const f of spec.files) {
    if (f.src === undefined) continue;
    const rel = inside(base, f.src, spec.path, 'src', 'the push file');
    f.src = rel;
    let size: number;
    try {
      const st = statSync(join(base, rel));
      if (!st.isFile()) throw new Error('not a regular file');
      size = st.size;
    } catch (err) {
      throw new CanopyError('INPUT_NOT_FOUND', `${spec.path}: src ${rel}: ${(err as Error).message}`, {
        file: spec.path,
        path: rel,
      });
    }
    if (size > distAbove) {
      f.src = join(base, rel);
      if (!distributed.some((d) => d.path === f.src)) distributed.push({ src: rel, path: f.src, size });
      continue;
    }
    sources[rel] = readFileSync(join(base, rel)).toString('base64');
  }
  return { sources, distributed };
}

/**
 * Fails before anything is sent when the push request (`bodyBytes` of JSON) is larger than the
 * API takes in one push, naming the push file, its largest parts as sent, and what to change.
 */
export function checkPushSize(
  spec: PushFileSpec,
  bodyBytes: number,
  templates: Record<string, string>,
  sources: Record<string, string>,
): void {
  if (bodyBytes <= PUSH_BODY_LIMIT) return;
  const largest = [
    ...Object.entries(sources).map(([name, b64]) => ({ what: `src ${name}`, bytes: b64.length })),
    ...Object.entries(templates).map(([name, text]) => ({
      what: `template ${name}`,
      bytes: Buffer.byteLength(text),
    })),
  ]
    .sort((a, b) => b.bytes - a.bytes)
    .slice(0, 3)
    .map((p) => `${p.what} ${bytes(p.bytes)}`);
  throw new CanopyError(
    'PUSH_TOO_LARGE',
    `${spec.path}: the push request would be ${bytes(bodyBytes)}, more than the ${bytes(PUSH_BODY_LIMIT)} ` +
      `the coordinator takes in one push (largest as sent: ${largest.join(', ')}). Set dist_above lower ` +
      `(e.g. dist_above: 1M) so larger src files go peer to peer, keep files no template includes out of ` +
      `the templates' directories (every file beside a template is sent), or split the push`,
    { file: spec.path, bytes: bodyBytes, limit: PUSH_BODY_LIMIT },
  );
}
