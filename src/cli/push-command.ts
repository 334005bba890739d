/**
 * `canopy push FILE` and `canopy rollback FILE`: send a push file's
 * templates and files to the coordinator, which renders them per host and
 * has each agent install only what differs; stream a line per host, then
 * group hosts by outcome and by identical diff, and print the totals.
 * Exit 0 only if no host failed.
 */
import type { HostResult } from '../coordinator/index.js';
import { CanopyError } from '../errors/index.js';
import type { FileOutcome } from '../protocol/index.js';
import { deepMerge, parseTaskVars, type TaskVarInput, type VarMap } from '../render/index.js';
import { COMMON_OPTIONS, parse, usage } from './args.js';
import { ApiClient, CLIENT_OPTIONS, clientSettings } from './client.js';
import { bytes } from './dist-progress.js';
import { foldHosts } from './fold-hosts.js';
import { followRun } from './follow.js';
import { type CliIO, type Palette, palette, writeJson } from './io.js';
import {
  checkPushSize,
  collectSources,
  collectTemplates,
  type DistributedSource,
  distAbove,
  MAX_INLINE_BYTES,
  readPushFile,
} from './push-file.js';

export const PUSH_HELP = `usage: canopy push FILE [options]

Renders FILE's templates for every target host (on the coordinator, with
the inventory's layered variables), asks each host's agent for the MD5 of
each destination, and sends only the files that differ. Each file is
installed atomically (temp file, fsync, validate, backup, rename, fsync
dir); notify runs once on hosts where something changed.

options:
  --limit TARGET     only hosts that are also matched by TARGET (repeatable)
  --var KEY=VALUE    a task variable (top layer; YAML value; repeatable)
  --vars-file FILE   task variables from a YAML mapping (repeatable)
  --check            report what would change; write nothing
  --diff             show each changed file's unified diff (hosts with the
                     same diff grouped; secret values masked)
  --keep-going       push to the hosts that rendered when others did not
  --dist-above SIZE  src files larger than SIZE (default 8M, the most; 0: all)
                     go peer to peer instead of with the push: the coordinator
                     reads them on its own machine (run canopy push there),
                     checks which hosts need them and distributes them to
                     those (agents started with --peer-listen) before the
                     push starts; the push file's dist_above: likewise
  --json             the push and every host's result as JSON
  --quiet            no per-host lines while running
  --coordinator URL --token TOKEN --ca FILE   (default: the client config)
Exit 0 only if no host failed; 1 otherwise; 2 for a bad push file.
`;

export const ROLLBACK_HELP = `usage: canopy rollback FILE [--limit TARGET]... [--json]

Restores, on every target host, the newest backup of each of FILE's
destinations (files pushed with "backup: true"), atomically, and runs
notify where something changed. Each rollback goes one backup further back.
`;

type Outcome = 'changed' | 'would change' | 'unchanged' | HostResult['state'];

export function outcomeOf(r: HostResult): Outcome {
  if (r.state !== 'ok') return r.state;
  const files = r.files ?? [];
  if (files.some((f) => f.state === 'changed')) return 'changed';
  if (files.some((f) => f.state === 'would-change')) return 'would change';
  return 'unchanged';
}

export async function pushCommand(argv: string[], io: CliIO): Promise<number> {
  return push(argv, io, 'push');
}

export async function rollbackCommand(argv: string[], io: CliIO): Promise<number> {
  return push(argv, io, 'rollback');
}

