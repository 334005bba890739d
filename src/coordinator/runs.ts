/**
 * The run manager: owns every run from creation to its last host's final
 * state. One instance, one event loop: all state changes happen in its
 * methods, in order, and are committed to the store before anyone (agent,
 * API client) is told about them.
 *
 * Delivery: a task is written to its agent's queue before it is pushed; it
 * stays there until the agent's result is stored (same batch as the delete),
 * and is sent again whenever the agent says hello or pulls. The agent
 * dedups by task id, so re-sending is always safe. At the run's deadline
 * every host without a result becomes `unreachable` and its task is
 * withdrawn, so an agent that comes back later never starts it; a result
 * that still arrives is recorded with `late: true`.
 *
 * An `--activate together` distribution has steps (activation.ts decides
 * them, activation-steps.ts holds the answers between them and starts the
 * next): each staging host gets the next step's task (`RUN:HOST:STEP`,
 * through the same queue), and its last step's answer becomes its one final
 * result. Each step has its own deadline, after which its silent hosts are
 * unreachable.
 *
 * Each host's share of a push or distribution (its plan), and the task built
 * from it, are run-plans.ts's: a distribution's manifest is stored once per
 * blob, never per host, and put back into a task only when it is sent.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import {
  type CoordinatorMessage,
  type DistSpec,
  type FileOutcome,
  MAX_TIMER_MS,
  type PushSpec,
  parseTaskId,
  type Task,
  type TaskResult,
  taskIdFor,
  type WithoutV,
} from '../protocol/index.js';
import { type ActivationView, stepDone, stepWindowMs } from './activation.js';
import { ActivationSteps, isTogether, type StepRun } from './activation-steps.js';
import { type HostPlans, NO_PLANS, RunPlans, storedTask, taskFor } from './run-plans.js';
import {
  type HostFinalState,
  type HostResult,
  type InterimRecord,
  NO_PROCESS,
  type QueueRecord,
  type RunRecord,
  type RunSpec,
  resultFields,
  type Store,
  type StoredDistSpec,
  type WireManifest,
} from './store.js';

export type AgentStatus = 'online' | 'offline' | 'unknown' | 'revoked';

/** How the run manager reaches agents; the fleet implements it. */
export interface Courier {
  /** Hands a message to the agent's live session; false if it has none. */
  send(agent: string, message: WithoutV<CoordinatorMessage>): boolean;
  status(agent: string): AgentStatus;
  lastSeen(agent: string): number | undefined;
}

export type RunEvent =
  | { type: 'result'; result: HostResult }
  | { type: 'done'; summary: RunSummary }
  | { type: 'progress'; progress: unknown };
export type RunListener = (event: RunEvent) => void;

export interface RunSummary {
  total: number;
  counts: Partial<Record<HostFinalState | 'pending' | 'running' | 'staged', number>>;
  finished: boolean;
}

/** A run in memory: what the activation steps read and change (StepRun), and the manager's own parts. */
interface ActiveRun extends StepRun {
  timer: NodeJS.Timeout | undefined;
  listeners: Set<RunListener>;
  /** Push and distribution runs: each host's share (run-plans.ts). */
  plans: HostPlans;
}

/** What `create` may add for a push run. */
export interface CreateExtras {
  /** The run's id, when the caller needs it before the first task goes out. */
  id?: string;
  /**
   * Each host's push spec or distribution spec (push and dist runs); stored in the plans sublevel,
   * a distribution's manifest once for all hosts (run-plans.ts).
   */
  plans?: ReadonlyMap<string, PushSpec | DistSpec>;
  /** Hosts that are `failed` from the start, with the reason (a render error under --keep-going). */
  failed?: Map<string, string>;
  /**
   * Hosts that already hold what the run delivers (a distribution's --source
   * agent among the targets), with their file: `ok`/`unchanged` from the start
   * (for --activate together: already current, so they need no switch).
   */
  held?: Map<string, FileOutcome>;
}

/** Slack on top of a host's command timeout and kill grace before it counts as not answering. */
export const DEADLINE_SLACK_MS = 10_000;
const DEFAULT_KILL_GRACE_MS = 5_000;

