/**
 * `--activate together` inside the run manager: what happens to a together
 * distribution's answers, and when its next step starts. A host's stage (or
 * verify) answer that passed is kept as *interim* (in memory and in the
 * store's `interim` sublevel), not as the host's result, so the run does
 * not finish; once every host of the current step is through it, the next
 * step (decided by activation.ts, purely) is stored in the run record and its
 * tasks (`RUN:HOST:STEP`) are queued; a host's last step gives its one final
 * result, merged with what its stage reported.
 *
 * This module never delivers anything itself: the run manager (runs.ts) owns
 * the durable queue, sessions, deadline timers and listeners, and lends them
 * through `StepDeps`. It never touches runs of other kinds, and it decides
 * nothing that activation.ts does not say.
 */
import type { Logger } from 'pino';
import type { ActivationStep, TaskResult } from '../protocol/index.js';
import {
  type ActivationView,
  lackingWhy,
  nextStep,
  settle,
  stageOutcome,
  stepDone,
  stepWindowMs,
} from './activation.js';
import {
  type BatchOp,
  type HostResult,
  type InterimRecord,
  type RunRecord,
  resultFields,
  type Store,
} from './store.js';

/** What this module reads and changes of an active run (the run manager's runs have this and more). */
export interface StepRun {
  record: RunRecord;
  results: Map<string, HostResult>;
  queued: Set<string>;
  acked: Set<string>;
  pending: string[];
  seq: number;
  interim: Map<string, InterimRecord>;
}

/** The run manager's parts the steps use. */
export interface StepDeps<R extends StepRun> {
  store: Store;
  log: Logger;
  now: () => number;
  /** True once the run manager has stopped: no further step starts. */
  stopped: () => boolean;
  /** The run manager's rewrite of an agent's result before it is stored. */
  decorate: (run: RunRecord, host: string, result: TaskResult) => TaskResult;
  /** A final result is stored: tell the result hook and the run's listeners. */
  published: (run: R, result: HostResult) => void;
  /** Queues (durably) and sends the pending hosts' tasks, up to the run's concurrency. */
  dispatch: (run: R) => Promise<void>;
  /** Arms the timer of the run's current deadline (the current step's). */
  arm: (run: R) => void;
  /** Finishes the run if every host has its final result. */
  maybeFinish: (run: R) => Promise<void>;
}

/** Whether a run is an `--activate together` distribution. */
export function isTogether(record: RunRecord): boolean {
  const spec = record.spec;
  return spec.kind === 'dist' && spec.activate === 'together';
}

export class ActivationSteps<R extends StepRun> {
  constructor(private readonly deps: StepDeps<R>) {}

  /**
   * A host that already holds the file (its `ok` result, built by the run
   * manager): kept as interim, already current; it gets its final result once
   * the switch is decided. Returns the store op.
   */
  hold(run: R, host: string, result: HostResult): BatchOp {
    run.results.delete(host);
    const interim: InterimRecord = { result, passed: 'stage' };
    run.interim.set(host, interim);
    return this.deps.store.put(this.deps.store.interim, `${run.record.id}/${host}`, interim);
  }

