/**
 * render benchmark: how fast canopy renders the push harness's 3 templates for
 * every host of an N-host Ansible inventory (default 10,000), next to the tool a
 * user would otherwise run for the same work, Python Jinja2.
 *
 * How (all state in one temp dir under /dev/shm, a tmpfs, when there is one,
 * else the OS temp dir, or `--tmp DIR`; removed on exit, also on failure or
 * signal):
 *  1. `pushbench.py gen-fleet --n N` (../shared/bench/push) writes the fleet: an
 *     Ansible inventory (hosts.yml, group_vars/, one host_vars file per host).
 *     Untimed.
 *  2. Jinja2: `pushbench.py render` (the harness's reference renderer, python3 +
 *     jinja2), wall time from spawn to exit: Python start-up, YAML loading,
 *     merging, rendering and writing 3 files per host. A second run with an
 *     empty host list measures its fixed cost (start-up + hosts.yml and
 *     group_vars); with `--jinja-hosts M < N` Jinja2 renders only the first M
 *     hosts and its N-host time is extrapolated as fixed + per-host * N.
 *  3. canopy, in a child process pinned to one core (`taskset -c 0`): the time
 *     to start (node + imports), `loadInventory`, `parseTaskVars`, `new
 *     TemplateEngine` + compiling the templates, then rendering the 3 templates
 *     for every host (`VarResolver.templateVars` + `render`). Outputs are only
 *     summed by length, never written. Peak RSS is the child's
 *     `resourceUsage().maxRSS` when rendering is done.
 *  4. After the clock stops, the canopy child renders the sample hosts again
 *     (first 50 by default, `--verify all` for every host Jinja2 rendered) and
 *     compares each file byte for byte with Jinja2's; any difference fails.
 *
 * Output: a table on stderr, one JSON line on stdout. Exit 1 on a difference
 * or any failure.
 *
 *   npm run build && npm run bench:render -- [--hosts N] [--jinja-hosts M]
 *     [--verify K|all] [--timeout SECONDS] [--no-pin] [--tmp DIR] [--harness DIR]
 *   env: PUSHBENCH_HARNESS (default ../shared/bench/push), PYTHON (default /usr/bin/python3)
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  accessSync,
  constants,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadInventory, parseTaskVars, TemplateEngine, VarResolver } from '../../src/render/index.js';
import { runBench } from '../lib/run-bench.js';

const TARGET_HOSTS_PER_S = 5000;
const DEFAULT_HOSTS = 10_000;
const DEFAULT_VERIFY = 50;
const DEFAULT_TIMEOUT_S = 300;

interface Options {
  hosts: number;
  jinjaHosts: number;
  verify: number | 'all';
  timeoutS: number;
  pin: boolean;
  harness: string;
  python: string;
  tmp: string;
}

/** What the parent hands the canopy child (as one JSON argument). */
interface WorkerJob {
  inventory: string;
  taskVars: string;
  templates: string;
  files: string;
  refRoot: string;
  sampleHosts: string[];
  scratch: string;
}

interface VerifyResult {
  checked: number;
  identical: number;
  firstDiff: { file: string; reference: string; diff: string } | null;
  seconds: number;
}

/** What the canopy child reports (one JSON line on its stdout). */
interface WorkerResult {
  code_hash: string;
  hosts: number;
  warnings: number;
  startup_s: number;
  load_s: number;
  task_vars_s: number;
  engine_s: number;
  render_s: number;
  /** The render time of the second half of the hosts (JIT warm). */
  second_half_s: number;
  second_half_hosts: number;
  render_cpu_s: number;
  chars: number;
  rss_after_load_mb: number;
  max_rss_mb: number;
  verify: VerifyResult;
}

interface FileRow {
  template: string;
  dest: string;
}

// ---------------------------------------------------------------------------
// small helpers

function fail(message: string): never {
  throw new Error(message);
}

function now(): number {
  return performance.now() / 1000;
}

function round(x: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) fail('cannot find the project root (no package.json above the script)');
    dir = up;
  }
}

/** The harness's files.tsv: template -> destination pattern ({root}/{host}/...). */
function readFilesTsv(path: string): FileRow[] {
  const rows: FileRow[] = [];
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const [template, dest] = line.split('\t');
    if (!template || !dest) fail(`${path}: bad line ${JSON.stringify(line)}`);
    rows.push({ template, dest });
  }
  if (rows.length === 0) fail(`${path}: no templates`);
  return rows;
}

function destination(row: FileRow, root: string, host: string): string {
  return row.dest.replaceAll('{root}', root).replaceAll('{host}', host);
}