export interface RunManagerOptions {
  store: Store;
  courier: Courier;
  logger: Logger;
  now?: () => number;
  onResult?: (state: HostFinalState, late: boolean) => void;
  /** Rewrites an agent's result before it is stored (push runs: old content into a masked diff). */
  decorate?: (run: RunRecord, host: string, result: TaskResult) => TaskResult;
  /** Called once a run has finished (every host final). */
  onFinished?: (run: RunRecord) => void;
}

export function newRunId(now: number): string {
  return `r${now.toString(36)}${randomBytes(4).toString('hex')}`;
}

export class RunManager {
  /** The coordinator's store (the distribution manager keeps its manifest cache there too). */
  readonly store: Store;
  private readonly courier: Courier;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly onResultHook: ((state: HostFinalState, late: boolean) => void) | undefined;
  private readonly decorate: RunManagerOptions['decorate'];
  private readonly onFinished: RunManagerOptions['onFinished'];
  private readonly active = new Map<string, ActiveRun>();
  /** --activate together: the answers between steps and the start of each step. */
  private readonly steps: ActivationSteps<ActiveRun>;
  /** Each host's share of push and dist runs; a distribution's manifest stored once. */
  private readonly plans: RunPlans;
  private stopped = false;

  constructor(opts: RunManagerOptions) {
    this.store = opts.store;
    this.courier = opts.courier;
    this.log = opts.logger;
    this.now = opts.now ?? Date.now;
    this.onResultHook = opts.onResult;
    this.decorate = opts.decorate;
    this.onFinished = opts.onFinished;
    this.plans = new RunPlans(this.store);
    this.steps = new ActivationSteps<ActiveRun>({
      store: this.store,
      log: this.log,
      now: this.now,
      stopped: () => this.stopped,
      decorate: (run, host, result) => (this.decorate ? this.decorate(run, host, result) : result),
      published: (run, result) => {
        this.onResultHook?.(result.state, false);
        this.emit(run, { type: 'result', result });
      },
      dispatch: (run) => this.dispatch(run),
      arm: (run) => this.arm(run),
      maybeFinish: (run) => this.maybeFinish(run),
    });
  }

  /** Picks up every unfinished run after a (re)start. */
  async load(): Promise<void> {
    // The queue is read once here; from then on it lives in each run's `queued` set.
    const queuedByRun = new Map<string, Set<string>>();
    for (const q of await this.store.values(this.store.queue)) {
      const hosts = queuedByRun.get(q.task.runId) ?? new Set<string>();
      hosts.add(q.task.host);
      queuedByRun.set(q.task.runId, hosts);
    }
    const unfinished = (await this.store.values(this.store.runs)).filter((r) => r.finishedAt === undefined);
    const swept = await this.plans.sweep(
      unfinished.flatMap((r) => (r.spec.kind === 'dist' ? [r.spec.blob] : [])),
    );
    if (swept > 0) this.log.info({ manifests: swept }, 'dropped stored manifests of finished runs');
    for (const record of unfinished) {
      const results = new Map<string, HostResult>();
      let seq = 0;
      for (const r of await this.store.values(this.store.results, `${record.id}/`)) {
        results.set(r.host, r);
        seq = Math.max(seq, r.seq);
      }
      const queued = queuedByRun.get(record.id) ?? new Set<string>();
      const plans =
        record.spec.kind === 'push' || record.spec.kind === 'dist'
          ? await this.plans.load(record.id)
          : NO_PLANS;
      const interim = new Map<string, InterimRecord>();
      for (const [key, i] of await this.store.entries(this.store.interim, `${record.id}/`)) {
        interim.set(key.slice(record.id.length + 1), i);
        seq = Math.max(seq, i.result.seq);
      }
      const step = record.phase?.step ?? 'stage';
      const pending = (record.phase?.hosts ?? record.hosts).filter(
        (h) => !queued.has(h) && !stepDone(step, interim.get(h), results.has(h)),
      );
      const run: ActiveRun = {
        record,
        results,
        queued,
        acked: new Set(),
        pending,
        seq,
        timer: undefined,
        listeners: new Set(),
        plans,
        interim,
      };
      this.active.set(record.id, run);
      this.log.info({ run: record.id, hosts: record.hosts.length, done: results.size, step }, 'resuming run');
      this.arm(run);
      await this.dispatch(run);
      await this.steps.advance(run);
      await this.maybeFinish(run);
    }
  }

