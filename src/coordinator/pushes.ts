/**
 * Config pushes on the coordinator: render every file for every target
 * host, then hand the run manager one push task per host (destinations and
 * MD5s only). The content stays here, in memory, deduplicated by MD5, until
 * an agent asks for the files that differ on its host; a warm push sends no
 * content at all. Results come back with the old content of changed files
 * when a diff was asked for; they are turned into unified diffs here, with
 * the host's secret values masked, before anything is stored or shown.
 *
 * Large `src:` files (the request names them by an absolute path on this
 * machine instead of sending them) never go over the control channel. Before
 * an applying push starts, push-staging.ts has them distributed, peer to
 * peer, beside their destinations as staged copies on the hosts where they
 * differ. The push task then installs a staged copy like any other file
 * (validate, backup, rename, notify), so a large file has exactly the
 * semantics of a small one; a host whose distribution failed reports that
 * file as failed, with the reason, and is not notified.
 *
 * Rendered content and task variables are never written to the store: after
 * a coordinator restart, a host that still needs content gets a clear
 * "re-run the push" failure (its files stay as they were).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, normalize } from 'node:path';
import { createTwoFilesPatch } from 'diff';
import type { Logger } from 'pino';
import { CanopyError, isCanopyError } from '../errors/index.js';
import {
  type FileOutcome,
  type PushFile,
  type PushSpec,
  parseTaskId,
  type TaskResult,
} from '../protocol/index.js';
import { type Inventory, TemplateEngine, VarResolver } from '../render/index.js';
import { md5Of } from '../transfer/index.js';
import type { PushRequest } from './api-schemas.js';
import type { ContentSource } from './fleet.js';
import {
  type Distributor,
  type HostStaging,
  type LargeFile,
  notStaged,
  type PathSource,
  PushStaging,
} from './push-staging.js';
import { newRunId, type RunManager } from './runs.js';
import { maskDiff, maskSecrets, secretValues } from './secrets.js';
import type { PushRunSpec, RunRecord } from './store.js';

// Where a staged copy goes and how hosts share a distribution: push-staging.ts owns them; re-exported
// for the tests that check the agent computes the same path.
export { type Distributor, distributionGroups, stagedPathFor } from './push-staging.js';

/**
 * Content that goes over the control channel (templates, and src files sent in the request) is
 * capped at this size per file; larger src files go peer to peer (by path, see the module comment).
 */
export const MAX_PUSH_FILE_BYTES = 8 * 1024 * 1024;
const DEFAULT_TIMEOUT_S = 60;
const MAX_CONTENT_MESSAGE_BYTES = 15 * 1024 * 1024;
const MAX_DIFF_TEXT = 256 * 1024;

export interface RenderFailure {
  host: string;
  /** The push file's template or src name. */
  file: string;
  code: string;
  message: string;
  line?: number;
  variable?: string;
}

/** A src file sent in the request (goes over the control channel). */
interface InlineSource {
  data: Buffer;
}

type Source = InlineSource | PathSource;

interface HeldPush {
  byMd5: Map<string, Buffer>;
  /** src files on this machine, by MD5: never sent inline. */
  byPath: Map<string, PathSource>;
  plans: Map<string, PushSpec>;
  secrets: Map<string, string[]>;
  staging: Map<string, HostStaging>;
}

export interface PushManagerOptions {
  runs: RunManager;
  /** Distributes the src files named by path to the hosts that need them. */
  dists: Distributor;
  logger: Logger;
  /** Counts content bytes sent to agents (a warm push sends none). */
  onContent?: (bytes: number) => void;
}

export class PushManager implements ContentSource {
  private readonly runs: RunManager;
  private readonly log: Logger;
  private readonly held = new Map<string, HeldPush>();
  private readonly onContent: ((bytes: number) => void) | undefined;
  /** The src files named by path: their MD5s, and their staged copies before an applying push. */
  private readonly staging: PushStaging;

  constructor(opts: PushManagerOptions) {
    this.runs = opts.runs;
    this.log = opts.logger;
    this.onContent = opts.onContent;
    this.staging = new PushStaging({ runs: opts.runs, dists: opts.dists, logger: opts.logger });
  }

