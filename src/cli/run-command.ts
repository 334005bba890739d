/**
 * `canopy run TARGETS -- COMMAND...`: runs a command on hosts through the
 * coordinator and streams results as they arrive (server-sent events,
 * resumed after a dropped connection), then groups identical outputs,
 * prints the tally and names every host that was not ok. Exit 0 only if
 * every host is ok.
 */
import { parseDuration, parseSize } from '../agent/config.js';
import type { HostResult, RunSummary } from '../coordinator/index.js';
import { KILL_GRACE_MAX_S, MAX_OUTPUT_BYTES, RUN_MAX_TIMEOUT_S } from '../protocol/limits.js';
import { COMMON_OPTIONS, parse, usage } from './args.js';
import { ApiClient, CLIENT_OPTIONS, clientSettings } from './client.js';
import { foldHosts } from './fold-hosts.js';
import { followRun } from './follow.js';
import { type CliIO, type Palette, palette, writeJson } from './io.js';

/** --max-output: a byte count, or a size ("512K", "4M"). */
function byteCount(text: string): number {
  if (/^\d+$/.test(text)) return Number(text);
  try {
    return parseSize(text, '--max-output');
  } catch {
    throw usage('run', `--max-output "${text}" is not a byte count or a size (e.g. 65536, 512K, 4M)`);
  }
}

export const RUN_HELP = `usage: canopy run TARGET... [options] -- COMMAND...

Runs COMMAND on every target host's agent. TARGET is all, a host, a group,
a host range (web-[01-04]) or a label selector (role=web,idc=bj).
One word after -- runs through /bin/sh -c (pipes, ;, $VARS work); several
words run as argv, without a shell. ?HOST is replaced by each host's name
(shell-quoted in the shell form).

options:
  --timeout DURATION     per host (default 60s); the process group is killed (TERM, then KILL)
  --concurrency N        at most N hosts at once (default: all)
  --env KEY=VALUE        environment for the command (repeatable)
  --cwd DIR              working directory (must be inside the agent's roots)
  --run-as ACCOUNT       account to run as (must be in the agent's run_as)
  --max-output SIZE      cap per stream (bytes, or 512K, 4M; default 1M, at most 8M; marked truncated)
  --kill-grace DURATION  wait between TERM and KILL (default 5s)
  --quiet                no per-host lines while running, only the grouped report
  --json                 the run and every host's result as JSON
  --coordinator URL --token TOKEN --ca FILE   (default: the client config)
Exit 0 only if every host is ok; 1 otherwise.
`;

const STATE_ORDER = ['ok', 'failed', 'timeout', 'refused', 'interrupted', 'unreachable'] as const;

function paint(p: Palette, state: string): (t: string) => string {
  if (state === 'ok') return p.green;
  if (state === 'unreachable' || state === 'interrupted') return p.yellow;
  return p.red;
}

function detail(r: HostResult): string {
  const parts: string[] = [];
  if (r.exitCode !== null && r.state !== 'ok') parts.push(`exit ${r.exitCode}`);
  if (r.signal) parts.push(r.signal);
  if (r.durationMs !== null) parts.push(`${(r.durationMs / 1000).toFixed(2)}s`);
  if (r.late) parts.push('late');
  if (r.error && r.state !== 'ok') parts.push(r.error.split('\n')[0] ?? '');
  return parts.join(', ');
}