async function push(argv: string[], io: CliIO, command: 'push' | 'rollback'): Promise<number> {
  const { values, positionals, taskVars } = parse(command, argv, {
    ...COMMON_OPTIONS,
    ...CLIENT_OPTIONS,
    limit: { type: 'string', multiple: true },
    var: { type: 'string', multiple: true },
    'vars-file': { type: 'string', multiple: true },
    check: { type: 'boolean', default: false },
    diff: { type: 'boolean', default: false },
    'keep-going': { type: 'boolean', default: false },
    'dist-above': { type: 'string' },
    quiet: { type: 'boolean', default: false },
  });
  if (values.help) {
    io.out.write(command === 'push' ? PUSH_HELP : ROLLBACK_HELP);
    return 0;
  }
  const [file, ...extra] = positionals;
  if (!file || extra.length > 0)
    throw usage(command, `give exactly one push FILE (got ${positionals.length})`);
  const spec = readPushFile(file);
  const threshold =
    values['dist-above'] !== undefined
      ? distAbove(values['dist-above'], '--dist-above')
      : (spec.distAbove ?? MAX_INLINE_BYTES);
  const templates = collectTemplates(spec);
  const { sources, distributed } = collectSources(spec, threshold);
  const vars = taskVarMap(taskVars);
  const body = {
    targets: spec.targets,
    ...(values.limit ? { limit: values.limit } : {}),
    files: spec.files,
    ...(spec.notify ? { notify: spec.notify } : {}),
    ...(spec.runAs ? { runAs: spec.runAs } : {}),
    templates,
    sources,
    ...(vars ? { vars } : {}),
    mode: command === 'rollback' ? 'rollback' : values.check ? 'check' : 'apply',
    diff: values.diff,
    keepGoing: values['keep-going'],
    ...(spec.timeout ? { timeout: spec.timeout } : {}),
    ...(spec.concurrency ? { concurrency: spec.concurrency } : {}),
  };
  const json = JSON.stringify(body);
  checkPushSize(spec, Buffer.byteLength(json), templates, sources);
  const api = new ApiClient(clientSettings(values, io));
  const p = palette(io.out, io.env);
  const stream = !values.json && !values.quiet;
  if (stream && distributed.length > 0 && body.mode === 'apply') {
    io.err.write(p.dim(`${peerToPeerNote(distributed, threshold)}\n`));
  }
  const res = await api.requestJson('POST', '/v1/pushes', json);
  if (res.status === 422) throw renderFailed(res.body);
  const created = api.expectOk(res) as {
    id: string;
    hosts: string[];
    deadline: number;
    renderFailures: unknown[];
  };
  const width = Math.min(40, Math.max(4, ...created.hosts.map((h) => h.length)));
  if (stream) io.err.write(p.dim(`${command} ${created.id} to ${created.hosts.length} host(s)\n`));
  const final = await followRun(
    api,
    created,
    (r) => {
      if (!stream) return;
      const o = outcomeOf(r);
      io.out.write(`${r.host.padEnd(width)}  ${paint(p, o)(o.padEnd(12))} ${p.dim(line(r))}\n`);
    },
    (why) => {
      if (stream) io.err.write(p.dim(`lost the event stream (${why}); reconnecting\n`));
    },
  );
  const results = final.results;
  if (values.json) {
    writeJson(io, {
      push: created.id,
      mode: body.mode,
      createdAt: final.run.createdAt,
      finishedAt: final.run.finishedAt ?? null,
      summary: summarize(results),
      results: results.map((r) => ({ ...r, outcome: outcomeOf(r) })),
    });
  } else {
    report(io, p, results, values.diff);
  }
  const failed = results.some((r) => r.state !== 'ok') || results.length !== created.hosts.length;
  return failed ? 1 : 0;
}

/** Why the push takes a while to start: its large files are distributed first. */
export function peerToPeerNote(distributed: DistributedSource[], threshold: number): string {
  const files = distributed.map((d) => `${d.src} (${bytes(d.size)})`).join(', ');
  return (
    `above ${bytes(threshold)}, peer to peer from the coordinator's machine: ${files}; ` +
    'the push starts once the hosts that need them have them'
  );
}

/** The task variables, in command-line order, merged into one mapping (later ones win). */
function taskVarMap(inputs: TaskVarInput[]): Record<string, unknown> | undefined {
  if (inputs.length === 0) return undefined;
  return parseTaskVars(inputs).reduce<VarMap>((acc, s) => deepMerge(acc, s.vars), {});
}

function renderFailed(body: unknown): CanopyError {
  const b = body as {
    message?: string;
    errors?: { host: string; file: string; message: string }[];
  };
  const errors = b.errors ?? [];
  const lines = errors.map((e) => `  ${e.host}: ${e.message}`);
  const hosts = new Set(errors.map((e) => e.host)).size;
  return new CanopyError(
    'PUSH_RENDER',
    `${hosts} host(s) failed to render; nothing was pushed (fix them, or push the others with --keep-going):\n${lines.join('\n')}`,
    { errors },
  );
}

function paint(p: Palette, o: Outcome): (t: string) => string {
  if (o === 'changed' || o === 'would change') return p.yellow;
  if (o === 'unchanged') return p.green;
  if (o === 'unreachable' || o === 'interrupted') return p.yellow;
  return p.red;
}

function line(r: HostResult): string {
  const files = r.files ?? [];
  const changed = files.filter((f) => f.state === 'changed' || f.state === 'would-change').map((f) => f.dest);
  const parts: string[] = [];
  if (changed.length > 0) parts.push(changed.join(' '));
  if (r.transfer?.fetchedBytes) parts.push(`${bytes(r.transfer.fetchedBytes)} peer to peer`);
  if (r.notified) parts.push(`notified${r.exitCode ? ` (exit ${r.exitCode})` : ''}`);
  if (r.durationMs !== null) parts.push(`${(r.durationMs / 1000).toFixed(2)}s`);
  if (r.state !== 'ok' && r.error) parts.push(r.error.split('\n')[0] ?? '');
  return parts.join(', ');
}

export interface PushTotals {
  hosts: Partial<Record<Outcome, number>>;
  files: { written: number; changed: number; unchanged: number; failed: number };
}

