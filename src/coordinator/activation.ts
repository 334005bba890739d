/**
 * `--activate together` on the coordinator: the pure decisions of a
 * distribution that switches every host or none. The run manager owns the
 * delivery (durable queue, deadlines, results); this module only says what a
 * step's answers mean and what comes next, so every rule is unit-tested.
 *
 *   stage    every host fetches and verifies the file and keeps it staged
 *            beside its destination (a host that already holds it needs no
 *            switch); a host that fails, refuses or does not answer by the
 *            stage deadline lacks the file
 *   verify   if none lacks it: every staging host checks its staged copy
 *            again (size, MD5, destination still allowed); nothing changes
 *   activate if every check passed: every staging host installs its copy
 *   discard  otherwise: every staging host removes its copy; no
 *            destination changes anywhere
 *
 * Invariant: `activate` is only ever decided when every host of the run
 * staged (or already held) the file and passed verify. A host that fails
 * *during* activate (its disk, or a change in the last moments) is the one
 * case that leaves a mix; it is reported as such, by name.
 */
import type { ActivationSpec, ActivationStep, DistSpec, TaskResult } from '../protocol/index.js';
import { type HostResult, type InterimRecord, type Lacking, NO_PROCESS } from './store.js';

/** What a host's stage result means for the switch. */
export function stageOutcome(r: Pick<HostResult, 'state' | 'files'>): 'staged' | 'current' | 'lacking' {
  if (r.state !== 'ok') return 'lacking';
  const state = r.files?.[0]?.state;
  return state === 'staged' ? 'staged' : state === 'unchanged' ? 'current' : 'lacking';
}

/** Why a host whose stage result is `lacking` lacks the file, in one line. */
export function lackingWhy(r: Pick<HostResult, 'state' | 'error' | 'files'>): string {
  const first = (r.error ?? '').split('\n')[0] ?? '';
  if (first) return first;
  if (r.state === 'ok') return `it reported ${r.files?.[0]?.state ?? 'no file'} instead of staging the file`;
  return r.state;
}

export type Decision = { step: ActivationStep; hosts: string[]; lacking: Lacking[] } | { done: true };

export interface StepState {
  /** The run's hosts, in order. */
  hosts: readonly string[];
  /** The step that just ended. */
  after: 'stage' | ActivationStep;
  /** The hosts of that step (after `stage`: all of them). */
  stepHosts: readonly string[];
  interim: ReadonlyMap<string, InterimRecord>;
  finals: ReadonlyMap<string, HostResult>;
}

/**
 * The next step once every host of the current step answered or was given
 * up on. Staging hosts are those with a staged copy (not those that already
 * held the file, and not those that never answered).
 */
export function nextStep(s: StepState): Decision {
  if (s.after === 'activate' || s.after === 'discard') return { done: true };
  const staged = s.stepHosts.filter((h) => {
    const i = s.interim.get(h);
    return i !== undefined && !s.finals.has(h) && stageOutcome(i.result) === 'staged';
  });
  const lacking: Lacking[] = [];
  for (const h of s.stepHosts) {
    const final = s.finals.get(h);
    const refused = s.interim.get(h)?.refused;
    if (final) lacking.push({ host: h, why: lackingWhy(final) });
    else if (refused) lacking.push({ host: h, why: refused.why.split('\n')[0] ?? refused.why });
  }
  if (lacking.length > 0) return { step: 'discard', hosts: staged, lacking };
  if (staged.length === 0) return { done: true };
  return { step: s.after === 'stage' ? 'verify' : 'activate', hosts: staged, lacking: [] };
}

/** Whether `host` is through the current step (`stage` while there is no phase). */
export function stepDone(
  step: 'stage' | ActivationStep,
  interim: InterimRecord | undefined,
  hasFinal: boolean,
): boolean {
  if (hasFinal) return true;
  if (step === 'stage') return interim !== undefined;
  if (step === 'verify') return interim?.passed === 'verify' || interim?.refused !== undefined;
  return false;
}

