/**
 * Control-plane benchmark: N simulated agents against one real coordinator
 * process, for N = 100, 1,000, 5,000 (`--sizes`).
 *
 * Per size, with a fresh coordinator (`node dist/src/cli/main.js coordinator
 * --data DIR --listen 127.0.0.1:0 --no-client-config`, its LevelDB on the temp
 * dir's disk) and fresh simulator workers (sim-agents.ts, `--workers` child
 * processes, each holding N/W simulated agents: real TLS 1.3 WebSockets with
 * their own client certificates, the real protocol, one source address each):
 *  1. join: every simulated agent gets a one-time token (POST /v1/tokens) and
 *     joins (GET /v1/ca, key + CSR, POST /v1/join), `--join-concurrency` at a
 *     time over all workers. Timed, but not part of the connect time.
 *  2. connect: all agents open their control channel (at most
 *     `--connect-concurrency` TLS handshakes in flight over all workers; a
 *     failed attempt is retried after a second) and say hello; timed until the
 *     last one has its welcome, then checked against the coordinator's own
 *     count (GET /healthz). The machine's TCP listen-overflow and SYN-cookie
 *     counters are read around it.
 *  3. idle: `--idle` seconds with every agent heartbeating (facts every 5 s, a
 *     ping, a pull every 30 s); the coordinator's CPU use over that window,
 *     before and again after the runs.
 *  4. round trip, `--runs` times (median reported): POST /v1/runs {targets:
 *     [all], command, timeout: 30}, then follow GET /v1/runs/ID/events (SSE)
 *     until `done`; the clock runs from before the POST to the `done` event.
 *     Then GET /v1/runs/ID must show N results, all `ok`. The breakdown: when
 *     the POST was answered, when the last task reached its agent and the last
 *     result left one (reported by the workers), when the coordinator handled
 *     the last result (its `receivedAt`), its own created -> finished time, and
 *     when the last result event reached the driver.
 *  5. the coordinator's RSS (VmRSS) and CPU seconds (utime + stime from
 *     /proc/PID/stat) after joining, after connecting and after the runs.
 * Before the sizes, `--real-agents K` (default 3) REAL agent processes
 * (`node dist/src/cli/main.js agent --data DIR --join TOKEN`) join a small
 * coordinator, idle `--real-idle` seconds (default 10), and their VmRSS
 * (RssAnon + RssFile) is read from /proc/PID/status; then one command runs
 * through them (really executed).
 *
 * Every process it starts is tracked by PID and killed on exit, failure,
 * time-out (`--timeout`, default 600 s for the whole bench) or a signal; the
 * temp dir is removed (`--keep` keeps it, with the coordinator's log).
 * `--cpu-prof DIR` runs each coordinator with `--cpu-prof` and keeps the
 * profiles in DIR (each round trip's `window_s` locates it in the profile);
 * the profiler slows the coordinator, so do not compare those timings.
 * Experiments that make the simulated agents deviate from the real one:
 * `--sim-no-ping` (no WebSocket ping with each heartbeat), `--sim-no-pull`
 * (no periodic pull). `--pin` puts the coordinator on CPU 0 and the workers
 * on CPU 1 (taskset).
 *
 * Output: progress and a table on stderr, one JSON line on stdout.
 *
 *   npm run build && node dist/bench/control/control-bench.js [--sizes 100,1000,5000] [--runs 3]
 *     [--workers 2] [--join-concurrency 50] [--connect-concurrency 256] [--idle 5]
 *     [--real-agents 3] [--real-idle 10] [--command 'echo hi'] [--timeout 600]
 *     [--coordinator-log-level info] [--cpu-prof DIR] [--pin] [--tmp DIR] [--keep]
 *     [--sim-no-ping] [--sim-no-pull]
 */
import { type ChildProcess, fork, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
} from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runBench } from '../lib/run-bench.js';
import {
  AdminApi,
  type ConnectReport,
  type JoinReport,
  listenCounters,
  type ProcStats,
  procStats,
  type RunStats,
  type WorkerCommand,
  type WorkerInit,
  type WorkerReply,
  type WorkerRequest,
  type WorkerStatus,
  wallMs,
} from './common.js';

const TARGET_ROUND_TRIP_S = 5;
const TARGET_AGENT_RSS_MB = 60;
/** Published by Qcmd (not measured here): 20 pings to 7,000 minions in 21 s. */
const QCMD_PUBLISHED_S = 21;
const QCMD_PUBLISHED_MINIONS = 7000;
const QCMD_PUBLISHED_PINGS = 20;
const RUN_TIMEOUT_S = 30;

interface Options {
  sizes: number[];
  runs: number;
  workers: number;
  joinConcurrency: number;
  connectConcurrency: number;
  idleS: number;
  realAgents: number;
  realIdleS: number;
  command: string;
  timeoutS: number;
  logLevel: string;
  cpuProf: string | null;
  pin: boolean;
  tmp: string;
  keep: boolean;
  simPing: boolean;
  simPull: boolean;
}

// ---------------------------------------------------------------------------
// helpers

function fail(message: string): never {
  throw new Error(message);
}

