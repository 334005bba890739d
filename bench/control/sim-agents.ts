/**
 * A simulator worker of the control-plane bench: one process holding many
 * simulated agents. Forked by control-bench.ts, driven over IPC (see
 * WorkerRequest in common.ts); it exits when the driver goes away.
 *
 * Each simulated agent is what a real one looks like to the coordinator:
 *  - it joins once with its own one-time token (POST /v1/tokens with the
 *    admin token, then the real `joinCoordinator`: GET /v1/ca, a fresh P-256
 *    key and CSR, POST /v1/join), from its own source address in 127.0.0.0/8;
 *  - it holds one `ws` WebSocket over TLS 1.3 with its own client
 *    certificate, pinning the coordinator's CA and SAN like src/agent/agent.ts;
 *  - it speaks the real protocol (`encode` / `decodeCoordinatorMessage`):
 *    hello with facts, pull on welcome and every pullIntervalMs, a heartbeat
 *    (with facts) and a ping every heartbeat interval;
 *  - on a task addressed to it: ack, then at once a result with state `ok`
 *    and the command's "output" (`echo X` prints X, anything else prints the
 *    host name); a task it already answered gets ack + the same result again,
 *    as a real agent answers from its journal.
 * It runs no process and writes no journal: what is measured is the
 * coordinator, not the agents' hosts.
 */
import { randomInt } from 'node:crypto';
import { release } from 'node:os';
import WebSocket from 'ws';
import { type AgentIdentity, controlSocket, joinCoordinator } from '../../src/agent/index.js';
import {
  type AgentMessage,
  decodeCoordinatorMessage,
  encode,
  type Facts,
  type Task,
  type TaskResult,
  type WithoutV,
} from '../../src/protocol/index.js';
import {
  AdminApi,
  type ConnectReport,
  type JoinReport,
  procStats,
  type RunStats,
  type WorkerInit,
  type WorkerReply,
  type WorkerRequest,
  type WorkerStatus,
  wallMs,
} from './common.js';

const RECONNECT_MS = 1000;
const OS_NAME = 'Debian GNU/Linux 12 (bookworm)';
const KERNEL = release();
const STARTED = Date.now();

const counters = {
  disconnects: 0,
  reconnects: 0,
  refusals: 0,
  invalid: 0,
  firstProblem: null as string | null,
};

function problem(what: string): void {
  counters.firstProblem ??= what;
}

interface RunCounters {
  tasks: number;
  duplicates: number;
  resultAcks: number;
  firstTaskAt: number;
  lastTaskAt: number;
  lastResultAt: number;
  lastDuplicateAt: number;
}

const runs = new Map<string, RunCounters>();

function runCounters(runId: string): RunCounters {
  let r = runs.get(runId);
  if (!r) {
    r = {
      tasks: 0,
      duplicates: 0,
      resultAcks: 0,
      firstTaskAt: 0,
      lastTaskAt: 0,
      lastResultAt: 0,
      lastDuplicateAt: 0,
    };
    runs.set(runId, r);
  }
  return r;
}

/** What `echo` would print; anything else "prints" the host name. */
function simulatedOutput(command: string | string[], host: string): string {
  const argv = Array.isArray(command) ? command : command.trim().split(/\s+/);
  if (argv[0] === 'echo') return `${argv.slice(1).join(' ')}\n`;
  return `${host}\n`;
}

class SimAgent {
  identity: AgentIdentity | undefined;
  ws: WebSocket | undefined;
  welcomed = false;
  /** wallMs of the latest welcome. */
  welcomedAt = 0;
  private beatTimer: NodeJS.Timeout | undefined;
  private pullTimer: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** Results already sent, by task id (a real agent keeps them in its journal). */
  private readonly answered = new Map<string, string>();
  private readonly labels: Record<string, string>;

  constructor(
    readonly name: string,
    readonly address: string,
    private readonly heartbeatMs: number,
    private readonly ping: boolean,
    private readonly periodicPull: boolean,
  ) {
    const n = Number(/(\d+)$/.exec(name)?.[1] ?? 0);
    this.labels = { role: n % 4 === 0 ? 'db' : 'web', idc: n % 2 === 0 ? 'bj' : 'sh', sim: 'true' };
  }

  private facts(): Facts {
    const now = Date.now();
    return {
      hostname: this.name,
      os: OS_NAME,
      kernel: KERNEL,
      arch: process.arch,
      addresses: [this.address],
      labels: this.labels,
      version: '0.1.0',
      uptimeSec: 86_400 + Math.round((now - STARTED) / 1000),
      agentUptimeSec: Math.round((now - STARTED) / 1000),
      load: [0.12, 0.08, 0.05],
      roots: [],
      runAs: [],
      heartbeatMs: this.heartbeatMs,
    };
  }