/**
 * Where the temp dir goes: /dev/shm (tmpfs) when there is one, else the OS
 * temp dir. A 10,000-host run creates ~100,000 files and directories; on this
 * machine's ext4 creating and removing them costs ~40 s of mostly kernel time
 * (and adds disk noise to Jinja2's figure).
 */
function defaultTmp(): string {
  try {
    accessSync('/dev/shm', constants.W_OK);
    if (statSync('/dev/shm').isDirectory()) return '/dev/shm';
  } catch {
    // no tmpfs: fall back
  }
  return tmpdir();
}

function parseArgs(argv: string[]): Options {
  const root = projectRoot();
  const opts: Options = {
    hosts: DEFAULT_HOSTS,
    jinjaHosts: 0,
    verify: DEFAULT_VERIFY,
    timeoutS: DEFAULT_TIMEOUT_S,
    pin: true,
    harness: process.env.PUSHBENCH_HARNESS ?? resolve(root, '../shared/bench/push'),
    python: process.env.PYTHON ?? '/usr/bin/python3',
    tmp: defaultTmp(),
  };
  const int = (flag: string, v: string | undefined): number => {
    const n = Number(v);
    if (!v || !Number.isInteger(n) || n < 1) fail(`${flag} needs a positive integer, got ${v ?? 'nothing'}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    switch (a) {
      case '--hosts':
        opts.hosts = int(a, v);
        i++;
        break;
      case '--jinja-hosts':
        opts.jinjaHosts = int(a, v);
        i++;
        break;
      case '--verify':
        opts.verify = v === 'all' ? 'all' : int(a, v);
        i++;
        break;
      case '--timeout':
        opts.timeoutS = int(a, v);
        i++;
        break;
      case '--no-pin':
        opts.pin = false;
        break;
      case '--tmp':
        opts.tmp = resolve(v ?? fail('--tmp needs a directory'));
        i++;
        break;
      case '--harness':
        opts.harness = resolve(v ?? fail('--harness needs a directory'));
        i++;
        break;
      default:
        fail(
          `unknown argument ${a}; usage: render-bench [--hosts N] [--jinja-hosts M] [--verify K|all] [--timeout S] [--no-pin] [--tmp DIR] [--harness DIR]`,
        );
    }
  }
  if (opts.jinjaHosts === 0 || opts.jinjaHosts > opts.hosts) opts.jinjaHosts = opts.hosts;
  return opts;
}

// ---------------------------------------------------------------------------
// child processes (one at a time; killed on timeout, failure or signal)

const started = now();
function say(s: string): void {
  process.stderr.write(`render-bench: [${(now() - started).toFixed(1)} s] ${s}\n`);
}

let current: ChildProcess | null = null;
let scratchDir: string | null = null;

function cleanup(): void {
  if (current && current.exitCode === null && current.signalCode === null) current.kill('SIGKILL');
  current = null;
  if (scratchDir) {
    const dir = scratchDir;
    scratchDir = null;
    // rm -rf: about twice as fast as rmSync on the ~100,000 entries of a 10,000-host run
    if (spawnSync('rm', ['-rf', '--', dir]).status !== 0 || existsSync(dir)) {
      rmSync(dir, { recursive: true, force: true });
    }
    say(`removed ${dir}`);
  }
}

interface ChildResult {
  seconds: number;
  stdout: string;
}

function run(cmd: string, args: string[], timeoutS: number, what: string): Promise<ChildResult> {
  return new Promise((resolvePromise, reject) => {
    const t0 = now();
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    current = child;
    const chunks: Buffer[] = [];
    child.stdout?.on('data', (c: Buffer) => chunks.push(c));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, Math.max(1, timeoutS) * 1000);
    child.on('error', (err) => {
      clearTimeout(timer);
      current = null;
      reject(new Error(`${what}: cannot start ${cmd}: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      const seconds = now() - t0;
      clearTimeout(timer);
      current = null;
      if (timedOut)
        reject(new Error(`${what}: killed after ${Math.round(timeoutS)} s, when the --timeout ran out`));
      else if (code !== 0) reject(new Error(`${what}: exited with ${code ?? signal}`));
      else resolvePromise({ seconds, stdout: Buffer.concat(chunks).toString('utf8') });
    });
  });
}

// ---------------------------------------------------------------------------
// the canopy child: timed load + render, then untimed verification

/**
 * Which canopy was measured: a hash of the render component's compiled files
 * (src/render beside this script's tree: dist/src/render when built). Others
 * rebuild dist/ while working, so figures are only comparable at equal hashes.
 */