  /** The run's step and counts (progress, GET /v1/dists/:id). */
  view(run: R): ActivationView {
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

  /**
   * A result of a together distribution: a stage or verify answer that
   * passed is kept as interim (the host is through this step, not finished);
   * a failure at stage, and every answer to the last step, is the host's
   * final result. Answers to another step than the current one are re-sends
   * of stored answers: acked, nothing else. Returns whether to ack.
   */
  async onResult(run: R, agent: string, step: ActivationStep | undefined, raw: TaskResult): Promise<boolean> {
    const { store } = this.deps;
    const phase = run.record.phase;
    const current = phase?.step ?? 'stage';
    const interim = run.interim.get(agent);
    if ((step ?? 'stage') !== current || stepDone(current, interim, false)) return true;
    const result = this.deps.decorate(run.record, agent, raw);
    const key = `${run.record.id}/${agent}`;
    const ops = [store.del(store.queue, `${agent}/${result.taskId}`)];
    let final: HostResult | undefined;
    if (current === 'stage' && stageOutcome(result) !== 'lacking') {
      run.seq += 1;
      const stored: HostResult = {
        ...resultFields(result),
        host: agent,
        receivedAt: this.deps.now(),
        seq: run.seq,
      };
      const next: InterimRecord = { result: stored, passed: 'stage' };
      run.interim.set(agent, next);
      ops.push(store.put(store.interim, key, next));
    } else if (current === 'verify' && interim) {
      const next = verified(interim, result);
      run.interim.set(agent, next);
      ops.push(store.put(store.interim, key, next));
    } else if ((current === 'activate' || current === 'discard') && interim) {
      final = this.settled(run, agent, settle(interim, current, result, phase?.lacking ?? []));
    } else {
      final = this.settled(run, agent, resultFields(result));
    }
    if (final) ops.push(store.put(store.results, key, final));
    await store.commit(ops);
    run.queued.delete(agent);
    run.acked.delete(agent);
    if (final) this.deps.published(run, final);
    await this.deps.dispatch(run);
    await this.advance(run);
    await this.deps.maybeFinish(run);
    return true;
  }

  /**
   * Once every host of the current step is through it, decides the next
   * step (activation.ts), stores it in the run record, and queues its
   * tasks. Hosts that already held the file get their final result once the
   * decision is final (activate or discard). Runs of other kinds: nothing.
   */
  async advance(run: R): Promise<void> {
    const { store } = this.deps;
    while (isTogether(run.record) && run.record.finishedAt === undefined && !this.deps.stopped()) {
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
      const ops: BatchOp[] = [];
      const fresh = 'done' in decision || decision.step !== 'verify' ? this.settleCurrent(run, ops) : [];
      if (!('done' in decision)) {
        const spec = run.record.spec;
        const now = this.deps.now();
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
        ops.push(store.put(store.runs, run.record.id, run.record));
        run.pending = [...decision.hosts];
        this.deps.log.info(
          {
            run: run.record.id,
            step: decision.step,
            hosts: decision.hosts.length,
            lacking: decision.lacking,
          },
          'distribution step',
        );
      }
      await store.commit(ops);
      for (const r of fresh) this.deps.published(run, r);
      if ('done' in decision) return;
      this.deps.arm(run);
      await this.deps.dispatch(run);
    }
  }

  /** The decision is final: hosts that already held the file are done (their ops go into `ops`). */
  private settleCurrent(run: R, ops: BatchOp[]): HostResult[] {
    const fresh: HostResult[] = [];
    for (const [host, i] of run.interim) {
      if (run.results.has(host) || stageOutcome(i.result) !== 'current') continue;
      const r = this.settled(run, host, { ...i.result });
      fresh.push(r);
      ops.push(this.deps.store.put(this.deps.store.results, `${run.record.id}/${host}`, r));
    }
    return fresh;
  }

  /** Records a final result for `host` (built by activation.ts, or the agent's own). */
  private settled(run: R, host: string, r: Omit<HostResult, 'host' | 'receivedAt' | 'seq'>): HostResult {
    run.seq += 1;
    const stored: HostResult = { ...r, host, receivedAt: this.deps.now(), seq: run.seq };
    run.results.set(host, stored);
    return stored;
  }
}

/** A host's interim record after its verify answer: passed, or refused with the agent's reason. */
function verified(interim: InterimRecord, result: TaskResult): InterimRecord {
  if (result.state === 'ok') return { ...interim, passed: 'verify' };
  return {
    ...interim,
    refused: {
      why: result.error ?? result.state,
      ...(result.files?.[0]?.code ? { code: result.files[0].code } : {}),
    },
  };
}