  private send(message: WithoutV<AgentMessage>): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(encode(message));
  }

  /** Opens the control channel; resolves on the welcome, rejects if the connection fails first. */
  connect(): Promise<void> {
    const id = this.identity;
    if (!id) return Promise.reject(new Error(`${this.name} has not joined`));
    return new Promise((resolve, reject) => {
      let settled = false;
      const settle = (err?: Error) => {
        if (settled) return;
        settled = true;
        if (err) reject(err);
        else resolve();
      };
      // Exactly the real agent's socket (src/agent's controlSocket), with a longer handshake timeout
      // for thousands of simultaneous handshakes.
      const { url, options } = controlSocket(id, { bind: this.address, handshakeTimeoutMs: 30_000 });
      const ws = new WebSocket(url, options);
      this.ws = ws;
      ws.on('unexpected-response', (_req, res) => {
        counters.refusals++;
        problem(`${this.name}: coordinator refused the connection (HTTP ${res.statusCode})`);
        res.resume();
        ws.terminate();
        settle(new Error(`HTTP ${res.statusCode}`));
      });
      ws.on('open', () => {
        this.send({ type: 'hello', facts: this.facts(), running: [] });
        this.startTimers();
      });
      ws.on('message', (data, isBinary) => {
        if (isBinary) return;
        const decoded = decodeCoordinatorMessage(data.toString());
        if (!decoded.ok) {
          counters.invalid++;
          problem(`${this.name}: invalid message from the coordinator: ${decoded.reason}`);
          return;
        }
        const m = decoded.message;
        switch (m.type) {
          case 'welcome':
            this.welcomed = true;
            this.welcomedAt = wallMs();
            this.send({ type: 'pull' });
            clearInterval(this.pullTimer);
            if (this.periodicPull)
              this.pullTimer = setInterval(() => this.send({ type: 'pull' }), m.pullIntervalMs);
            settle();
            return;
          case 'task':
            this.onTask(m.task);
            return;
          case 'result-ack': {
            const runId = m.taskId.slice(0, m.taskId.indexOf(':'));
            runCounters(runId).resultAcks++;
            return;
          }
          case 'refuse':
            counters.refusals++;
            problem(`${this.name}: coordinator refused a message: ${m.code} ${m.message}`);
            return;
          case 'renewed':
            return;
        }
      });
      ws.on('close', () => {
        if (this.ws !== ws) return;
        this.welcomed = false;
        clearInterval(this.beatTimer);
        clearInterval(this.pullTimer);
        settle(new Error('connection closed before the welcome'));
        if (this.stopped) return;
        counters.disconnects++;
        problem(`${this.name}: lost its connection`);
        this.reconnectTimer = setTimeout(() => {
          counters.reconnects++;
          this.connect().catch(() => {});
        }, RECONNECT_MS);
      });
      ws.on('error', (err) => {
        problem(`${this.name}: ${err.message}`);
        settle(err);
      });
    });
  }

  private startTimers(): void {
    clearInterval(this.beatTimer);
    // The first beat at a random point of the interval, so the fleet's heartbeats spread out.
    const first = randomInt(this.heartbeatMs);
    this.beatTimer = setTimeout(() => {
      this.beat();
      this.beatTimer = setInterval(() => this.beat(), this.heartbeatMs);
    }, first);
  }

  private beat(): void {
    this.send({ type: 'heartbeat', facts: this.facts(), running: [] });
    if (this.ping && this.ws?.readyState === WebSocket.OPEN) this.ws.ping();
  }

  private onTask(task: Task): void {
    const stats = runCounters(task.runId);
    const at = wallMs();
    stats.tasks++;
    if (task.host !== this.name) {
      problem(`${this.name}: got a task for ${task.host}`);
      return;
    }
    const previous = this.answered.get(task.id);
    if (previous) {
      stats.duplicates++;
      stats.lastDuplicateAt = at;
      this.send({ type: 'ack', taskId: task.id });
      if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(previous);
      return;
    }
    if (stats.firstTaskAt === 0) stats.firstTaskAt = at;
    stats.lastTaskAt = at;
    this.send({ type: 'ack', taskId: task.id });
    const startedAt = Date.now();
    const stdout = simulatedOutput(task.kind === 'command' ? task.spec.command : 'push', this.name);
    const result: TaskResult = {
      taskId: task.id,
      runId: task.runId,
      state: 'ok',
      exitCode: 0,
      signal: null,
      stdout,
      stderr: '',
      stdoutTruncated: false,
      stderrTruncated: false,
      stdoutBytes: Buffer.byteLength(stdout),
      stderrBytes: 0,
      startedAt,
      endedAt: Date.now(),
      durationMs: Date.now() - startedAt,
    };
    const text = encode({ type: 'result', result });
    this.answered.set(task.id, text);
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(text);
    stats.lastResultAt = wallMs();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.beatTimer);
    clearInterval(this.pullTimer);
    this.ws?.terminate();
  }
}