  stop(): void {
    this.stopped = true;
    for (const run of this.active.values()) clearTimeout(run.timer);
  }

  async create(spec: RunSpec, hosts: string[], extras: CreateExtras = {}): Promise<RunRecord> {
    const now = this.now();
    const waves = Math.ceil(hosts.length / Math.max(1, spec.concurrency));
    const end = now + waves * (hostTimeMs(spec) + DEADLINE_SLACK_MS);
    // Together: the stage ends at `end`; verify and then activate (or discard) each get a window after it.
    const together = spec.kind === 'dist' && spec.activate === 'together';
    const record: RunRecord = {
      id: extras.id ?? newRunId(now),
      createdAt: now,
      deadline: together ? end + 2 * stepWindowMs(spec.size) : end,
      ...(together ? { stageDeadline: end } : {}),
      spec,
      hosts,
    };
    const run: ActiveRun = {
      record,
      results: new Map(),
      queued: new Set(),
      acked: new Set(),
      pending: [],
      seq: 0,
      timer: undefined,
      listeners: new Set(),
      plans: NO_PLANS,
      interim: new Map(),
    };
    const plans = this.plans.add(record.id, extras.plans ?? new Map());
    run.plans = plans.held;
    const ops = [this.store.put(this.store.runs, record.id, record), ...plans.ops];
    for (const host of hosts) {
      const failed = extras.failed?.get(host);
      if (failed !== undefined) {
        const result = this.finalResult(run, host, 'failed', failed);
        ops.push(this.store.put(this.store.results, `${record.id}/${host}`, result));
        continue;
      }
      const held = extras.held?.get(host);
      if (held) {
        ops.push(this.holds(run, host, held));
        continue;
      }
      const status = this.courier.status(host);
      if (status === 'online') {
        run.pending.push(host);
        continue;
      }
      const error =
        status === 'unknown'
          ? `no agent has joined under this name; join one: canopy token create --name HOST, then canopy agent --join TOKEN`
          : status === 'revoked'
            ? `the agent "${host}" is revoked`
            : `the agent "${host}" is offline (last heartbeat ${ago(this.courier.lastSeen(host), now)})`;
      const result = this.finalResult(run, host, 'unreachable', error);
      ops.push(this.store.put(this.store.results, `${record.id}/${host}`, result));
    }
    try {
      await this.store.commit(ops);
    } catch (err) {
      this.plans.drop(record.id, run.plans);
      throw err;
    }
    this.active.set(record.id, run);
    this.log.info(
      {
        run: record.id,
        hosts: hosts.length,
        targets: spec.targets,
        ...(spec.kind === 'push'
          ? { push: spec.mode, files: spec.files.map((f) => f.dest) }
          : spec.kind === 'dist'
            ? { dist: spec.blob, dest: spec.dest, size: spec.size }
            : spec.kind === 'source'
              ? { source: spec.path }
              : { command: spec.command }),
      },
      'run created',
    );
    for (const r of run.results.values()) this.emit(run, { type: 'result', result: r });
    this.arm(run);
    await this.dispatch(run);
    await this.steps.advance(run);
    await this.maybeFinish(run);
    return record;
  }

  /** The run and its results so far (from the store), or undefined. */
  async get(id: string): Promise<{ run: RunRecord; results: HostResult[]; summary: RunSummary } | undefined> {
    const run = await this.store.runs.get(id);
    if (!run) return undefined;
    const results = (await this.store.values(this.store.results, `${id}/`)).sort((a, b) => a.seq - b.seq);
    return { run, results, summary: this.summarize(run, results) };
  }