/** The task spec of a step for one host, from its distribution spec and the blob's manifest. */
export function activationSpec(
  step: ActivationStep,
  plan: Pick<DistSpec, 'blob' | 'dest' | 'mode' | 'owner' | 'group'>,
  manifest: { size: number; md5: string },
): ActivationSpec {
  return {
    step,
    blob: plan.blob,
    dest: plan.dest,
    size: manifest.size,
    md5: manifest.md5,
    ...(plan.mode !== undefined ? { mode: plan.mode } : {}),
    ...(plan.owner ? { owner: plan.owner } : {}),
    ...(plan.group ? { group: plan.group } : {}),
  };
}

/**
 * One step after staging gets a minute plus the time to read the file once
 * at 20 MiB/s (verify and activate hash the staged copy).
 */
export function stepWindowMs(size: number): number {
  return 60_000 + Math.ceil(size / (20 * 1024 * 1024)) * 1000;
}

/** `h3: why; h7: why` (the first `max`, then how many more). */
export function describeLacking(lacking: readonly Lacking[], max = 5): string {
  const shown = lacking.slice(0, max).map((l) => `${l.host}: ${l.why}`);
  const more = lacking.length - shown.length;
  return `${shown.join('; ')}${more > 0 ? `; and ${more} more` : ''}`;
}

type Final = Omit<HostResult, 'host' | 'receivedAt' | 'seq'>;

/**
 * A staging host's final result from its last step's answer, keeping what
 * its stage reported (transfer figures, start time). After `discard` the
 * host is `failed` (it does not have the new file): a host that refused a
 * check keeps its own reason, the others say which hosts lacked the file.
 */
export function settle(
  interim: InterimRecord,
  step: 'activate' | 'discard',
  r: TaskResult,
  lacking: readonly Lacking[],
): Final {
  const stage = interim.result;
  const startedAt = stage.startedAt ?? r.startedAt;
  const base: Final = {
    state: r.state,
    ...NO_PROCESS,
    startedAt,
    endedAt: r.endedAt,
    durationMs: r.endedAt - startedAt,
    ...(r.error === undefined ? {} : { error: r.error }),
    ...(r.files === undefined ? {} : { files: r.files }),
    ...(stage.transfer === undefined ? {} : { transfer: stage.transfer }),
  };
  if (step === 'activate') return base;
  const file = r.files?.[0] ?? stage.files?.[0];
  const dest = file?.dest ?? 'the destination';
  const own = interim.refused;
  if (r.state !== 'ok') {
    const why = own ? own.why : `not activated (${describeLacking(lacking)})`;
    const error = `${why}; and removing the staged copy failed: ${r.error ?? r.state}`;
    const code = own ? own.code : 'DIST_NOT_ACTIVATED';
    return {
      ...base,
      state: 'failed',
      error,
      ...(file
        ? { files: [{ ...file, state: 'failed' as const, content: false, error, ...(code ? { code } : {}) }] }
        : {}),
    };
  }
  const error = own
    ? `${own.why}; its staged copy was removed`
    : `not activated: ${lacking.length} host(s) lack the file (${describeLacking(lacking)}); ` +
      `the staged copy was removed and ${dest} is unchanged`;
  const outcome = own
    ? { state: 'failed' as const, ...(own.code ? { code: own.code } : {}) }
    : { state: 'discarded' as const, code: 'DIST_NOT_ACTIVATED' };
  return {
    ...base,
    state: 'failed',
    error,
    ...(file ? { files: [{ ...file, ...outcome, content: false, error }] } : {}),
  };
}

/** What the run is doing, for progress and GET /v1/dists/:id. */
export interface ActivationView {
  step: 'stage' | ActivationStep | 'done';
  hosts: number;
  /** Hosts holding a staged copy, and hosts that already held the file. */
  staged: number;
  current: number;
  lacking: Lacking[];
}