// ---------------------------------------------------------------------------

let init: WorkerInit | undefined;

function cpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}
let sims: SimAgent[] = [];

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Runs `fn` over `items` with at most `limit` in flight. */
async function pool<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, async () => {
    while (next < items.length) {
      const item = items[next++] as T;
      await fn(item);
    }
  });
  await Promise.all(lanes);
}

async function join(): Promise<JoinReport> {
  const cfg = init;
  if (!cfg) throw new Error('not initialised');
  const api = new AdminApi({ url: cfg.url, token: cfg.adminToken, ca: cfg.ca }, cfg.joinConcurrency);
  const t0 = performance.now();
  const cpu0 = cpuSeconds();
  let joined = 0;
  let failed = 0;
  let firstError: string | null = null;
  try {
    await pool(sims, cfg.joinConcurrency, async (sim) => {
      try {
        const { token } = await api.call<{ token: string }>('POST', '/v1/tokens', {
          ttl: 3600,
          name: sim.name,
        });
        sim.identity = await joinCoordinator(token, sim.name, { localAddress: sim.address });
        joined++;
      } catch (err) {
        failed++;
        firstError ??= `${sim.name}: ${(err as Error).message}`;
      }
    });
  } finally {
    api.close();
  }
  return {
    joined,
    failed,
    firstError,
    seconds: (performance.now() - t0) / 1000,
    cpuSeconds: cpuSeconds() - cpu0,
  };
}

async function connect(): Promise<ConnectReport> {
  const cfg = init;
  if (!cfg) throw new Error('not initialised');
  const t0 = performance.now();
  const cpu0 = cpuSeconds();
  let welcomed = 0;
  let failed = 0;
  let firstError: string | null = null;
  const joined = sims.filter((s) => s.identity);
  await pool(joined, cfg.connectConcurrency, async (sim) => {
    try {
      await sim.connect();
    } catch (err) {
      failed++;
      firstError ??= `${sim.name}: ${(err as Error).message}`;
    }
  });
  // An agent whose first attempt failed retries after RECONNECT_MS, as a real one backs off and
  // retries: the fleet is connected when the last of them has its welcome (or a minute has passed).
  const giveUp = performance.now() + 60_000;
  while (joined.some((s) => !s.welcomed) && performance.now() < giveUp) await sleep(50);
  for (const s of joined) if (s.welcomed) welcomed++;
  const lastWelcomeAt = Math.max(0, ...joined.map((s) => s.welcomedAt));
  return {
    welcomed,
    failed,
    firstError,
    lastWelcomeAt,
    seconds: (performance.now() - t0) / 1000,
    cpuSeconds: cpuSeconds() - cpu0,
  };
}

function status(): WorkerStatus {
  const me = procStats(process.pid);
  return {
    open: sims.filter((s) => s.ws?.readyState === WebSocket.OPEN).length,
    welcomed: sims.filter((s) => s.welcomed).length,
    ...counters,
    cpuSeconds: me?.cpuSeconds ?? 0,
    rssMb: me?.rssMb ?? 0,
  };
}

function runStats(runId: string): RunStats {
  return { ...runCounters(runId) };
}

async function handle(req: WorkerRequest): Promise<unknown> {
  switch (req.cmd) {
    case 'init':
      init = req.init;
      sims = req.init.agents.map(
        (a) => new SimAgent(a.name, a.address, req.init.heartbeatMs, req.init.ping, req.init.periodicPull),
      );
      return { agents: sims.length };
    case 'join':
      return join();
    case 'connect':
      return connect();
    case 'status':
      return status();
    case 'run-stats':
      return runStats(req.runId);
    case 'stop':
      for (const s of sims) s.stop();
      setTimeout(() => process.exit(0), 50);
      return { stopped: sims.length };
  }
}

function reply(message: WorkerReply): void {
  process.send?.(message);
}

if (!process.send) {
  process.stderr.write('sim-agents: run by control-bench.ts (needs an IPC channel)\n');
  process.exit(2);
}
process.on('message', (req: WorkerRequest) => {
  handle(req).then(
    (data) => reply({ id: req.id, ok: true, data }),
    (err: unknown) => reply({ id: req.id, ok: false, error: (err as Error).message }),
  );
});
// The driver is gone (exited, killed): so is the simulated fleet.
process.on('disconnect', () => process.exit(0));
reply({ id: 0, ok: true, data: { ready: true } });