  /**
   * Renders and starts a push to `hosts`. Throws PUSH_RENDER (with `errors`) when a host fails to
   * render and keepGoing is off; with keepGoing those hosts start out `failed`. An applying push
   * with src files named by path returns only once they are distributed (see `stage`).
   */
  async create(
    req: PushRequest,
    hosts: string[],
    inventory: Inventory | undefined,
  ): Promise<{ record: RunRecord; failures: RenderFailure[] }> {
    const mode = req.mode ?? 'apply';
    const sources = await this.decodeSources(req);
    const rendered = renderAll(req, hosts, inventory, sources);
    if (rendered.failures.length > 0 && !req.keepGoing) {
      this.log.warn(
        { hosts: new Set(rendered.failures.map((f) => f.host)).size, first: rendered.failures[0]?.message },
        'push refused: hosts failed to render',
      );
      throw new CanopyError('PUSH_RENDER', renderSummary(rendered.failures), {
        errors: rendered.failures,
      });
    }
    const timeoutMs = Math.ceil((req.timeout ?? DEFAULT_TIMEOUT_S) * 1000);
    const plans = new Map<string, PushSpec>();
    for (const [host, files] of rendered.files) {
      plans.set(host, {
        files,
        mode,
        diff: req.diff ?? false,
        ...(req.notify ? { notify: req.notify } : {}),
        ...(req.runAs ? { runAs: req.runAs } : {}),
        timeoutMs,
      });
    }
    const failed = new Map<string, string>();
    for (const f of rendered.failures) {
      failed.set(f.host, `${failed.has(f.host) ? `${failed.get(f.host)}\n` : ''}${f.file}: ${f.message}`);
    }
    const spec: PushRunSpec = {
      kind: 'push',
      targets: req.targets,
      ...(req.limit ? { limit: req.limit } : {}),
      mode,
      diff: req.diff ?? false,
      timeoutMs,
      concurrency: req.concurrency ?? Math.max(1, hosts.length),
      files: req.files.map((f) => ({ source: f.template ?? f.src ?? '', dest: f.dest })),
      ...(req.notify ? { notify: req.notify } : {}),
    };
    const id = newRunId(Date.now());
    const byPath = new Map([...sources.values()].flatMap((s) => ('path' in s ? [[s.md5, s] as const] : [])));
    this.log.info(
      {
        push: id,
        mode,
        hosts: hosts.length,
        distinctContents: rendered.byMd5.size,
        peerToPeer: byPath.size,
        renderFailures: rendered.failures.length,
      },
      'push rendered',
    );
    const staging =
      mode === 'apply' && byPath.size > 0
        ? await this.staging.stage(id, req, rendered.files, largeFiles(req, sources), timeoutMs)
        : new Map<string, HostStaging>();
    this.held.set(id, { byMd5: rendered.byMd5, byPath, plans, secrets: rendered.secrets, staging });
    try {
      const record = await this.runs.create(spec, hosts, { id, plans, failed });
      return { record, failures: rendered.failures };
    } catch (err) {
      this.held.delete(id);
      throw err;
    }
  }

  /** An agent's request for the content of its push task's files. */
  content(
    agent: string,
    taskId: string,
    indexes: number[],
  ): { files: { index: number; data: string }[]; error?: string } {
    const id = parseTaskId(taskId);
    if (!id || id.host !== agent) return { files: [], error: `task ${taskId} is not this agent's` };
    const held = this.held.get(id.runId);
    const plan = held?.plans.get(agent);
    if (!held || !plan) {
      return {
        files: [],
        error:
          "the coordinator no longer holds this push's content (it restarted, or the push finished); rendered content and task variables are kept only in memory: re-run the push",
      };
    }
    const files: { index: number; data: string }[] = [];
    let bytes = 0;
    let raw = 0;
    for (const index of indexes) {
      const file = plan.files[index];
      const data = file ? held.byMd5.get(file.md5) : undefined;
      const byPath = file ? held.byPath.get(file.md5) : undefined;
      if (!data && byPath) return { files: [], error: notStaged(byPath, held.staging.get(agent), index) };
      if (!data) return { files: [], error: `push task ${taskId} has no file ${index}` };
      bytes += Math.ceil(data.length / 3) * 4;
      raw += data.length;
      // The agent's channel takes messages up to 16 MiB: an answer that large would cut it.
      if (bytes > MAX_CONTENT_MESSAGE_BYTES) {
        return {
          files: [],
          error: `asked for ${indexes.length} files at once, more than one message carries; ask for fewer`,
        };
      }
      files.push({ index, data: data.toString('base64') });
    }
    this.onContent?.(raw);
    return { files };
  }