export async function runCommand(argv: string[], io: CliIO): Promise<number> {
  const dash = argv.indexOf('--');
  const head = dash >= 0 ? argv.slice(0, dash) : argv;
  const commandWords = dash >= 0 ? argv.slice(dash + 1) : [];
  const { values, positionals } = parse('run', head, {
    ...COMMON_OPTIONS,
    ...CLIENT_OPTIONS,
    timeout: { type: 'string' },
    concurrency: { type: 'string' },
    env: { type: 'string', multiple: true },
    cwd: { type: 'string' },
    'run-as': { type: 'string' },
    'max-output': { type: 'string' },
    'kill-grace': { type: 'string' },
    quiet: { type: 'boolean', default: false },
  });
  if (values.help) {
    io.out.write(RUN_HELP);
    return 0;
  }
  if (positionals.length === 0)
    throw usage('run', 'name at least one TARGET (all, a host, a group, role=web)');
  if (commandWords.length === 0)
    throw usage('run', 'give the command after --, e.g. canopy run all -- uptime');
  const env: Record<string, string> = {};
  for (const e of values.env ?? []) {
    const i = e.indexOf('=');
    if (i <= 0) throw usage('run', `--env "${e}" is not KEY=VALUE`);
    env[e.slice(0, i)] = e.slice(i + 1);
  }
  const concurrency = values.concurrency === undefined ? undefined : Number(values.concurrency);
  if (concurrency !== undefined && !(Number.isInteger(concurrency) && concurrency > 0)) {
    throw usage('run', `--concurrency "${values.concurrency}" is not a positive whole number`);
  }
  const maxOutput = values['max-output'] === undefined ? undefined : byteCount(values['max-output']);
  if (maxOutput !== undefined && maxOutput > MAX_OUTPUT_BYTES) {
    throw usage('run', `--max-output ${values['max-output']} is more than 8M, the most a result carries`);
  }
  const timeout = values.timeout ? parseDuration(values.timeout, '--timeout') : 60_000;
  if (timeout > RUN_MAX_TIMEOUT_S * 1000)
    throw usage('run', `--timeout ${values.timeout} is more than 7d, the longest a run may take`);
  const killGrace = values['kill-grace'] ? parseDuration(values['kill-grace'], '--kill-grace') : undefined;
  if (killGrace !== undefined && killGrace > KILL_GRACE_MAX_S * 1000) {
    throw usage('run', `--kill-grace ${values['kill-grace']} is more than 10m`);
  }
  const body = {
    targets: positionals,
    command: commandWords.length === 1 ? (commandWords[0] ?? '') : commandWords,
    timeout: timeout / 1000,
    ...(concurrency ? { concurrency } : {}),
    ...(Object.keys(env).length ? { env } : {}),
    ...(values.cwd ? { cwd: values.cwd } : {}),
    ...(values['run-as'] ? { runAs: values['run-as'] } : {}),
    ...(maxOutput !== undefined ? { maxOutputBytes: maxOutput } : {}),
    ...(killGrace !== undefined ? { killGrace: killGrace / 1000 } : {}),
  };
  const api = new ApiClient(clientSettings(values, io));
  const run = await api.call<{ id: string; hosts: string[]; deadline: number }>('POST', '/v1/runs', body);
  const p = palette(io.out, io.env);
  const stream = !values.json && !values.quiet;
  const width = Math.min(40, Math.max(4, ...run.hosts.map((h) => h.length)));
  if (stream) io.err.write(p.dim(`run ${run.id} on ${run.hosts.length} host(s)\n`));

  const final = await followRun(
    api,
    run,
    (r) => {
      if (stream)
        io.out.write(
          `${r.host.padEnd(width)}  ${paint(p, r.state)(r.state.padEnd(11))} ${p.dim(detail(r))}\n`,
        );
    },
    (why) => {
      if (stream) io.err.write(p.dim(`lost the event stream (${why}); reconnecting\n`));
    },
  );
  if (values.json) {
    const { createdAt, finishedAt = null, deadline } = final.run;
    writeJson(io, {
      run: run.id,
      createdAt,
      finishedAt,
      deadline,
      summary: final.summary,
      results: final.results,
    });
  } else {
    report(io, p, final.results, final.summary);
  }
  return final.results.every((r) => r.state === 'ok') && final.results.length === run.hosts.length ? 0 : 1;
}

function report(io: CliIO, p: Palette, results: HostResult[], summary: RunSummary): void {
  const groups = new Map<string, HostResult[]>();
  for (const r of results) {
    const key = JSON.stringify([
      r.state,
      r.exitCode,
      r.signal,
      r.stdout,
      r.stderr,
      r.state === 'ok' ? '' : (r.error ?? ''),
    ]);
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  const ordered = [...groups.values()].sort(
    (a, b) =>
      STATE_ORDER.indexOf(a[0]?.state ?? 'ok') - STATE_ORDER.indexOf(b[0]?.state ?? 'ok') ||
      b.length - a.length,
  );
  io.out.write('\n');
  for (const g of ordered) {
    const r = g[0] as HostResult;
    const code =
      r.state !== 'ok' && r.exitCode !== null ? ` (exit ${r.exitCode})` : r.signal ? ` (${r.signal})` : '';
    io.out.write(
      `${p.bold(foldHosts(g.map((x) => x.host)))} (${g.length}): ${paint(p, r.state)(r.state)}${code}\n`,
    );
    const text = [r.stdout, r.stderr, r.state !== 'ok' ? (r.error ?? '') : ''].filter(Boolean).join('');
    for (const line of text.replace(/\n$/, '').split('\n')) if (line) io.out.write(`    ${line}\n`);
    if (r.stdoutTruncated || r.stderrTruncated) io.out.write(p.yellow('    [output truncated]\n'));
  }
  const counts = STATE_ORDER.filter((s) => summary.counts[s]).map((s) => `${summary.counts[s]} ${s}`);
  io.out.write(`\n${counts.join(', ')}, ${summary.total} total\n`);
  for (const s of STATE_ORDER) {
    if (s === 'ok') continue;
    const hosts = results.filter((r) => r.state === s).map((r) => r.host);
    if (hosts.length) io.out.write(`${paint(p, s)(`${s}:`)} ${hosts.join(' ')}\n`);
  }
}
