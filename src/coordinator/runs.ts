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
 * them): a host's stage answer is kept as `interim` (store and memory), not
 * as its result, until the run knows whether every host has the file; then
 * each staging host gets the next step's task (`RUN:HOST:STEP`, through the
 * same queue), and its last step's answer becomes its one final result. Each
 * step has its own deadline, after which its silent hosts are unreachable.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import {
  type ActivationStep,
  type CoordinatorMessage,
  type DistSpec,
  type FileOutcome,
  type PushSpec,
  parseTaskId,
  shellQuote,
  type Task,
  type TaskResult,
  taskIdFor,
  type WithoutV,
} from '../protocol/index.js';
import {
  type ActivationView,
  activationSpec,
  lackingWhy,
  nextStep,
  settle,
  stageOutcome,
  stepDone,
  stepWindowMs,
} from './activation.js';
import {
  type HostFinalState,
  type HostResult,
  type InterimRecord,
  NO_PROCESS,
  type PlanRecord,
  type QueueRecord,
  type RunRecord,
  type RunSpec,
  type Store,
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

interface ActiveRun {
  record: RunRecord;
  results: Map<string, HostResult>;
  queued: Set<string>;
  acked: Set<string>;
  pending: string[];
  seq: number;
  timer: NodeJS.Timeout | undefined;
  listeners: Set<RunListener>;
  /** Push runs: each host's files. */
  plans: Map<string, PushSpec | DistSpec>;
  /** --activate together: hosts between steps (no final result yet). */
  interim: Map<string, InterimRecord>;
}

/** What `create` may add for a push run. */
export interface CreateExtras {
  /** The run's id, when the caller needs it before the first task goes out. */
  id?: string;
  /** Each host's push spec (push runs only); stored in the plans sublevel. */
  plans?: Map<string, PushSpec | DistSpec>;
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
  private readonly store: Store;
  private readonly courier: Courier;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly onResultHook: ((state: HostFinalState, late: boolean) => void) | undefined;
  private readonly decorate: RunManagerOptions['decorate'];
  private readonly onFinished: RunManagerOptions['onFinished'];
  private readonly active = new Map<string, ActiveRun>();
  private stopped = false;

  constructor(opts: RunManagerOptions) {
    this.store = opts.store;
    this.courier = opts.courier;
    this.log = opts.logger;
    this.now = opts.now ?? Date.now;
    this.onResultHook = opts.onResult;
    this.decorate = opts.decorate;
    this.onFinished = opts.onFinished;
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
    for (const record of await this.store.values(this.store.runs)) {
      if (record.finishedAt !== undefined) continue;
      const results = new Map<string, HostResult>();
      let seq = 0;
      for (const r of await this.store.values(this.store.results, `${record.id}/`)) {
        results.set(r.host, r);
        seq = Math.max(seq, r.seq);
      }
      const queued = queuedByRun.get(record.id) ?? new Set<string>();
      const plans = new Map<string, PushSpec | DistSpec>();
      if (record.spec.kind === 'push' || record.spec.kind === 'dist') {
        for (const [key, plan] of await this.store.entries(this.store.plans, `${record.id}/`)) {
          plans.set(key.slice(record.id.length + 1), plan.spec);
        }
      }
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
      await this.advance(run);
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
      plans: extras.plans ?? new Map(),
      interim: new Map(),
    };
    const ops = [this.store.put(this.store.runs, record.id, record)];
    for (const [host, plan] of run.plans) {
      ops.push(this.store.put<PlanRecord>(this.store.plans, `${record.id}/${host}`, { spec: plan }));
    }
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
    await this.store.commit(ops);
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
    await this.advance(run);
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

  /** Per-host plans (push files, distribution specs) of an unfinished run. */
  plansOf(id: string): ReadonlyMap<string, PushSpec | DistSpec> | undefined {
    return this.active.get(id)?.plans;
  }

  /** An --activate together distribution's step and counts; undefined for other runs and finished ones. */
  activationOf(id: string): ActivationView | undefined {
    const run = this.active.get(id);
    if (!run || !this.together(run)) return undefined;
    let staged = 0;
    let current = 0;
    for (const i of run.interim.values()) {
      const o = stageOutcome(i.result);
      if (o === 'staged') staged++;
      else if (o === 'current') current++;
    }
    const phase = run.record.phase;
    const lacking = phase
      ? phase.lacking
      : [...run.results.values()].map((r) => ({ host: r.host, why: lackingWhy(r) }));
    return { step: phase?.step ?? 'stage', hosts: run.record.hosts.length, staged, current, lacking };
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
      if (this.together(run)) return this.onStepResult(run, agent, id.step, result);
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
      ...this.fromAgentFields(decorated),
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
    if (!this.together(run)) {
      run.results.set(host, r);
      return this.store.put(this.store.results, key, r);
    }
    run.results.delete(host);
    const interim: InterimRecord = { result: r, passed: 'stage' };
    run.interim.set(host, interim);
    return this.store.put(this.store.interim, key, interim);
  }

  private together(run: ActiveRun): boolean {
    const spec = run.record.spec;
    return spec.kind === 'dist' && spec.activate === 'together';
  }

  /**
   * A result of an --activate together distribution: a stage or verify
   * answer that passed is kept as interim (the host is through this step,
   * not finished); a failure at stage, and every answer to the last step,
   * is the host's final result. Answers to another step than the current
   * one are re-sends of stored answers: acked, nothing else.
   */
  private async onStepResult(
    run: ActiveRun,
    agent: string,
    step: ActivationStep | undefined,
    raw: TaskResult,
  ): Promise<boolean> {
    const phase = run.record.phase;
    const current = phase?.step ?? 'stage';
    const interim = run.interim.get(agent);
    if ((step ?? 'stage') !== current || stepDone(current, interim, false)) return true;
    const result = this.decorate ? this.decorate(run.record, agent, raw) : raw;
    const key = `${run.record.id}/${agent}`;
    const ops = [this.store.del(this.store.queue, `${agent}/${result.taskId}`)];
    let final: HostResult | undefined;
    if (current === 'stage' && stageOutcome(result) !== 'lacking') {
      run.seq += 1;
      const stored: HostResult = {
        ...this.fromAgentFields(result),
        host: agent,
        receivedAt: this.now(),
        seq: run.seq,
      };
      const next: InterimRecord = { result: stored, passed: 'stage' };
      run.interim.set(agent, next);
      ops.push(this.store.put(this.store.interim, key, next));
    } else if (current === 'verify' && interim) {
      const next: InterimRecord =
        result.state === 'ok'
          ? { ...interim, passed: 'verify' }
          : {
              ...interim,
              refused: {
                why: result.error ?? result.state,
                ...(result.files?.[0]?.code ? { code: result.files[0].code } : {}),
              },
            };
      run.interim.set(agent, next);
      ops.push(this.store.put(this.store.interim, key, next));
    } else if ((current === 'activate' || current === 'discard') && interim) {
      final = this.settled(run, agent, settle(interim, current, result, phase?.lacking ?? []));
    } else {
      final = this.fromAgent(run, result);
    }
    if (final) ops.push(this.store.put(this.store.results, key, final));
    await this.store.commit(ops);
    run.queued.delete(agent);
    run.acked.delete(agent);
    if (final) {
      this.onResultHook?.(final.state, false);
      this.emit(run, { type: 'result', result: final });
    }
    await this.dispatch(run);
    await this.advance(run);
    await this.maybeFinish(run);
    return true;
  }

  /** Records a final result built by activation.ts for `host`. */
  private settled(
    run: ActiveRun,
    host: string,
    r: Omit<HostResult, 'host' | 'receivedAt' | 'seq'>,
  ): HostResult {
    run.seq += 1;
    const stored: HostResult = { ...r, host, receivedAt: this.now(), seq: run.seq };
    run.results.set(host, stored);
    return stored;
  }

  /**
   * Together: once every host of the current step is through it, decides the
   * next step (activation.ts), stores it in the run record, and queues its
   * tasks. Hosts that already held the file get their final result once the
   * decision is final (activate or discard). Runs of other kinds: nothing.
   */
  private async advance(run: ActiveRun): Promise<void> {
    while (this.together(run) && run.record.finishedAt === undefined && !this.stopped) {
      const phase = run.record.phase;
      const step = phase?.step ?? 'stage';
      const stepHosts = phase?.hosts ?? run.record.hosts;
      if (!stepHosts.every((h) => stepDone(step, run.interim.get(h), run.results.has(h)))) return;
      const decision = nextStep({
        hosts: run.record.hosts,
        after: step,
        stepHosts,
        interim: run.interim,
        finals: run.results,
      });
      const now = this.now();
      const ops = [];
      const fresh: HostResult[] = [];
      if ('done' in decision || decision.step !== 'verify') {
        // The decision is final: hosts that already held the file are done.
        for (const [host, i] of run.interim) {
          if (run.results.has(host) || stageOutcome(i.result) !== 'current') continue;
          const r = this.settled(run, host, { ...i.result });
          fresh.push(r);
          ops.push(this.store.put(this.store.results, `${run.record.id}/${host}`, r));
        }
      }
      if (!('done' in decision)) {
        const spec = run.record.spec;
        const window = stepWindowMs(spec.kind === 'dist' ? spec.size : 0);
        run.record = {
          ...run.record,
          phase: {
            step: decision.step,
            startedAt: now,
            deadline: Math.min(run.record.deadline, now + window),
            hosts: decision.hosts,
            lacking: decision.lacking,
          },
        };
        ops.push(this.store.put(this.store.runs, run.record.id, run.record));
        run.pending = [...decision.hosts];
        this.log.info(
          {
            run: run.record.id,
            step: decision.step,
            hosts: decision.hosts.length,
            lacking: decision.lacking,
          },
          'distribution step',
        );
      }
      await this.store.commit(ops);
      for (const r of fresh) {
        this.onResultHook?.(r.state, false);
        this.emit(run, { type: 'result', result: r });
      }
      if ('done' in decision) return;
      this.arm(run);
      await this.dispatch(run);
    }
  }

  private fromAgentFields(r: TaskResult): Omit<HostResult, 'host' | 'receivedAt' | 'seq'> {
    return {
      state: r.state,
      exitCode: r.exitCode,
      signal: r.signal,
      stdout: r.stdout,
      stderr: r.stderr,
      stdoutTruncated: r.stdoutTruncated,
      stderrTruncated: r.stderrTruncated,
      startedAt: r.startedAt,
      endedAt: r.endedAt,
      durationMs: r.durationMs,
      ...(r.error === undefined ? {} : { error: r.error }),
      ...(r.files === undefined ? {} : { files: r.files }),
      ...(r.notified === undefined ? {} : { notified: r.notified }),
      ...(r.transfer === undefined ? {} : { transfer: r.transfer }),
      ...(r.source === undefined ? {} : { source: r.source }),
    };
  }

  private fromAgent(run: ActiveRun, r: TaskResult): HostResult {
    run.seq += 1;
    const stored: HostResult = {
      ...this.fromAgentFields(r),
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

  private task(run: ActiveRun, host: string): Task {
    const spec = run.record.spec;
    const phase = run.record.phase;
    const common = {
      id: taskIdFor(run.record.id, host, phase?.step),
      runId: run.record.id,
      host,
      expiresInMs: Math.max(0, deadlineOf(run.record) - this.now()),
    };
    if (spec.kind === 'source') {
      return {
        ...common,
        kind: 'source',
        spec: {
          path: spec.path,
          chunkSize: spec.chunkSize,
          serveForMs: spec.serveForMs,
          ...(spec.rateLimit ? { rateLimit: spec.rateLimit } : {}),
        },
      };
    }
    if (spec.kind === 'push' || spec.kind === 'dist') {
      const plan = run.plans.get(host);
      if (!plan) throw new Error(`${spec.kind} run ${run.record.id} has no plan for ${host}`);
      if (phase && spec.kind === 'dist') {
        return { ...common, kind: 'activation', spec: activationSpec(phase.step, plan as DistSpec) };
      }
      return spec.kind === 'push'
        ? { ...common, kind: 'push', spec: plan as PushSpec }
        : { ...common, kind: 'dist', spec: plan as DistSpec };
    }
    const command = Array.isArray(spec.command)
      ? spec.command.map((a) => a.replaceAll('?HOST', host))
      : spec.command.replaceAll('?HOST', shellQuote(host));
    return {
      ...common,
      kind: 'command',
      spec: {
        command,
        timeoutMs: spec.timeoutMs,
        ...(spec.env ? { env: spec.env } : {}),
        ...(spec.cwd ? { cwd: spec.cwd } : {}),
        ...(spec.runAs ? { runAs: spec.runAs } : {}),
        ...(spec.maxOutputBytes !== undefined ? { maxOutputBytes: spec.maxOutputBytes } : {}),
        ...(spec.killGraceMs !== undefined ? { killGraceMs: spec.killGraceMs } : {}),
      },
    };
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
          task,
          queuedAt: now,
        }),
      ),
    );
    for (const task of tasks) this.courier.send(task.host, { type: 'task', task });
  }

  private arm(run: ActiveRun): void {
    clearTimeout(run.timer);
    const wait = Math.max(0, deadlineOf(run.record) - this.now());
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
    const what = !this.together(run)
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
    await this.advance(run);
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
    if (run.plans.size > 0 || run.interim.size > 0) {
      await this.store.commit([
        ...[...run.plans.keys()].map((h) => this.store.del(this.store.plans, `${run.record.id}/${h}`)),
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