  /** Turns returned old content into a masked unified diff; masks secrets in output and errors. */
  decorate(run: RunRecord, host: string, result: TaskResult): TaskResult {
    if (run.spec.kind !== 'push') return result;
    const held = this.held.get(run.id);
    const secrets = held?.secrets.get(host) ?? [];
    const plan = held?.plans.get(host);
    const files = result.files?.map((f, i) => this.withDiff(f, plan?.files[i], held, secrets));
    const mask = (s: string) => maskSecrets(s, secrets);
    const transfer = held?.staging.get(host)?.transfer;
    return {
      ...result,
      stdout: mask(result.stdout),
      stderr: mask(result.stderr),
      ...(result.error !== undefined ? { error: mask(result.error) } : {}),
      ...(files ? { files } : {}),
      // What the host fetched peer to peer for this push (its staged copies).
      ...(transfer && !result.transfer ? { transfer } : {}),
    };
  }

  private withDiff(
    f: FileOutcome,
    file: PushFile | undefined,
    held: HeldPush | undefined,
    secrets: string[],
  ): FileOutcome {
    const { old, ...rest } = f;
    const out: FileOutcome = { ...rest, ...(rest.error ? { error: maskSecrets(rest.error, secrets) } : {}) };
    if (old === undefined || !f.content) return out;
    const next = file ? held?.byMd5.get(file.md5) : undefined;
    if (!next && file && held?.byPath.has(file.md5))
      return { ...out, oldOmitted: 'the new content is a large file, sent peer to peer' };
    if (!next) return { ...out, oldOmitted: 'the coordinator no longer holds the new content' };
    if (next.length > MAX_DIFF_TEXT || next.includes(0))
      return { ...out, oldOmitted: 'the new content is binary or large' };
    const patch = createTwoFilesPatch(f.dest, f.dest, old, next.toString('utf8'), 'on host', 'pushed', {
      context: 3,
    });
    return { ...out, diff: maskDiff(patch, secrets) };
  }

  /** The run finished: its content is no longer needed. */
  finished(run: RunRecord): void {
    this.held.delete(run.id);
  }

  /**
   * The request's src files: sent content (base64, at most MAX_PUSH_FILE_BYTES), or an absolute
   * path on this machine that is not among the sent ones (hashed here, distributed peer to peer).
   */
  private async decodeSources(req: PushRequest): Promise<Map<string, Source>> {
    const out = new Map<string, Source>();
    for (const [i, f] of req.files.entries()) {
      checkEntry(req, f, i);
      if (f.src === undefined || out.has(f.src)) continue;
      const data = req.sources?.[f.src];
      if (data !== undefined) {
        out.set(f.src, { data: inline(f.src, data) });
        continue;
      }
      if (!isAbsolute(f.src)) {
        throw new CanopyError(
          'PUSH_FILE',
          `files[${i}].src "${f.src}" is not among the request's sources (a src not sent must be an absolute path on the coordinator's machine)`,
          { field: `files.${i}.src` },
        );
      }
      out.set(f.src, await this.staging.pathSource(f.src, i));
    }
    return out;
  }

  /** Pushes waiting for their check or distributions fail now (the coordinator is stopping). */
  close(): void {
    this.staging.close();
  }
}

/** The request's src files named by path (not sent), in the order of its file entries. */
function largeFiles(req: PushRequest, sources: Map<string, Source>): LargeFile[] {
  return req.files.flatMap((f, index) => {
    const source = f.src === undefined ? undefined : sources.get(f.src);
    return source && 'path' in source ? [{ index, source }] : [];
  });
}

interface Rendered {
  files: Map<string, PushFile[]>;
  byMd5: Map<string, Buffer>;
  secrets: Map<string, string[]>;
  failures: RenderFailure[];
}