  summarize(run: RunRecord, results: readonly HostResult[]): RunSummary {
    const counts: RunSummary['counts'] = {};
    for (const r of results) counts[r.state] = (counts[r.state] ?? 0) + 1;
    const active = this.active.get(run.id);
    const open = run.hosts.length - results.length;
    if (open > 0) {
      const running = active ? active.acked.size : 0;
      // Together: hosts holding a staged copy while others are still on their step.
      const staged = active
        ? [...active.interim.keys()].filter((h) => !active.results.has(h) && !active.acked.has(h)).length
        : 0;
      if (running > 0) counts.running = running;
      if (staged > 0) counts.staged = staged;
      if (open - running - staged > 0) counts.pending = open - running - staged;
    }
    return { total: run.hosts.length, counts, finished: run.finishedAt !== undefined };
  }

  /** Unfinished runs (after load: the ones resumed). */
  activeRecords(): RunRecord[] {
    return [...this.active.values()].map((r) => r.record);
  }

  /** Per-host plans (push files, distribution specs without the manifest) of an unfinished run. */
  plansOf(id: string): ReadonlyMap<string, PushSpec | StoredDistSpec> | undefined {
    return this.active.get(id)?.plans.specs;
  }

  /** An unfinished distribution's manifest (one object, shared by its hosts' tasks). */
  manifestOf(id: string): WireManifest | undefined {
    return this.active.get(id)?.plans.manifest?.manifest;
  }

  /** An --activate together distribution's step and counts; undefined for other runs and finished ones. */
  activationOf(id: string): ActivationView | undefined {
    const run = this.active.get(id);
    if (!run || !isTogether(run.record)) return undefined;
    return this.steps.view(run);
  }

  /** Sends an event to the run's listeners (a distribution's progress); false if the run is not active. */
  publish(id: string, event: RunEvent): boolean {
    const run = this.active.get(id);
    if (!run) return false;
    this.emit(run, event);
    return true;
  }

  /** Listens to a run's events from now on; returns the unsubscribe function, or undefined if not active. */
  subscribe(id: string, listener: RunListener): (() => void) | undefined {
    const run = this.active.get(id);
    if (!run) return undefined;
    run.listeners.add(listener);
    return () => run.listeners.delete(listener);
  }

  /**
   * Tasks waiting for AGENT, rebuilt from memory (the queue sublevel is read only at load: a
   * prefix scan per pull walked the tombstones of every finished run). `unackedOnly` (for the
   * periodic pull) skips tasks the agent has already acknowledged on this run.
   */
  queuedFor(agent: string, unackedOnly = false): Task[] {
    const out: Task[] = [];
    for (const run of this.active.values()) {
      if (!run.queued.has(agent)) continue;
      if (unackedOnly && run.acked.has(agent)) continue;
      out.push(this.task(run, agent));
    }
    return out;
  }

  onAck(agent: string, taskId: string): void {
    const id = parseTaskId(taskId);
    if (!id || id.host !== agent) return;
    const run = this.active.get(id.runId);
    // An ack of an earlier step's task (re-sent) must not count for the current one.
    if (run?.queued.has(agent) && id.step === run.record.phase?.step) run.acked.add(agent);
  }