export function summarize(results: HostResult[]): PushTotals {
  const totals: PushTotals = { hosts: {}, files: { written: 0, changed: 0, unchanged: 0, failed: 0 } };
  for (const r of results) {
    const o = outcomeOf(r);
    totals.hosts[o] = (totals.hosts[o] ?? 0) + 1;
    for (const f of r.files ?? []) {
      if (f.state === 'changed' && f.content) totals.files.written++;
      if (f.state === 'changed' || f.state === 'would-change') totals.files.changed++;
      else if (f.state === 'unchanged') totals.files.unchanged++;
      else totals.files.failed++;
    }
  }
  return totals;
}

const ORDER: Outcome[] = [
  'failed',
  'refused',
  'timeout',
  'interrupted',
  'unreachable',
  'changed',
  'would change',
  'unchanged',
];

function report(io: CliIO, p: Palette, results: HostResult[], showDiff: boolean): void {
  if (showDiff) printDiffs(io, p, results);
  const groups = new Map<string, HostResult[]>();
  for (const r of results) {
    const key = JSON.stringify([outcomeOf(r), describe(r)]);
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  io.out.write('\n');
  const ordered = [...groups.values()].sort(
    (a, b) => ORDER.indexOf(outcomeOf(a[0] as HostResult)) - ORDER.indexOf(outcomeOf(b[0] as HostResult)),
  );
  for (const g of ordered) {
    const r = g[0] as HostResult;
    const o = outcomeOf(r);
    io.out.write(`${p.bold(foldHosts(g.map((x) => x.host)))} (${g.length}): ${paint(p, o)(o)}\n`);
    for (const d of describe(r)) io.out.write(`    ${d}\n`);
  }
  const t = summarize(results);
  const counts = ORDER.filter((o) => t.hosts[o]).map((o) => `${t.hosts[o]} ${o}`);
  io.out.write(
    `\n${counts.join(', ')} (${results.length} hosts); files: ${t.files.written} written, ${t.files.changed} changed, ${t.files.unchanged} unchanged, ${t.files.failed} failed\n`,
  );
  for (const o of ORDER.slice(0, 5)) {
    const hosts = results.filter((r) => outcomeOf(r) === o).map((r) => r.host);
    if (hosts.length) io.out.write(`${paint(p, o)(`${o}:`)} ${hosts.join(' ')}\n`);
  }
}

/** The per-file lines of a host's result (identical lines group hosts together). */
function describe(r: HostResult): string[] {
  const out: string[] = [];
  for (const f of r.files ?? []) {
    if (f.state === 'unchanged') continue;
    out.push(`${f.dest}: ${fileLine(f)}`);
    if (f.state === 'failed' && f.error?.includes('\n')) {
      for (const l of f.error.split('\n').slice(1)) if (l) out.push(`  ${l}`);
    }
  }
  if (r.notified) {
    out.push(`notify: ${r.exitCode === 0 ? 'ok' : `exit ${r.exitCode}`}`);
    for (const l of `${r.stdout}${r.stderr}`.split('\n')) if (l) out.push(`  ${l}`);
  }
  if (r.state !== 'ok' && !(r.files ?? []).some((f) => f.state === 'failed') && r.error) out.push(r.error);
  return out;
}

/** Without MD5s, so hosts whose files differ only in content group together (--json has them). */
function fileLine(f: FileOutcome): string {
  if (f.state === 'failed') return `failed: ${f.error?.split('\n')[0] ?? ''}`;
  const what = !f.content ? ' (mode/owner only)' : f.oldMd5 === null ? ' (new file)' : '';
  return `${f.state === 'would-change' ? 'would change' : f.state}${what}`;
}

function printDiffs(io: CliIO, p: Palette, results: HostResult[]): void {
  const byDiff = new Map<string, { dest: string; diff: string; hosts: string[] }>();
  for (const r of results) {
    for (const f of r.files ?? []) {
      const text = f.diff ?? (f.oldOmitted && f.content ? `(no diff: ${f.oldOmitted})\n` : undefined);
      if (text === undefined) continue;
      const key = `${f.dest}\0${text}`;
      const entry = byDiff.get(key) ?? { dest: f.dest, diff: text, hosts: [] };
      entry.hosts.push(r.host);
      byDiff.set(key, entry);
    }
  }
  for (const d of byDiff.values()) {
    io.out.write(
      `\n${p.bold(`${foldHosts(d.hosts)} (${d.hosts.length} host${d.hosts.length === 1 ? '' : 's'})`)}: ${d.dest}\n`,
    );
    for (const l of d.diff.split('\n')) {
      if (l.startsWith('===')) continue;
      const paintLine = l.startsWith('+')
        ? p.green
        : l.startsWith('-')
          ? p.red
          : l.startsWith('@@')
            ? p.cyan
            : (t: string) => t;
      if (l) io.out.write(`${paintLine(l)}\n`);
    }
  }
}
