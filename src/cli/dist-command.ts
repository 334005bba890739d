/**
 * `canopy dist SRC --dest PATH --targets T...`: distributes a file on the
 * coordinator's machine to the target agents over the planned peer tree
 * (the agents need --peer-listen), then reports wall time, bytes the source
 * uploaded (in copies of the file), and each host's time, bytes fetched and
 * where from. With --activate together, what became of each host and whether
 * the fleet switched. Exit 0 only if every host has the file.
 */
import { statSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import type { DistProgress, HostResult } from '../coordinator/index.js';
import { COMMON_OPTIONS, parse, usage } from './args.js';
import { ApiClient, CLIENT_OPTIONS, clientSettings } from './client.js';
import {
  activationLines,
  activationSummary,
  hostOutcome,
  parseRate,
  progressLine,
  reportLines,
} from './dist-progress.js';
import { foldHosts } from './fold-hosts.js';
import { followRun } from './follow.js';
import { type CliIO, palette, writeJson } from './io.js';

export const DIST_HELP = `usage: canopy dist SRC --dest PATH --targets TARGET... [options]

Distributes SRC (a file on the coordinator's machine, run this there; or,
with --source HOST, a file on agent HOST) to every target agent: the
coordinator (or HOST) hashes it into 256 KiB chunks (BLAKE3 each, plus the
whole file's MD5), the coordinator plans a striped peer tree (each IDC
entered once) and serves as the source (or HOST does); agents relay
verified chunks to each other over mutual TLS and install the file
atomically once its MD5 matches. Agents must run with --peer-listen
HOST:PORT.

When SRC is a directory, the tree goes with the system rsync (needed on
every host) over the same peer channel, level by level down the planned
tree: each host pulls from its parent once the parent holds the whole tree
(falling back to the coordinator), as deltas against what it already has,
and an interrupted pull resumes. Files in PATH the tree lacks are kept.

options:
  --dest PATH          absolute path on every host (inside the agents' roots);
                       {host} in it becomes each host's name
  --targets TARGET     hosts, groups, ranges, label selectors, all (repeatable)
  --mode MODE          e.g. 0644 (default: the existing file's, else 0644)
  --owner U --group G  (default: the existing file's)
  --chunk-size BYTES   power of two from 65536 to 67108864 (default 262144)
  --stripes N          interleaved trees (default: 1, a pipelined chain, up to
                       64 hosts; 4 above)
  --timeout DURATION   for the whole distribution (default 1h)
  --rate-limit RATE    cap every agent's upload and download, e.g. 40MB/s, 200Mbit/s
  --delete             SRC a directory: remove files on the hosts the source lacks
  --link-rate RATE     each host's link (e.g. 1Gbit/s): the report gives the ratio
                       to the single-link bound S/B
  --source HOST        SRC is a file on agent HOST (an absolute path inside its
                       roots), not on this machine: HOST hashes it and serves it
                       from its peer server as the root of the tree; it is no
                       target (named in the targets, it counts as holding it)
  --activate together  a file only: every host fetches, verifies and stages the
                       file beside PATH; only when all hosts have it does each
                       check its copy again and switch. If any host lacks it,
                       no host switches and the staged copies are removed.
                       The old file is backed up in the agent's data dir.
  --json               the distribution and every host's result as JSON

While it runs, one progress line for the fleet (bytes, rate, ETA, hosts done
per IDC, the slowest hosts); at the end the wall time, the copies the source
uploaded, the ratio to S/B (with --link-rate) and each host's time.
Exit 0 only if every host installed the file (with --activate together: only
if the fleet switched; the report names the hosts that lack the file).
`;

export async function distCommand(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse('dist', argv, {
    ...COMMON_OPTIONS,
    ...CLIENT_OPTIONS,
    dest: { type: 'string' },
    targets: { type: 'string', multiple: true },
    mode: { type: 'string' },
    owner: { type: 'string' },
    group: { type: 'string' },
    'chunk-size': { type: 'string' },
    stripes: { type: 'string' },
    timeout: { type: 'string' },
    'rate-limit': { type: 'string' },
    'link-rate': { type: 'string' },
    delete: { type: 'boolean' },
    activate: { type: 'string' },
    source: { type: 'string' },
  });
  if (values.help) {
    io.out.write(DIST_HELP);
    return 0;
  }
  const [src, ...extra] = positionals;
  if (!src || extra.length > 0) throw usage('dist', 'give exactly one SRC file or directory');
  if (!values.dest) throw usage('dist', '--dest PATH is required');
  if (!values.targets?.length) throw usage('dist', 'name the hosts with --targets (all, a group, role=web)');
  if (values.activate !== undefined && values.activate !== 'together') {
    throw usage(
      'dist',
      `--activate "${values.activate}" is not a mode: use --activate together (all hosts switch, or none), ` +
        'or leave it out (each host switches as soon as it has the file)',
    );
  }
  const num = (v: string | undefined, what: string) => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n <= 0) throw usage('dist', `${what} "${v}" is not a positive whole number`);
    return n;
  };
  if (values.source !== undefined && !isAbsolute(src)) {
    throw usage(
      'dist',
      `with --source ${values.source}, SRC is a path on that agent: give it as an absolute path (not "${src}")`,
    );
  }
  const { parseDuration } = await import('../agent/config.js');
  const body = {
    path: values.source !== undefined ? src : resolve(io.cwd, src),
    ...(values.source !== undefined ? { source: values.source } : {}),
    dest: values.dest,
    targets: values.targets,
    ...(values.mode ? { mode: values.mode } : {}),
    ...(values.owner ? { owner: values.owner } : {}),
    ...(values.group ? { group: values.group } : {}),
    ...(values['chunk-size'] ? { chunkSize: num(values['chunk-size'], '--chunk-size') } : {}),
    ...(values.stripes ? { stripes: num(values.stripes, '--stripes') } : {}),
    ...(values.timeout ? { timeout: parseDuration(values.timeout, '--timeout') / 1000 } : {}),
    ...(values['rate-limit'] ? { rateLimit: parseRate(values['rate-limit'], '--rate-limit') } : {}),
    ...(values['link-rate'] ? { linkRate: parseRate(values['link-rate'], '--link-rate') } : {}),
    ...(values.delete ? { delete: true } : {}),
    ...(values.activate ? { activate: 'together' as const } : {}),
  };
  const api = new ApiClient(clientSettings(values, io));
  const started = Date.now();
  const created = await api.call<{
    id: string;
    hosts: string[];
    deadline: number;
    size: number;
    md5: string;
    sourceBytesAtStart: number;
  }>('POST', '/v1/dists', body);
  const p = palette(io.out, io.env);
  const stream = !values.json;
  // The coordinator decides; this only words the report (the CLI runs on the coordinator's machine).
  const isTree = values.source === undefined && isDirectory(body.path);
  const what = isTree ? `tree of ${created.size} bytes` : `${created.size} bytes (md5 ${created.md5})`;
  const together = body.activate === 'together';
  if (stream) {
    const from = values.source !== undefined ? ` from ${values.source}:${body.path}` : '';
    io.err.write(p.dim(`dist ${created.id}: ${what} to ${created.hosts.length} host(s)${from}\n`));
  }
  let done = 0;
  // A terminal gets one line redrawn in place; a log gets a line every 5 s.
  const tty = (io.err as { isTTY?: boolean }).isTTY === true;
  let shown = '';
  let lastPrinted = 0;
  const clear = () => {
    if (tty && shown) io.err.write('\r\x1b[K');
    shown = '';
  };
  const final = await followRun(
    api,
    created,
    (r) => {
      done++;
      if (!stream) return;
      clear();
      const state = together ? hostOutcome(r) : r.state;
      io.out.write(`[${done}/${created.hosts.length}] ${r.host}  ${state}  ${p.dim(line(r))}\n`);
    },
    (why) => {
      if (stream) io.err.write(p.dim(`lost the event stream (${why}); reconnecting\n`));
    },
    (progress) => {
      if (!stream) return;
      const text = progressLine(progress as DistProgress);
      if (tty) {
        io.err.write(`\r\x1b[K${text.slice(0, 200)}`);
        shown = text;
      } else if (Date.now() - lastPrinted >= 5_000) {
        lastPrinted = Date.now();
        io.err.write(`${text}\n`);
      }
    },
  );
  clear();
  const wall = (Date.now() - started) / 1000;
  const after = await api.call<{ sourceBytes: number }>('GET', `/v1/dists/${created.id}`);
  const sourceBytes = after.sourceBytes - created.sourceBytesAtStart;
  const copies = created.size > 0 ? sourceBytes / created.size : 0;
  const ok = final.results.filter((r) => r.state === 'ok');
  const activation = together ? activationSummary(final.results, created.hosts.length) : undefined;
  if (values.json) {
    const bound = body.linkRate ? created.size / body.linkRate : null;
    writeJson(io, {
      dist: created.id,
      size: created.size,
      md5: created.md5,
      wallSeconds: wall,
      sourceBytes,
      sourceCopies: copies,
      boundSeconds: bound,
      ratioToBound: bound ? wall / bound : null,
      summary: final.summary,
      ...(activation ? { activation } : {}),
      results: final.results,
    });
  } else {
    io.out.write(`\n${body.dest} (${isTree ? `directory, ${created.size} bytes` : `md5 ${created.md5}`}):\n`);
    for (const l of reportLines({
      hosts: created.hosts.length,
      ok: ok.length,
      size: created.size,
      wallSeconds: wall,
      sourceBytes,
      ...(body.linkRate ? { linkRate: body.linkRate } : {}),
    })) {
      io.out.write(`${l}\n`);
    }
    const bad = final.results.filter((r) => r.state !== 'ok');
    if (activation) {
      for (const l of activationLines(activation)) io.out.write(`${activation.activated ? l : p.red(l)}\n`);
    } else if (bad.length) io.out.write(`${p.red('not ok:')} ${foldHosts(bad.map((r) => r.host))}\n`);
  }
  return ok.length === created.hosts.length ? 0 : 1;
}