  /**
   * Records an agent's result. Returns whether the agent should be sent a
   * result-ack (true once the result is durably stored, or already was).
   */
  async onResult(agent: string, result: TaskResult): Promise<boolean> {
    const id = parseTaskId(result.taskId);
    if (!id || id.runId !== result.runId) {
      this.log.warn({ agent, taskId: result.taskId }, 'refused a result with a malformed task id');
      return false;
    }
    if (id.host !== agent) {
      this.log.warn(
        { agent, taskId: result.taskId, host: id.host },
        `refused a result: agent "${agent}" may not report for host "${id.host}"`,
      );
      return false;
    }
    const run = this.active.get(id.runId);
    if (run) {
      // Duplicate: already stored, just ack again. (A deadline's `unreachable` finishes the run, so a
      // result after it takes the finished-run path below.)
      if (run.results.has(agent)) return true;
      if (isTogether(run.record)) return this.steps.onResult(run, agent, id.step, result);
      const stored = this.fromAgent(run, this.decorate ? this.decorate(run.record, agent, result) : result);
      await this.store.commit([
        this.store.put(this.store.results, `${run.record.id}/${agent}`, stored),
        this.store.del(this.store.queue, `${agent}/${result.taskId}`),
      ]);
      run.queued.delete(agent);
      run.acked.delete(agent);
      this.onResultHook?.(stored.state, false);
      this.emit(run, { type: 'result', result: stored });
      await this.dispatch(run);
      await this.maybeFinish(run);
      return true;
    }
    const record = await this.store.runs.get(id.runId);
    if (!record) {
      this.log.warn({ agent, taskId: result.taskId }, 'result for an unknown run (dropped)');
      return true;
    }
    const key = `${record.id}/${agent}`;
    const existing = await this.store.results.get(key);
    if (existing && (existing.state !== 'unreachable' || existing.late)) return true;
    const seq = (await this.store.values(this.store.results, `${record.id}/`)).reduce(
      (m, r) => Math.max(m, r.seq),
      0,
    );
    const decorated = this.decorate ? this.decorate(record, agent, result) : result;
    const stored: HostResult = {
      ...resultFields(decorated),
      host: agent,
      receivedAt: this.now(),
      seq: seq + 1,
      late: true,
    };
    await this.store.commit([
      this.store.put(this.store.results, key, stored),
      this.store.del(this.store.queue, `${agent}/${result.taskId}`),
    ]);
    this.onResultHook?.(stored.state, true);
    this.log.info({ run: record.id, host: agent, state: stored.state }, 'late result recorded');
    return true;
  }

  /** A host that already holds the file: final `ok`, or (together) already current between steps. */
  private holds(run: ActiveRun, host: string, file: FileOutcome) {
    const key = `${run.record.id}/${host}`;
    const r = { ...this.finalResult(run, host, 'ok', ''), files: [file] };
    delete r.error;
    if (isTogether(run.record)) return this.steps.hold(run, host, r);
    run.results.set(host, r);
    return this.store.put(this.store.results, key, r);
  }

  private fromAgent(run: ActiveRun, r: TaskResult): HostResult {
    run.seq += 1;
    const stored: HostResult = {
      ...resultFields(r),
      host: parseTaskId(r.taskId)?.host ?? '',
      receivedAt: this.now(),
      seq: run.seq,
    };
    run.results.set(stored.host, stored);
    return stored;
  }

  private finalResult(run: ActiveRun, host: string, state: HostFinalState, error: string): HostResult {
    run.seq += 1;
    const r: HostResult = {
      host,
      state,
      ...NO_PROCESS,
      startedAt: null,
      endedAt: null,
      durationMs: null,
      error,
      receivedAt: this.now(),
      seq: run.seq,
    };
    run.results.set(host, r);
    return r;
  }

  /** The task `host` is sent now (its step's, with a distribution's manifest put back). */
  private task(run: ActiveRun, host: string): Task {
    return taskFor(run.record, run.plans, host, Math.max(0, deadlineOf(run.record) - this.now()));
  }

  /** Queues (durably) and pushes tasks up to the run's concurrency. */
  private async dispatch(run: ActiveRun): Promise<void> {
    if (this.stopped || run.record.finishedAt !== undefined) return;
    const slots = run.record.spec.concurrency - run.queued.size;
    if (slots <= 0 || run.pending.length === 0) return;
    const hosts = run.pending.splice(0, slots);
    const tasks = hosts.map((h) => this.task(run, h));
    for (const h of hosts) run.queued.add(h);
    const now = this.now();
    await this.store.commit(
      tasks.map((task) =>
        this.store.put<QueueRecord>(this.store.queue, `${task.host}/${task.id}`, {
          agent: task.host,
          task: storedTask(task),
          queuedAt: now,
        }),
      ),
    );
    for (const task of tasks) this.courier.send(task.host, { type: 'task', task });
  }