const benchStart = performance.now();
function say(s: string): void {
  process.stderr.write(`control-bench: [${((performance.now() - benchStart) / 1000).toFixed(1)} s] ${s}\n`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function round(x: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] ?? 0) : ((s[m - 1] ?? 0) + (s[m] ?? 0)) / 2;
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

/** Which coordinator was measured: a hash of the compiled coordinator, protocol and agent files. */
function codeHash(root: string): string {
  const h = createHash('sha256');
  for (const part of ['coordinator', 'protocol', 'agent', 'pki']) {
    const dir = join(root, 'dist', 'src', part);
    if (!existsSync(dir)) continue;
    for (const f of readdirSync(dir).sort()) {
      if (!f.endsWith('.js') || f.endsWith('.test.js')) continue;
      h.update(`${part}/${f}\0`)
        .update(readFileSync(join(dir, f)))
        .update('\0');
    }
  }
  return h.digest('hex').slice(0, 12);
}

function defaultTmp(): string {
  return tmpdir();
}

function parseArgs(argv: string[]): Options {
  const opts: Options = {
    sizes: [100, 1000, 5000],
    runs: 3,
    workers: 2,
    joinConcurrency: 50,
    connectConcurrency: 256,
    idleS: 5,
    realAgents: 3,
    realIdleS: 10,
    command: 'echo hi',
    timeoutS: 600,
    logLevel: 'info',
    cpuProf: null,
    pin: false,
    tmp: defaultTmp(),
    keep: false,
    simPing: true,
    simPull: true,
  };
  const int = (flag: string, v: string | undefined, min = 1): number => {
    const n = Number(v);
    if (v === undefined || !Number.isInteger(n) || n < min)
      fail(`${flag} needs an integer >= ${min}, got ${v ?? 'nothing'}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    const take = () => {
      i++;
      if (v === undefined) fail(`${a} needs a value`);
      return v;
    };
    switch (a) {
      case '--sizes':
        opts.sizes = take()
          .split(',')
          .map((s) => int('--sizes', s.trim().replaceAll('_', '')));
        break;
      case '--runs':
        opts.runs = int(a, take());
        break;
      case '--workers':
        opts.workers = int(a, take());
        break;
      case '--join-concurrency':
        opts.joinConcurrency = int(a, take());
        break;
      case '--connect-concurrency':
        opts.connectConcurrency = int(a, take());
        break;
      case '--idle':
        opts.idleS = int(a, take(), 0);
        break;
      case '--real-agents':
        opts.realAgents = int(a, take(), 0);
        break;
      case '--real-idle':
        opts.realIdleS = int(a, take(), 0);
        break;
      case '--command':
        opts.command = take();
        break;
      case '--timeout':
        opts.timeoutS = int(a, take());
        break;
      case '--coordinator-log-level':
        opts.logLevel = take();
        break;
      case '--cpu-prof':
        opts.cpuProf = resolve(take());
        break;
      case '--pin':
        opts.pin = true;
        break;
      case '--tmp':
        opts.tmp = resolve(take());
        break;
      case '--keep':
        opts.keep = true;
        break;
      case '--sim-no-ping':
        opts.simPing = false;
        break;
      case '--sim-no-pull':
        opts.simPull = false;
        break;
      case '--help':
      case '-h':
        process.stderr.write(
          'usage: node dist/bench/control/control-bench.js [--sizes 100,1000,5000] [--runs 3] [--workers 2]\n' +
            '  [--join-concurrency 50] [--connect-concurrency 256] [--idle 5] [--real-agents 3] [--real-idle 10]\n' +
            "  [--command 'echo hi'] [--timeout 600] [--coordinator-log-level info] [--cpu-prof DIR] [--pin]\n" +
            '  [--tmp DIR] [--keep] [--sim-no-ping] [--sim-no-pull]\n',
        );
        process.exit(0);
        break;
      default:
        fail(`unknown option ${a} (see --help)`);
    }
  }
  return opts;
}

// ---------------------------------------------------------------------------
// processes: every child is tracked by PID and killed on the way out

const children = new Map<number, { child: ChildProcess; what: string }>();
let scratch: string | null = null;
let keepScratch = false;

function track(child: ChildProcess, what: string): number {
  const pid = child.pid ?? fail(`${what}: did not start`);
  children.set(pid, { child, what });
  child.on('exit', () => children.delete(pid));
  return pid;
}

function alive(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
async function stopChild(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (!alive(child)) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => {
    if (alive(child)) child.kill('SIGKILL');
  }, graceMs);
  await exited;
  clearTimeout(timer);
}

function cleanupSync(): void {
  for (const [pid, { child }] of children) {
    if (alive(child)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  children.clear();
  if (scratch && !keepScratch) {
    rmSync(scratch, { recursive: true, force: true });
    say(`removed ${scratch}`);
  } else if (scratch) say(`kept ${scratch}`);
  scratch = null;
}

// ---------------------------------------------------------------------------
// the coordinator

interface CoordinatorProc {
  child: ChildProcess;
  pid: number;
  /** wallMs when it was spawned (a --cpu-prof profile starts about then). */
  startedAt: number;
  url: string;
  token: string;
  ca: string;
  logPath: string;
  api: AdminApi;
}

async function startCoordinator(root: string, dir: string, opts: Options): Promise<CoordinatorProc> {
  mkdirSync(dir, { recursive: true });
  const logPath = join(dir, 'coordinator.log');
  const logFd = openSync(logPath, 'a');
  const nodeArgs = opts.cpuProf
    ? [
        '--cpu-prof',
        '--cpu-prof-dir',
        opts.cpuProf,
        '--cpu-prof-name',
        `coordinator-${Date.now()}.cpuprofile`,
      ]
    : [];
  const args = [
    ...nodeArgs,
    join(root, 'dist', 'src', 'cli', 'main.js'),
    'coordinator',
    '--data',
    join(dir, 'data'),
    '--listen',
    '127.0.0.1:0',
    '--no-client-config',
    '--log-level',
    opts.logLevel,
  ];
  const [cmd, cmdArgs] = opts.pin
    ? ['taskset', ['-c', '0', process.execPath, ...args]]
    : [process.execPath, args];
  const startedAt = wallMs();
  const child = spawn(cmd as string, cmdArgs as string[], {
    stdio: ['ignore', 'pipe', logFd],
    env: { ...process.env, CANOPY_CONFIG: join(dir, 'client-config.json') },
  });
  closeSync(logFd);
  const pid = track(child, 'coordinator');
  const url = await new Promise<string>((resolveUrl, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error('the coordinator did not start within 30 s')), 30_000);
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (chunk: string) => {
      out += chunk;
      const m = /listening on (https:\/\/\S+)/.exec(out);
      if (m?.[1]) {
        clearTimeout(timer);
        resolveUrl(m[1]);
      }
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the coordinator exited (${code ?? signal}) before listening; see ${logPath}`));
    });
  });
  child.stdout?.resume();
  const client = JSON.parse(readFileSync(join(dir, 'data', 'client.json'), 'utf8')) as {
    url: string;
    token: string;
    ca: string;
  };
  if (client.url !== url) fail(`client.json says ${client.url}, the coordinator printed ${url}`);
  // With taskset the tracked PID is taskset's, which execs node: same PID.
  return {
    child,
    pid,
    startedAt,
    url,
    token: client.token,
    ca: client.ca,
    logPath,
    api: new AdminApi(client, 4),
  };
}