function line(r: HostResult): string {
  const t = r.transfer;
  const parts: string[] = [];
  if (r.durationMs !== null) parts.push(`${(r.durationMs / 1000).toFixed(2)}s`);
  if (t?.rsync) {
    const s = t.rsync;
    parts.push(
      `from ${s.peer}: received ${s.bytesReceived} B, literal ${s.literalBytes} B, matched ${s.matchedBytes} B, ` +
        `${s.files}/${s.filesTotal} files updated${s.bwlimitKiB ? ` (--bwlimit ${s.bwlimitKiB} KiB/s)` : ''}`,
    );
  } else if (t) {
    parts.push(`fetched ${t.fetchedBytes} B`);
    const from = Object.entries(t.fromPeers).map(([k, v]) => `${k} ${v}`);
    if (from.length) parts.push(`from ${from.join(', ')}`);
    if (t.reusedChunks) parts.push(`${t.reusedChunks} chunks already here`);
    if (t.badPeers.length) parts.push(`bad peers: ${t.badPeers.join(' ')}`);
  }
  const outcome = r.files?.[0]?.state;
  if (outcome === 'discarded') parts.push('staged copy removed, old file kept');
  else if (r.state !== 'ok' && r.error) parts.push(r.error.split('\n')[0] ?? '');
  return parts.join(', ');
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}