  private arm(run: ActiveRun): void {
    clearTimeout(run.timer);
    const wait = Math.max(0, deadlineOf(run.record) - this.now());
    // A timer fires after at most 2^31-1 ms (24.8 days; node fires a longer one at once):
    // a deadline further away (a long timeout with a small --concurrency) is re-armed on the way.
    if (wait > MAX_TIMER_MS) {
      run.timer = setTimeout(() => this.arm(run), MAX_TIMER_MS);
      run.timer.unref?.();
      return;
    }
    run.timer = setTimeout(() => {
      this.expire(run).catch((err: unknown) =>
        this.log.error({ err, run: run.record.id }, 'deadline handling failed'),
      );
    }, wait);
    run.timer.unref?.();
  }

  /**
   * The deadline: every host still open becomes unreachable, and its task is
   * withdrawn. Together: the deadline of the current step, for that step's
   * hosts; then the next step is decided.
   */
  private async expire(run: ActiveRun): Promise<void> {
    if (run.record.finishedAt !== undefined || this.stopped) return;
    const ops = [];
    const fresh: HostResult[] = [];
    const phase = run.record.phase;
    const step = phase?.step;
    const what = !isTogether(run.record)
      ? 'the run deadline'
      : `the deadline of the ${step ?? 'stage'} step${step === 'activate' ? ' (it may or may not have switched)' : ''}`;
    for (const host of phase?.hosts ?? run.record.hosts) {
      if (stepDone(step ?? 'stage', run.interim.get(host), run.results.has(host))) continue;
      const why = run.acked.has(host)
        ? `the agent acknowledged the task but sent no result by ${what}`
        : run.queued.has(host)
          ? `no answer by ${what} (agent ${this.courier.status(host)}, last heartbeat ${ago(this.courier.lastSeen(host), this.now())})`
          : `not started: no concurrency slot came free before ${what}`;
      const r = this.finalResult(run, host, 'unreachable', why);
      fresh.push(r);
      ops.push(this.store.put(this.store.results, `${run.record.id}/${host}`, r));
      if (run.queued.has(host))
        ops.push(this.store.del(this.store.queue, `${host}/${taskIdFor(run.record.id, host, step)}`));
    }
    run.pending = [];
    run.queued.clear();
    run.acked.clear();
    await this.store.commit(ops);
    for (const r of fresh) {
      this.onResultHook?.('unreachable', false);
      this.emit(run, { type: 'result', result: r });
    }
    await this.steps.advance(run);
    await this.maybeFinish(run);
  }

  private async maybeFinish(run: ActiveRun): Promise<void> {
    if (run.record.finishedAt !== undefined || run.results.size < run.record.hosts.length) return;
    run.record = { ...run.record, finishedAt: this.now() };
    await this.store.commit([this.store.put(this.store.runs, run.record.id, run.record)]);
    clearTimeout(run.timer);
    const summary = this.summarize(run.record, [...run.results.values()]);
    this.emit(run, { type: 'done', summary });
    this.active.delete(run.record.id);
    if (run.plans.specs.size > 0 || run.interim.size > 0) {
      await this.store.commit([
        ...this.plans.drop(run.record.id, run.plans),
        ...[...run.interim.keys()].map((h) => this.store.del(this.store.interim, `${run.record.id}/${h}`)),
      ]);
    }
    this.onFinished?.(run.record);
    this.log.info({ run: run.record.id, counts: summary.counts }, 'run finished');
  }

  private emit(run: ActiveRun, event: RunEvent): void {
    for (const l of run.listeners) {
      try {
        l(event);
      } catch (err) {
        this.log.warn({ err }, 'run listener failed');
      }
    }
  }
}

/** The longest one host may take: command timeout plus kill grace; a push's validates and notify. */
function hostTimeMs(spec: RunSpec): number {
  if (spec.kind === 'push') return (spec.files.length + 1) * spec.timeoutMs;
  if (spec.kind === 'dist' || spec.kind === 'source') return spec.timeoutMs;
  return spec.timeoutMs + (spec.killGraceMs ?? DEFAULT_KILL_GRACE_MS);
}

/** When the run's current step ends: a together distribution's step deadline, else the run's. */
function deadlineOf(record: RunRecord): number {
  return record.phase?.deadline ?? record.stageDeadline ?? record.deadline;
}

function ago(t: number | undefined, now: number): string {
  if (t === undefined) return 'never';
  return `${Math.round((now - t) / 1000)} s ago`;
}