function renderCodeHash(): string {
  const dir = fileURLToPath(new URL('../../src/render/', import.meta.url));
  const h = createHash('sha256');
  for (const f of readdirSync(dir).sort()) {
    if (!/\.(js|ts)$/.test(f) || /\.test\.(js|ts)$/.test(f) || f.endsWith('.d.ts')) continue;
    h.update(f)
      .update('\0')
      .update(readFileSync(join(dir, f)))
      .update('\0');
  }
  return h.digest('hex').slice(0, 12);
}

function worker(job: WorkerJob): WorkerResult {
  const startup = process.uptime(); // node start-up + importing canopy
  const rows = readFilesTsv(job.files);

  let t = now();
  const inv = loadInventory(job.inventory);
  const loadS = now() - t;
  const rssAfterLoad = process.memoryUsage.rss();

  t = now();
  const task = parseTaskVars([{ kind: 'file', path: job.taskVars }]);
  const taskS = now() - t;

  t = now();
  const engine = new TemplateEngine({ root: job.templates });
  const templates = rows.map((r) => engine.template(r.template));
  const engineS = now() - t;

  const cpu0 = process.cpuUsage();
  t = now();
  const resolver = new VarResolver(inv, task);
  let chars = 0;
  let i = 0;
  const half = Math.floor(inv.hosts.size / 2);
  let tHalf = t;
  for (const host of inv.hosts.keys()) {
    if (i++ === half) tHalf = now();
    const vars = resolver.templateVars(host);
    for (const tpl of templates) chars += tpl.render(vars, host).length;
  }
  const tEnd = now();
  const renderS = tEnd - t;
  const secondHalfS = tEnd - tHalf;
  const cpu = process.cpuUsage(cpu0);
  const maxRssMb = process.resourceUsage().maxRSS / 1024;

  // Untimed: the sample again, compared byte for byte with Jinja2's files.
  t = now();
  const verify: VerifyResult = { checked: 0, identical: 0, firstDiff: null, seconds: 0 };
  for (const host of job.sampleHosts) {
    const vars = resolver.templateVars(host);
    rows.forEach((row, i) => {
      const tpl = templates[i] ?? fail(`template ${row.template} not compiled`);
      const ours = Buffer.from(tpl.render(vars, host), 'utf8');
      const refPath = destination(row, job.refRoot, host);
      const ref = existsSync(refPath) ? readFileSync(refPath) : null;
      verify.checked++;
      if (ref?.equals(ours)) {
        verify.identical++;
      } else if (!verify.firstDiff) {
        const mine = join(job.scratch, `${host}-${row.template}.canopy`);
        writeFileSync(mine, ours);
        const d = ref
          ? spawnSync('diff', ['-u', refPath, mine], { encoding: 'utf8' }).stdout
          : `reference file missing: ${refPath}`;
        verify.firstDiff = {
          file: destination(row, '{root}', host),
          reference: refPath,
          diff: d.split('\n').slice(0, 40).join('\n'),
        };
      }
    });
  }

  verify.seconds = now() - t;
  return {
    code_hash: renderCodeHash(),
    hosts: inv.hosts.size,
    warnings: inv.warnings.length,
    startup_s: startup,
    load_s: loadS,
    task_vars_s: taskS,
    engine_s: engineS,
    render_s: renderS,
    second_half_s: secondHalfS,
    second_half_hosts: inv.hosts.size - half,
    render_cpu_s: (cpu.user + cpu.system) / 1e6,
    chars,
    rss_after_load_mb: rssAfterLoad / 1024 / 1024,
    max_rss_mb: maxRssMb,
    verify,
  };
}

// ---------------------------------------------------------------------------
// the parent: fleet, Jinja2, canopy child, report