/** Renders every file for every host; collects every failure instead of stopping at the first. */
function renderAll(
  req: PushRequest,
  hosts: string[],
  inventory: Inventory | undefined,
  sources: Map<string, Source>,
): Rendered {
  const out: Rendered = { files: new Map(), byMd5: new Map(), secrets: new Map(), failures: [] };
  const root = writeTemplates(req);
  try {
    const engine = new TemplateEngine({
      root,
      rootLabel: "the push's template root (the templates and the files beside them that canopy push sent)",
    });
    const resolver = inventory
      ? new VarResolver(inventory, req.vars ? [{ origin: '--var', vars: req.vars }] : [])
      : undefined;
    const baseResolver = inventory && req.vars ? new VarResolver(inventory) : undefined;
    for (const host of hosts) {
      renderHost(req, host, { engine, resolver, baseResolver, inventory, sources }, out);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  return out;
}

interface RenderContext {
  engine: TemplateEngine;
  resolver: VarResolver | undefined;
  /** The inventory's variables without the task's (for secrets the task replaced). */
  baseResolver: VarResolver | undefined;
  inventory: Inventory | undefined;
  sources: Map<string, Source>;
}

function renderHost(req: PushRequest, host: string, ctx: RenderContext, out: Rendered): void {
  const { engine, resolver, baseResolver, inventory, sources } = ctx;
  let vars: Record<string, unknown>;
  try {
    // Ansible's magic variable, so dests and templates can name the host as they do there.
    vars = { inventory_hostname: host, ...(resolver ? resolver.templateVars(host) : {}) };
  } catch (err) {
    out.failures.push(failure(host, '(variables)', err));
    return;
  }
  // Secrets of both the inventory's values and the task's: a --var that replaces a password must
  // not let the old one (still in the host's file) show in the diff.
  const declared = inventory?.secrets ?? [];
  const base = baseResolver?.vars(host);
  out.secrets.set(
    host,
    [...new Set([...secretValues(vars, declared), ...(base ? secretValues(base, declared) : [])])].sort(
      (a, b) => b.length - a.length,
    ),
  );
  const files: PushFile[] = [];
  for (const [i, f] of req.files.entries()) {
    const name = f.template ?? f.src ?? '';
    try {
      const dest = renderDest(engine, i, f.dest, vars, host);
      // Only the shape is checked here: whether the path is allowed is the agent's decision (its roots).
      if (!isAbsolute(dest) || dest.endsWith('/')) {
        throw new CanopyError(
          'PUSH_FILE',
          `dest renders to ${JSON.stringify(dest)}, which is not an absolute file path`,
        );
      }
      const source = f.template ? undefined : sources.get(name);
      if (source && 'path' in source) {
        files.push(pushFile(f, dest, source.md5, source.size));
        continue;
      }
      const content = f.template
        ? Buffer.from(engine.template(f.template).render(vars, host))
        : (source?.data ?? Buffer.alloc(0));
      if (content.length > MAX_PUSH_FILE_BYTES) {
        throw new CanopyError(
          'PUSH_TOO_LARGE',
          `template ${name} renders to ${content.length} bytes for ${host}; rendered files go over the ` +
            `agents' control channel, up to ${MAX_PUSH_FILE_BYTES} bytes, and only src: files go peer to peer ` +
            "(a template's content differs per host): make it smaller, or make it an src: file",
          { template: name },
        );
      }
      const md5 = md5Of(content);
      if (!out.byMd5.has(md5)) out.byMd5.set(md5, content);
      files.push(pushFile(f, dest, md5, content.length));
    } catch (err) {
      out.failures.push(failure(host, name, err));
    }
  }
  if (files.length === req.files.length) out.files.set(host, files);
}

/** A file's dest rendered for a host; an error names files[i].dest, not the engine's name for it. */
function renderDest(
  engine: TemplateEngine,
  i: number,
  text: string,
  vars: Record<string, unknown>,
  host: string,
): string {
  const internal = `${DEST_DIR}/${i}`;
  try {
    return engine.template(internal).render(vars, host);
  } catch (err) {
    if (!isCanopyError(err)) throw err;
    const named = `files[${i}].dest ${JSON.stringify(text)}`;
    throw new CanopyError(err.code, err.message.replaceAll(internal, named), {
      ...err.subject,
      template: `files[${i}].dest`,
    });
  }
}

function pushFile(f: PushRequest['files'][number], dest: string, md5: string, size: number): PushFile {
  return {
    dest,
    md5,
    size,
    ...(f.mode !== undefined
      ? { mode: typeof f.mode === 'string' ? Number.parseInt(f.mode, 8) : f.mode }
      : {}),
    ...(f.owner ? { owner: f.owner } : {}),
    ...(f.group ? { group: f.group } : {}),
    ...(f.validate ? { validate: f.validate } : {}),
    ...(f.backup !== undefined ? { backup: f.backup } : {}),
  };
}

const DEST_DIR = '.canopy-dest';

/** The request's templates (and each file's dest, as a template) in a private directory. */
function writeTemplates(req: PushRequest): string {
  const root = mkdtempSync(join(tmpdir(), 'canopy-push-'));
  try {
    for (const [name, text] of Object.entries(req.templates ?? {})) {
      const n = normalize(name);
      if (isAbsolute(n) || n.startsWith('..') || n.startsWith(DEST_DIR)) {
        throw new CanopyError(
          'PUSH_FILE',
          `template name ${JSON.stringify(name)} must be a relative path inside the push`,
          {
            template: name,
          },
        );
      }
      mkdirSync(dirname(join(root, n)), { recursive: true });
      writeFileSync(join(root, n), text);
    }
    mkdirSync(join(root, DEST_DIR));
    for (const [i, f] of req.files.entries()) writeFileSync(join(root, DEST_DIR, String(i)), f.dest);
  } catch (err) {
    rmSync(root, { recursive: true, force: true });
    throw err;
  }
  return root;
}

/** The shape of one file entry: exactly one of template and src, a template among the sent ones. */
function checkEntry(req: PushRequest, f: PushRequest['files'][number], i: number): void {
  if ((f.template === undefined) === (f.src === undefined)) {
    throw new CanopyError('PUSH_FILE', `files[${i}] must have exactly one of template and src`, {
      field: `files.${i}`,
    });
  }
  if (f.template !== undefined && !(f.template in (req.templates ?? {}))) {
    throw new CanopyError(
      'PUSH_FILE',
      `files[${i}].template "${f.template}" is not among the request's templates`,
      {
        field: `files.${i}.template`,
      },
    );
  }
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** A src file sent in the request; refused unless base64, and above what the control channel carries. */
function inline(name: string, base64: string): Buffer {
  // Buffer.from skips what is not base64: raw text would be installed as garbage.
  if (base64.length % 4 !== 0 || !BASE64.test(base64)) {
    throw new CanopyError(
      'API_BAD_REQUEST',
      `sources["${name}"] is not base64 (RFC 4648, with padding): send each plain file's bytes base64-encoded`,
      { field: `sources.${name}` },
    );
  }
  const data = Buffer.from(base64, 'base64');
  if (data.length > MAX_PUSH_FILE_BYTES) {
    throw new CanopyError(
      'PUSH_TOO_LARGE',
      `src ${name} is ${data.length} bytes; src files sent with the push go over the agents' control ` +
        `channel, up to ${MAX_PUSH_FILE_BYTES} bytes: name a larger file by its absolute path on the ` +
        "coordinator's machine instead (canopy push does so above --dist-above), and it goes peer to peer",
      { path: name },
    );
  }
  return data;
}

function failure(host: string, file: string, err: unknown): RenderFailure {
  if (isCanopyError(err)) {
    const { line, variable } = err.subject;
    return {
      host,
      file,
      code: err.code,
      message: err.message,
      ...(typeof line === 'number' ? { line } : {}),
      ...(typeof variable === 'string' ? { variable } : {}),
    };
  }
  return { host, file, code: 'RENDER_FAILED', message: (err as Error).message };
}

function renderSummary(failures: RenderFailure[]): string {
  const hosts = new Set(failures.map((f) => f.host));
  const first = failures.slice(0, 5).map((f) => `  ${f.host}: ${f.message}`);
  const more = failures.length > 5 ? `\n  ... and ${failures.length - 5} more` : '';
  return `${hosts.size} host(s) failed to render; nothing was pushed (fix the templates or variables, or push the others with --keep-going):\n${first.join('\n')}${more}`;
}