function logCounts(path: string): { warn: number; error: number; firstWarn: string | null } {
  let warn = 0;
  let error = 0;
  let firstWarn: string | null = null;
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const m = /"level":(\d+)/.exec(line);
    const level = Number(m?.[1] ?? 0);
    if (level >= 50) error++;
    else if (level >= 40) warn++;
    if (level >= 40 && !firstWarn) firstWarn = /"msg":"([^"]*)"/.exec(line)?.[1] ?? line.slice(0, 200);
  }
  return { warn, error, firstWarn };
}

// ---------------------------------------------------------------------------
// simulator workers

class Worker {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  readonly ready: Promise<void>;
  readonly pid: number;

  constructor(
    readonly child: ChildProcess,
    readonly index: number,
  ) {
    this.pid = track(child, `sim worker ${index}`);
    this.ready = new Promise((resolveReady, reject) => {
      child.on('message', (m: WorkerReply) => {
        if (m.id === 0) {
          resolveReady();
          return;
        }
        const w = this.waiting.get(m.id);
        if (!w) return;
        this.waiting.delete(m.id);
        if (m.ok) w.resolve(m.data);
        else w.reject(new Error(`sim worker ${index}: ${m.error}`));
      });
      child.on('exit', (code, signal) => {
        const err = new Error(`sim worker ${index} exited (${code ?? signal})`);
        reject(err);
        for (const w of this.waiting.values()) w.reject(err);
        this.waiting.clear();
      });
    });
  }