async function main(opts: Options): Promise<number> {
  const deadline = now() + opts.timeoutS;
  const left = (): number => {
    const s = deadline - now();
    if (s <= 0) fail(`time limit of ${opts.timeoutS} s reached (--timeout)`);
    return s;
  };
  const pb = join(opts.harness, 'lib', 'pushbench.py');
  const workload = join(opts.harness, 'workload');
  if (!existsSync(pb)) fail(`push harness not found: ${pb} (set PUSHBENCH_HARNESS)`);
  const filesTsv = join(workload, 'files.tsv');
  const taskVars = join(workload, 'task_vars.yml');
  const templatesDir = join(workload, 'templates');
  const rows = readFilesTsv(filesTsv);
  const N = opts.hosts;
  const M = opts.jinjaHosts;

  const tmp = mkdtempSync(join(opts.tmp, 'canopy-render-bench-'));
  scratchDir = tmp;
  const state = join(tmp, 'fleet');
  const refRoot = join(tmp, 'ref');

  // 1. the fleet (gen-fleet needs a host public key; any one-line key will do)
  say(`generating a fleet of ${N} hosts in ${state}`);
  mkdirSync(state);
  writeFileSync(join(state, 'ssh_host_ed25519_key.pub'), 'ssh-ed25519 AAAA render-bench\n');
  const gen = await run(
    opts.python,
    [pb, 'gen-fleet', '--n', String(N), '--port', '42222', '--state', state, '--workload', workload],
    left(),
    'gen-fleet',
  );
  const hostList = readFileSync(join(state, 'hosts'), 'utf8').split('\n').filter(Boolean);
  if (hostList.length !== N) fail(`gen-fleet wrote ${hostList.length} hosts, expected ${N}`);
  const inventory = join(state, 'inventory');

  // 2. Jinja2: fixed cost (empty host list), then the first M hosts (all when M = N)
  const py = [
    pb,
    'render',
    '--inventory',
    inventory,
    '--task-vars',
    taskVars,
    '--templates',
    templatesDir,
    '--files',
    filesTsv,
  ];
  const emptyHosts = join(tmp, 'hosts.none');
  writeFileSync(emptyHosts, '');
  say('jinja2: fixed cost (python start-up, hosts.yml, group_vars; no host rendered)');
  const fixed = await run(
    opts.python,
    [...py, '--root', join(tmp, 'ref-none'), '--hosts', emptyHosts],
    left(),
    'jinja2 (fixed)',
  );
  const jinjaArgs = [...py, '--root', refRoot];
  if (M < N) {
    const subset = join(tmp, 'hosts.jinja');
    writeFileSync(subset, `${hostList.slice(0, M).join('\n')}\n`);
    jinjaArgs.push('--hosts', subset);
  }
  say(`jinja2: rendering ${M} hosts x ${rows.length} templates`);
  const jinja = await run(opts.python, jinjaArgs, left(), 'jinja2 render');

  // 3. + 4. canopy, pinned to one core, then its verification against Jinja2's files
  const sampleHosts = hostList.slice(0, opts.verify === 'all' ? M : Math.min(opts.verify, M));
  const job: WorkerJob = {
    inventory,
    taskVars,
    templates: templatesDir,
    files: filesTsv,
    refRoot,
    sampleHosts,
    scratch: tmp,
  };
  const script = fileURLToPath(import.meta.url);
  const nodeArgs = [...process.execArgv, script, '--worker', JSON.stringify(job)];
  const pinned = opts.pin && spawnSync('taskset', ['-c', '0', 'true']).status === 0;
  say(`canopy: loading and rendering ${N} hosts${pinned ? ' on cpu 0 (taskset -c 0)' : ' (not pinned)'}`);
  const child = pinned
    ? await run('taskset', ['-c', '0', process.execPath, ...nodeArgs], left(), 'canopy')
    : await run(process.execPath, nodeArgs, left(), 'canopy');
  say(`canopy: done (${child.seconds.toFixed(1)} s wall in the child, verification included)`);
  const lastLine = child.stdout.trim().split('\n').pop() ?? '';
  const c = JSON.parse(lastLine) as WorkerResult;
  if (c.hosts !== N) fail(`canopy loaded ${c.hosts} hosts, expected ${N}`);

  // figures
  const canopyE2e = c.startup_s + c.load_s + c.task_vars_s + c.engine_s + c.render_s;
  // (clamped: at a handful of hosts the difference is below the noise)
  const jinjaPerHost = Math.max(jinja.seconds - fixed.seconds, 0.001) / M;
  const jinjaN = M < N ? fixed.seconds + jinjaPerHost * N : jinja.seconds;
  const canopyHps = N / c.render_s;
  const canopyE2eHps = N / canopyE2e;
  const warmHps = c.second_half_hosts / c.second_half_s;
  const jinjaHps = N / jinjaN;
  const jinjaRenderHps = 1 / jinjaPerHost;
  const v = c.verify;
  const verified = v.checked > 0 && v.identical === v.checked;

  const result = {
    ts: new Date().toISOString(),
    code_hash: c.code_hash,
    hosts: N,
    templates: rows.length,
    canopy_render_s: round(c.render_s),
    canopy_hosts_per_s: Math.round(canopyHps),
    canopy_render_cpu_s: round(c.render_cpu_s),
    canopy_warm_hosts_per_s: Math.round(warmHps),
    canopy_e2e_s: round(canopyE2e),
    canopy_e2e_hosts_per_s: Math.round(canopyE2eHps),
    canopy_startup_s: round(c.startup_s),
    load_s: round(c.load_s),
    task_vars_s: round(c.task_vars_s),
    engine_s: round(c.engine_s),
    rendered_chars: c.chars,
    rss_after_load_mb: round(c.rss_after_load_mb, 1),
    max_rss_mb: round(c.max_rss_mb, 1),
    pinned_cpu: pinned ? 0 : null,
    jinja2_s: round(jinjaN),
    jinja2_hosts_per_s: Math.round(jinjaHps),
    jinja2_measured_hosts: M,
    jinja2_measured_s: round(jinja.seconds),
    jinja2_extrapolated: M < N,
    jinja2_fixed_s: round(fixed.seconds),
    jinja2_per_host_hosts_per_s: Math.round(jinjaRenderHps),
    ratio: round(canopyE2eHps / jinjaHps, 2),
    ratio_render: round(canopyHps / jinjaRenderHps, 2),
    target_hosts_per_s: TARGET_HOSTS_PER_S,
    target_met: canopyHps > TARGET_HOSTS_PER_S,
    gen_fleet_s: round(gen.seconds),
    tmp: opts.tmp,
    verified_files: v.checked,
    identical_files: v.identical,
    verified,
    verify_s: round(v.seconds),
    first_diff: v.firstDiff?.file ?? null,
  };

  const f = (x: number, w = 9, d = 2): string => x.toFixed(d).padStart(w);
  const hps = (x: number): string => String(Math.round(x)).padStart(10);
  const lines = [
    '',
    `render benchmark: ${N} hosts x ${rows.length} templates (${rows.map((r) => r.template).join(', ')})`,
    `canopy src/render hash ${c.code_hash}, ${result.ts}`,
    '                                               seconds    hosts/s',
    `canopy  start-up (node + imports)            ${f(c.startup_s)}`,
    `canopy  inventory load                       ${f(c.load_s)}`,
    `canopy  task vars + engine (compile)         ${f(c.task_vars_s + c.engine_s)}`,
    `canopy  render, ${pinned ? 'one core (cpu 0)' : 'not pinned      '}             ${f(c.render_s)}${hps(canopyHps)}   (cpu ${c.render_cpu_s.toFixed(2)} s)`,
    `canopy  render, second half only (JIT warm)  ${f(c.second_half_s)}${hps(warmHps)}   (${c.second_half_hosts} hosts)`,
    `canopy  end to end                           ${f(canopyE2e)}${hps(canopyE2eHps)}`,
    `jinja2  fixed (python start-up, hosts.yml)   ${f(fixed.seconds)}`,
    `jinja2  per host after that (+ file writes)  ${f(jinja.seconds - fixed.seconds)}${hps(jinjaRenderHps)}   (${M} hosts)`,
    `jinja2  end to end${M < N ? ` (extrapolated from ${M})` : ''}`.padEnd(45) + f(jinjaN) + hps(jinjaHps),
    `ratio canopy/jinja2: ${result.ratio}x end to end, ${result.ratio_render}x render per host`,
    `canopy peak RSS ${c.max_rss_mb.toFixed(0)} MB (after load ${c.rss_after_load_mb.toFixed(0)} MB)`,
    `target > ${TARGET_HOSTS_PER_S} hosts/s render on one core: ${result.target_met ? 'met' : 'NOT met'}`,
    `verified: ${v.identical}/${v.checked} files identical (first ${sampleHosts.length} hosts)`,
  ];
  if (c.warnings > 0) lines.push(`note: the inventory loaded with ${c.warnings} warnings`);
  if (v.firstDiff) {
    lines.push(
      `first differing file: ${v.firstDiff.file} (reference ${v.firstDiff.reference})`,
      v.firstDiff.diff,
    );
  }
  process.stderr.write(`${lines.join('\n')}\n`);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  return verified ? 0 : 1;
}

// ---------------------------------------------------------------------------

const argv = process.argv.slice(2);
if (argv[0] === '--worker') {
  const job = JSON.parse(argv[1] ?? fail('--worker needs a job')) as WorkerJob;
  process.stdout.write(`${JSON.stringify(worker(job))}\n`);
} else {
  await runBench('render-bench', () => main(parseArgs(argv)), cleanup);
}