  request<T>(req: WorkerCommand, timeoutMs: number): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolveReq, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`sim worker ${this.index}: no answer to ${req.cmd} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolveReq(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.child.send({ ...req, id } as WorkerRequest);
    });
  }
}

function startWorker(index: number, opts: Options): Worker {
  // The same extension as this file: .js from dist, .ts under tsx (fork keeps node's --import flags).
  const ext = fileURLToPath(import.meta.url).endsWith('.ts') ? 'ts' : 'js';
  const script = fileURLToPath(new URL(`./sim-agents.${ext}`, import.meta.url));
  const child = opts.pin
    ? fork(script, [], {
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
        execPath: 'taskset',
        execArgv: ['-c', '1', process.execPath, ...process.execArgv],
      })
    : fork(script, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  return new Worker(child, index);
}

function simName(i: number): string {
  return `sim-${String(i + 1).padStart(5, '0')}`;
}

/** One source address per simulated agent: 127.10.X.Y (each 250 agents a new X). */
function simAddress(i: number): string {
  return `127.10.${Math.floor(i / 250)}.${(i % 250) + 1}`;
}

// ---------------------------------------------------------------------------
// one size

interface RoundTrip {
  run_id: string;
  /** When it started and ended, in seconds since the coordinator was spawned (to find it in a --cpu-prof profile). */
  window_s: [number, number];
  total_s: number;
  post_s: number;
  first_task_s: number;
  last_task_s: number;
  last_result_sent_s: number;
  /** When the coordinator handled the last result (max receivedAt), from before the POST. */
  last_result_received_s: number;
  /** The run's own finishedAt - createdAt, as the coordinator recorded it. */
  coordinator_run_s: number;
  last_duplicate_task_s: number;
  /** When the driver got the last `result` event of the stream (the `done` event ends total_s). */
  last_sse_result_s: number;
  get_run_s: number;
  results: number;
  ok: number;
  sse_results: number;
  tasks_received: number;
  duplicate_tasks: number;
  result_acks: number;
  coordinator_cpu_s: number;
  workers_cpu_s: number;
}

interface SizeResult {
  n: number;
  workers: number;
  join_s: number;
  joins_per_s: number;
  join_failed: number;
  join_sim_cpu_s: number;
  connect_s: number;
  connects_per_s: number;
  connect_failed: number;
  connect_sim_cpu_s: number;
  /** Machine-wide TcpExt ListenOverflows / SyncookiesSent during the connect phase. */
  connect_listen_overflows: number;
  connect_syncookies: number;
  connected_per_coordinator: number;
  coordinator_rss_start_mb: number;
  coordinator_rss_after_join_mb: number;
  coordinator_rss_after_connect_mb: number;
  coordinator_rss_after_runs_mb: number;
  coordinator_hwm_mb: number;
  coordinator_cpu_join_s: number;
  coordinator_cpu_connect_s: number;
  coordinator_idle_cpu_pct: number;
  coordinator_idle_after_runs_cpu_pct: number;
  coordinator_cpu_runs_s: number;
  coordinator_cpu_total_s: number;
  round_trip_median_s: number;
  round_trip_min_s: number;
  round_trip_max_s: number;
  round_trips: RoundTrip[];
  workers_rss_mb: number;
  disconnects: number;
  refusals: number;
  invalid: number;
  first_problem: string | null;
  coordinator_log_warn: number;
  coordinator_log_error: number;
  coordinator_first_warn: string | null;
  target_met: boolean;
  /** 1-minute load average when the size started and when it ended (others' work on the machine shows here). */
  loadavg: [number, number];
}

function stats(pid: number): ProcStats {
  return procStats(pid) ?? fail(`process ${pid} is gone`);
}

async function all<T>(workers: Worker[], req: WorkerCommand, timeoutMs: number): Promise<T[]> {
  return Promise.all(workers.map((w) => w.request<T>(req, timeoutMs)));
}

async function roundTrip(
  coord: CoordinatorProc,
  workers: Worker[],
  n: number,
  command: string,
  timeoutMs: number,
): Promise<RoundTrip> {
  const before = stats(coord.pid);
  const workersBefore = await all<WorkerStatus>(workers, { cmd: 'status' }, 10_000);
  const t0 = wallMs();
  const run = await coord.api.call<{ id: string; hosts: string[] }>(
    'POST',
    '/v1/runs',
    { targets: ['all'], command, timeout: RUN_TIMEOUT_S },
    timeoutMs,
  );
  const tPost = wallMs();
  if (run.hosts.length !== n) fail(`run ${run.id} targets ${run.hosts.length} hosts, not ${n}`);
  let sseResults = 0;
  let tDone = 0;
  let tLastSseResult = 0;
  await coord.api.events(
    `/v1/runs/${run.id}/events`,
    (event) => {
      if (event === 'result') {
        sseResults++;
        tLastSseResult = wallMs();
      }
      if (event === 'done') {
        tDone = wallMs();
        return true;
      }
      return false;
    },
    Math.max(1000, timeoutMs - (wallMs() - t0)),
  );
  if (tDone === 0) fail(`run ${run.id}: the event stream ended without a done event`);
  const after = stats(coord.pid);
  const workersAfter = await all<WorkerStatus>(workers, { cmd: 'status' }, 10_000);
  const tGet0 = wallMs();
  const got = await coord.api.call<{
    run: { createdAt: number; finishedAt?: number };
    results: { state: string; receivedAt: number }[];
    summary: { counts: Record<string, number> };
  }>('GET', `/v1/runs/${run.id}`, undefined, timeoutMs);
  const getS = (wallMs() - tGet0) / 1000;
  await sleep(200); // the last result-acks
  const rs = await all<RunStats>(workers, { cmd: 'run-stats', runId: run.id }, 10_000);
  const since = (t: number) => (t > 0 ? round((t - t0) / 1000) : -1);
  const firstTask = Math.min(...rs.map((r) => r.firstTaskAt).filter((t) => t > 0));
  const lastTask = Math.max(...rs.map((r) => r.lastTaskAt));
  const lastResult = Math.max(...rs.map((r) => r.lastResultAt));
  const cpuOf = (s: WorkerStatus[]) => s.reduce((a, w) => a + w.cpuSeconds, 0);
  return {
    run_id: run.id,
    window_s: [round((t0 - coord.startedAt) / 1000, 2), round((tDone - coord.startedAt) / 1000, 2)],
    total_s: round((tDone - t0) / 1000),
    post_s: round((tPost - t0) / 1000),
    first_task_s: Number.isFinite(firstTask) ? since(firstTask) : -1,
    last_task_s: since(lastTask),
    last_result_sent_s: since(lastResult),
    last_result_received_s: since(Math.max(...got.results.map((r) => r.receivedAt))),
    coordinator_run_s: round(((got.run.finishedAt ?? 0) - got.run.createdAt) / 1000),
    last_duplicate_task_s: since(Math.max(...rs.map((r) => r.lastDuplicateAt))),
    last_sse_result_s: since(tLastSseResult),
    get_run_s: round(getS),
    results: got.results.length,
    ok: got.summary.counts.ok ?? 0,
    sse_results: sseResults,
    tasks_received: rs.reduce((a, r) => a + r.tasks, 0),
    duplicate_tasks: rs.reduce((a, r) => a + r.duplicates, 0),
    result_acks: rs.reduce((a, r) => a + r.resultAcks, 0),
    coordinator_cpu_s: round(after.cpuSeconds - before.cpuSeconds, 2),
    workers_cpu_s: round(cpuOf(workersAfter) - cpuOf(workersBefore), 2),
  };
}

async function measureSize(root: string, n: number, opts: Options, deadline: number): Promise<SizeResult> {
  const left = () => deadline - wallMs();
  const dir = join(scratch ?? fail('no temp dir'), `n${n}`);
  const load0 = loadavg()[0] ?? 0;
  say(`N=${n}: starting the coordinator (load average ${load0.toFixed(2)})`);
  const coord = await startCoordinator(root, dir, opts);
  const s0 = stats(coord.pid);
  const workerCount = Math.max(1, Math.min(opts.workers, n));
  const workers = Array.from({ length: workerCount }, (_, i) => startWorker(i, opts));
  try {
    await Promise.all(workers.map((w) => w.ready));
    const names = Array.from({ length: n }, (_, i) => ({ name: simName(i), address: simAddress(i) }));
    await Promise.all(
      workers.map((w, k) => {
        const init: WorkerInit = {
          url: coord.url,
          adminToken: coord.token,
          ca: coord.ca,
          agents: names.filter((_, i) => i % workerCount === k),
          joinConcurrency: Math.max(1, Math.ceil(opts.joinConcurrency / workerCount)),
          connectConcurrency: Math.max(1, Math.ceil(opts.connectConcurrency / workerCount)),
          heartbeatMs: 5000,
          ping: opts.simPing,
          periodicPull: opts.simPull,
        };
        return w.request({ cmd: 'init', init }, 10_000);
      }),
    );

    say(`N=${n}: joining ${n} agents (${opts.joinConcurrency} at a time, ${workerCount} workers)`);
    let t = wallMs();
    const joins = await all<JoinReport>(workers, { cmd: 'join' }, left());
    const joinS = (wallMs() - t) / 1000;
    const joinFailed = joins.reduce((a, j) => a + j.failed, 0);
    if (joinFailed > 0)
      say(`N=${n}: ${joinFailed} joins failed, first: ${joins.find((j) => j.firstError)?.firstError}`);
    const s1 = stats(coord.pid);
    say(`N=${n}: joined in ${joinS.toFixed(2)} s; connecting`);

    t = wallMs();
    const listen0 = listenCounters();
    const connects = await all<ConnectReport>(workers, { cmd: 'connect' }, left());
    const listen1 = listenCounters();
    const lastWelcome = Math.max(...connects.map((c) => c.lastWelcomeAt));
    const connectS = (lastWelcome - t) / 1000;
    const connectFailed = connects.reduce((a, c) => a + c.failed, 0);
    if (connectFailed > 0)
      say(
        `N=${n}: ${connectFailed} connects failed, first: ${connects.find((c) => c.firstError)?.firstError}`,
      );
    const health = await coord.api.call<{ agents: number }>('GET', '/healthz');
    const s2 = stats(coord.pid);
    say(
      `N=${n}: ${connects.reduce((a, c) => a + c.welcomed, 0)} welcomed in ${connectS.toFixed(2)} s; coordinator counts ${health.agents} connected`,
    );

    const idleCpu = async (when: string): Promise<number> => {
      if (opts.idleS <= 0) return 0;
      const a = stats(coord.pid);
      await sleep(opts.idleS * 1000);
      const pct = ((stats(coord.pid).cpuSeconds - a.cpuSeconds) / opts.idleS) * 100;
      say(`N=${n}: idle ${when}, ${n} agents heartbeating: coordinator CPU ${pct.toFixed(1)}%`);
      return pct;
    };
    const idlePct = await idleCpu('before the runs');

    const s3 = stats(coord.pid);
    const trips: RoundTrip[] = [];
    for (let r = 0; r < opts.runs; r++) {
      if (left() < 5000) fail('out of time (--timeout)');
      const trip = await roundTrip(
        coord,
        workers,
        n,
        opts.command,
        Math.min(left(), (RUN_TIMEOUT_S + 60) * 1000),
      );
      trips.push(trip);
      say(
        `N=${n}: round trip ${r + 1}/${opts.runs}: ${trip.total_s.toFixed(3)} s (POST ${trip.post_s.toFixed(3)}, last task in ${trip.last_task_s.toFixed(3)}, last result out ${trip.last_result_sent_s.toFixed(3)}); ${trip.ok}/${n} ok; coordinator CPU ${trip.coordinator_cpu_s} s`,
      );
      if (trip.ok !== n) fail(`run ${trip.run_id}: only ${trip.ok} of ${n} hosts ok`);
      await sleep(1000);
    }
    const s4 = stats(coord.pid);
    const idleAfterPct = await idleCpu('after the runs');
    const ws = await all<WorkerStatus>(workers, { cmd: 'status' }, 10_000);
    const totals = trips.map((x) => x.total_s);
    const log = logCounts(coord.logPath);
    const med = median(totals);
    return {
      n,
      workers: workerCount,
      join_s: round(joinS),
      joins_per_s: round(n / joinS, 1),
      join_failed: joinFailed,
      join_sim_cpu_s: round(
        joins.reduce((a, j) => a + j.cpuSeconds, 0),
        2,
      ),
      connect_s: round(connectS),
      connects_per_s: round(n / connectS, 1),
      connect_failed: connectFailed,
      connect_sim_cpu_s: round(
        connects.reduce((a, c) => a + c.cpuSeconds, 0),
        2,
      ),
      connect_listen_overflows: listen1.listenOverflows - listen0.listenOverflows,
      connect_syncookies: listen1.syncookiesSent - listen0.syncookiesSent,
      connected_per_coordinator: health.agents,
      coordinator_rss_start_mb: round(s0.rssMb, 1),
      coordinator_rss_after_join_mb: round(s1.rssMb, 1),
      coordinator_rss_after_connect_mb: round(s2.rssMb, 1),
      coordinator_rss_after_runs_mb: round(s4.rssMb, 1),
      coordinator_hwm_mb: round(s4.hwmMb, 1),
      coordinator_cpu_join_s: round(s1.cpuSeconds - s0.cpuSeconds, 2),
      coordinator_cpu_connect_s: round(s2.cpuSeconds - s1.cpuSeconds, 2),
      coordinator_idle_cpu_pct: round(idlePct, 1),
      coordinator_idle_after_runs_cpu_pct: round(idleAfterPct, 1),
      coordinator_cpu_runs_s: round(s4.cpuSeconds - s3.cpuSeconds, 2),
      coordinator_cpu_total_s: round(s4.cpuSeconds, 2),
      round_trip_median_s: round(med),
      round_trip_min_s: round(Math.min(...totals)),
      round_trip_max_s: round(Math.max(...totals)),
      round_trips: trips,
      workers_rss_mb: round(
        ws.reduce((a, w) => a + w.rssMb, 0),
        1,
      ),
      disconnects: ws.reduce((a, w) => a + w.disconnects, 0),
      refusals: ws.reduce((a, w) => a + w.refusals, 0),
      invalid: ws.reduce((a, w) => a + w.invalid, 0),
      first_problem: ws.find((w) => w.firstProblem)?.firstProblem ?? null,
      coordinator_log_warn: log.warn,
      coordinator_log_error: log.error,
      coordinator_first_warn: log.firstWarn,
      // Held: every agent connected (first attempts that failed and were retried are reported apart).
      target_met: med < TARGET_ROUND_TRIP_S && health.agents === n,
      loadavg: [round(load0, 2), round(loadavg()[0] ?? 0, 2)],
    };
  } finally {
    await Promise.all(
      workers.map(async (w) => {
        if (!alive(w.child)) return;
        await w.request({ cmd: 'stop' }, 5000).catch(() => {});
        await stopChild(w.child, 3000);
      }),
    );
    coord.api.close();
    await stopChild(coord.child, 10_000);
  }
}

// ---------------------------------------------------------------------------
// real agents: idle RSS

interface RealAgentsResult {
  agents: number;
  idle_s: number;
  connect_s: number;
  rss_idle_mb: number[];
  rss_idle_max_mb: number;
  rss_idle_anon_mb: number[];
  rss_idle_file_mb: number[];
  rss_after_run_mb: number[];
  hwm_mb: number[];
  run_s: number;
  run_ok: number;
  target_met: boolean;
}

async function realAgents(root: string, opts: Options, deadline: number): Promise<RealAgentsResult> {
  const k = opts.realAgents;
  const dir = join(scratch ?? fail('no temp dir'), 'real');
  say(`real agents: starting a coordinator and ${k} agent processes`);
  const coord = await startCoordinator(root, dir, { ...opts, cpuProf: null });
  const agents: { child: ChildProcess; pid: number; name: string }[] = [];
  try {
    const t0 = wallMs();
    for (let i = 1; i <= k; i++) {
      const name = `real-${i}`;
      const { token } = await coord.api.call<{ token: string }>('POST', '/v1/tokens', { ttl: 600, name });
      const logFd = openSync(join(dir, `${name}.log`), 'a');
      // Through bin/canopy, as an operator starts it (it gives the agent its memory flags).
      const child = spawn(
        join(root, 'bin', 'canopy'),
        ['agent', '--data', join(dir, name), '--join', token, '--name', name, '--bind', `127.20.0.${i}`],
        { stdio: ['ignore', 'ignore', logFd] },
      );
      closeSync(logFd);
      agents.push({ child, pid: track(child, name), name });
    }
    for (;;) {
      const { agents: list } = await coord.api.call<{ agents: { name: string; online: boolean }[] }>(
        'GET',
        '/v1/agents',
      );
      if (list.filter((a) => a.online).length === k) break;
      for (const a of agents)
        if (!alive(a.child))
          fail(`real agent ${a.name} exited (${a.child.exitCode}); see ${dir}/${a.name}.log`);
      if (wallMs() - t0 > 30_000 || wallMs() > deadline) fail('real agents did not all connect within 30 s');
      await sleep(100);
    }
    const connectS = (wallMs() - t0) / 1000;
    say(
      `real agents: ${k} online after ${connectS.toFixed(2)} s (spawn + join + connect); idling ${opts.realIdleS} s`,
    );
    await sleep(opts.realIdleS * 1000);
    const idle = agents.map((a) => stats(a.pid));
    const t1 = wallMs();
    const run = await coord.api.call<{ id: string }>('POST', '/v1/runs', {
      targets: ['all'],
      command: opts.command,
      timeout: RUN_TIMEOUT_S,
    });
    await coord.api.events(`/v1/runs/${run.id}/events`, (e) => e === 'done', (RUN_TIMEOUT_S + 30) * 1000);
    const runS = (wallMs() - t1) / 1000;
    const got = await coord.api.call<{ summary: { counts: Record<string, number> } }>(
      'GET',
      `/v1/runs/${run.id}`,
    );
    await sleep(1000);
    const afterRun = agents.map((a) => stats(a.pid));
    const rss = idle.map((s) => round(s.rssMb, 1));
    say(
      `real agents: idle VmRSS ${rss.join(', ')} MB; one '${opts.command}' round trip ${runS.toFixed(3)} s`,
    );
    return {
      agents: k,
      idle_s: opts.realIdleS,
      connect_s: round(connectS),
      rss_idle_mb: rss,
      rss_idle_max_mb: Math.max(...rss),
      rss_idle_anon_mb: idle.map((s) => round(s.anonMb, 1)),
      rss_idle_file_mb: idle.map((s) => round(s.fileMb, 1)),
      rss_after_run_mb: afterRun.map((s) => round(s.rssMb, 1)),
      hwm_mb: afterRun.map((s) => round(s.hwmMb, 1)),
      run_s: round(runS),
      run_ok: got.summary.counts.ok ?? 0,
      target_met: Math.max(...rss) < TARGET_AGENT_RSS_MB,
    };
  } finally {
    await Promise.all(agents.map((a) => stopChild(a.child, 5000)));
    coord.api.close();
    await stopChild(coord.child, 10_000);
  }
}

// ---------------------------------------------------------------------------
// report

function table(sizes: SizeResult[], real: RealAgentsResult | null, opts: Options): string {
  const cols = sizes.map((s) => `N = ${s.n.toLocaleString('en-US')}`);
  const rows: [string, (s: SizeResult) => string][] = [
    ['join (token + CA + CSR + join), s', (s) => `${s.join_s.toFixed(2)} (${s.joins_per_s}/s)`],
    [
      `connect all (TLS 1.3 + hello -> welcome, ${opts.connectConcurrency} in flight), s`,
      (s) => `${s.connect_s.toFixed(2)} (${s.connects_per_s}/s)`,
    ],
    [
      'connected per coordinator (connects that failed and were retried)',
      (s) => `${s.connected_per_coordinator} (${s.connect_failed})`,
    ],
    [
      'TCP listen overflows / SYN cookies while connecting (whole machine)',
      (s) => `${s.connect_listen_overflows} / ${s.connect_syncookies}`,
    ],
    [
      `**round trip, all N results (median of ${opts.runs}), s**`,
      (s) =>
        `**${s.round_trip_median_s.toFixed(3)}** [${s.round_trip_min_s.toFixed(3)}-${s.round_trip_max_s.toFixed(3)}]`,
    ],
    ['  POST /v1/runs answered, s', (s) => med(s, (r) => r.post_s)],
    ['  last task reached its agent, s', (s) => med(s, (r) => r.last_task_s)],
    ['  last result sent by an agent, s', (s) => med(s, (r) => r.last_result_sent_s)],
    ['  last result handled by the coordinator, s', (s) => med(s, (r) => r.last_result_received_s)],
    ['  run created -> finished (coordinator clock), s', (s) => med(s, (r) => r.coordinator_run_s)],
    ['  last result event on the SSE stream, s', (s) => med(s, (r) => r.last_sse_result_s)],
    ['  tasks re-sent on a pull while running (per run)', (s) => med(s, (r) => r.duplicate_tasks, 0)],
    ['  GET /v1/runs/ID afterwards, s', (s) => med(s, (r) => r.get_run_s)],
    ['coordinator CPU per round trip, s', (s) => med(s, (r) => r.coordinator_cpu_s)],
    ['simulator CPU per round trip (all workers), s', (s) => med(s, (r) => r.workers_cpu_s)],
    [
      `vs target (${TARGET_ROUND_TRIP_S} s)`,
      (s) => `${(s.round_trip_median_s / TARGET_ROUND_TRIP_S).toFixed(2)}x of the budget`,
    ],
    [
      `Qcmd's PUBLISHED ${QCMD_PUBLISHED_S} s (${QCMD_PUBLISHED_PINGS} pings to ${QCMD_PUBLISHED_MINIONS.toLocaleString('en-US')} minions, not measured here) / median; ${QCMD_PUBLISHED_PINGS} x median, s`,
      (s) =>
        `${(QCMD_PUBLISHED_S / s.round_trip_median_s).toFixed(1)}x; ${(QCMD_PUBLISHED_PINGS * s.round_trip_median_s).toFixed(1)}`,
    ],
    [
      'coordinator RSS: start / joined / connected / after runs, MB',
      (s) =>
        `${s.coordinator_rss_start_mb.toFixed(0)} / ${s.coordinator_rss_after_join_mb.toFixed(0)} / ${s.coordinator_rss_after_connect_mb.toFixed(0)} / ${s.coordinator_rss_after_runs_mb.toFixed(0)}`,
    ],
    ['coordinator peak RSS (VmHWM), MB', (s) => s.coordinator_hwm_mb.toFixed(0)],
    ['simulator CPU: joins / connects, s', (s) => `${s.join_sim_cpu_s} / ${s.connect_sim_cpu_s}`],
    [
      'coordinator CPU: joins / connects / runs, s',
      (s) => `${s.coordinator_cpu_join_s} / ${s.coordinator_cpu_connect_s} / ${s.coordinator_cpu_runs_s}`,
    ],
    [
      'coordinator CPU idle, N agents heartbeating, before / after the runs, %',
      (s) => `${s.coordinator_idle_cpu_pct.toFixed(1)} / ${s.coordinator_idle_after_runs_cpu_pct.toFixed(1)}`,
    ],
    ['simulator RSS (all workers), MB', (s) => s.workers_rss_mb.toFixed(0)],
    [
      'disconnects / refusals / coordinator warnings',
      (s) => `${s.disconnects} / ${s.refusals} / ${s.coordinator_log_warn}`,
    ],
    ['1-min load average at start / end (2 cores)', (s) => `${s.loadavg[0]} / ${s.loadavg[1]}`],
    ['target met (round trip < 5 s, all N connected)', (s) => (s.target_met ? 'yes' : '**no**')],
  ];
  const lines = [`| | ${cols.join(' | ')} |`, `|---|${cols.map(() => '---:').join('|')}|`];
  for (const [label, f] of rows) lines.push(`| ${label} | ${sizes.map(f).join(' | ')} |`);
  if (real) {
    lines.push(
      '',
      `real agent processes (${real.agents}, idle ${real.idle_s} s): VmRSS ${real.rss_idle_mb.join(' / ')} MB ` +
        `(RssAnon ${real.rss_idle_anon_mb.join(' / ')}, RssFile ${real.rss_idle_file_mb.join(' / ')}) ` +
        `(target < ${TARGET_AGENT_RSS_MB} MB: ${real.target_met ? 'met' : '**missed**'}); after one '${opts.command}' ` +
        `run: ${real.rss_after_run_mb.join(' / ')} MB (VmHWM ${real.hwm_mb.join(' / ')}); that run: ` +
        `${real.run_ok}/${real.agents} ok in ${real.run_s.toFixed(3)} s`,
    );
  }
  return `${lines.join('\n')}\n`;
}

function med(s: SizeResult, f: (r: RoundTrip) => number, digits = 3): string {
  return median(s.round_trips.map(f)).toFixed(digits);
}

// ---------------------------------------------------------------------------

async function main(opts: Options): Promise<number> {
  const root = projectRoot();
  if (!existsSync(join(root, 'dist', 'src', 'cli', 'main.js')))
    fail('dist/ is missing: run npm run build first');
  const deadline = wallMs() + opts.timeoutS * 1000;
  mkdirSync(opts.tmp, { recursive: true });
  scratch = mkdtempSync(join(opts.tmp, 'canopy-control-bench-'));
  keepScratch = opts.keep;
  if (opts.cpuProf) mkdirSync(opts.cpuProf, { recursive: true });
  const hash = codeHash(root);
  say(`code_hash ${hash}; ${cpus().length} cores; node ${process.version}; temp ${scratch}`);
  const timer = setTimeout(() => {
    process.stderr.write(`control-bench: out of time after ${opts.timeoutS} s (--timeout); cleaning up\n`);
    cleanupSync();
    process.exit(1);
  }, opts.timeoutS * 1000);
  timer.unref();

  const real = opts.realAgents > 0 ? await realAgents(root, opts, deadline) : null;
  const sizes: SizeResult[] = [];
  for (const n of opts.sizes) sizes.push(await measureSize(root, n, opts, deadline));

  process.stderr.write(`\n${table(sizes, real, opts)}\n`);
  const machine = `${cpus().length} cores (${cpus()[0]?.model ?? '?'}), node ${process.version}`;
  process.stdout.write(
    `${JSON.stringify({
      bench: 'control',
      ts: new Date().toISOString(),
      code_hash: hash,
      machine,
      command: opts.command,
      workers: opts.workers,
      join_concurrency: opts.joinConcurrency,
      connect_concurrency: opts.connectConcurrency,
      pinned: opts.pin,
      sim_ping: opts.simPing,
      sim_periodic_pull: opts.simPull,
      coordinator_log_level: opts.logLevel,
      target_round_trip_s: TARGET_ROUND_TRIP_S,
      qcmd_published_s: QCMD_PUBLISHED_S,
      real_agents: real,
      sizes,
    })}\n`,
  );
  const ok = sizes.every((s) => s.target_met) && (real?.target_met ?? true);
  if (!ok) say('a target was missed (see target_met)');
  return 0;
}

export async function cli(argv: string[]): Promise<void> {
  await runBench('control-bench', () => main(parseArgs(argv)), cleanupSync);
}

if (import.meta.url === `file://${process.argv[1]}`) await cli(process.argv.slice(2));
