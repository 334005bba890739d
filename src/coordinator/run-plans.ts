/**
 * Each host's share of a run, as the run manager holds it in memory and in
 * the store's `plans` sublevel (so a restarted coordinator resumes the run):
 * a push's file list (destinations and MD5s), or a distribution's spec (dest,
 * parents, fallbacks, ...); and the task a host is sent, built from its share
 * and the run's spec (`taskFor`: command, push, dist, activation step, source).
 *
 * A distribution's manifest (size, MD5 and one BLAKE3 digest per chunk: for a
 * 20 GB file at 256 KiB chunks, 80,000 digests, about 5.5 MB) is the same for
 * every host. So it is held once per run and stored once per blob
 * (`manifests`, keyed by the blob id, shared by concurrent runs of the same
 * blob), never in a host's plan or queued task. `specFor` puts it back into a
 * host's spec when its task is built to be sent, by reference (not copied), so
 * the agent receives exactly the DistSpec it always did. Plans stored before
 * this (manifest in each plan) still load.
 *
 * This module decides nothing about delivery (who gets a task and when:
 * runs.ts) and reads or writes no sublevel but `plans` and `manifests`.
 */
import { type DistSpec, type PushSpec, shellQuote, type Task, taskIdFor } from '../protocol/index.js';
import { activationSpec } from './activation.js';
import type {
  BatchOp,
  ManifestRecord,
  PlanRecord,
  RunRecord,
  Store,
  StoredDistSpec,
  StoredTask,
  WireManifest,
} from './store.js';

/** One run's plans in memory. */
export interface HostPlans {
  /** Per host: a push's spec, or a distribution's without its manifest. */
  readonly specs: ReadonlyMap<string, PushSpec | StoredDistSpec>;
  /** A distribution's manifest (one object for all its hosts) and the blob it is stored under. */
  readonly manifest?: { blob: string; manifest: WireManifest };
}

export const NO_PLANS: HostPlans = { specs: new Map() };

export class RunPlans {
  /** Blob id -> the unfinished runs whose manifest is stored under it (kept in step synchronously). */
  private readonly users = new Map<string, Set<string>>();

  constructor(private readonly store: Store) {}

  /** A new run's plans as held (the manifest split off, once) and the store ops that persist them. */
  add(runId: string, plans: ReadonlyMap<string, PushSpec | DistSpec>): { held: HostPlans; ops: BatchOp[] } {
    const held = split(runId, plans);
    const ops = [...held.specs].map(([host, spec]) =>
      this.store.put<PlanRecord>(this.store.plans, `${runId}/${host}`, { spec }),
    );
    if (held.manifest) {
      const { blob, manifest } = held.manifest;
      // Already stored for an unfinished run of the same blob: the same content (the id is its hash).
      if (!this.users.get(blob)?.size) {
        ops.push(this.store.put<ManifestRecord>(this.store.manifests, blob, { manifest }));
      }
      this.use(blob, runId);
    }
    return { held, ops };
  }

  /** A resumed run's plans from the store (plans with their manifest inline are split the same way). */
  async load(runId: string): Promise<HostPlans> {
    const stored = new Map<string, PushSpec | DistSpec | StoredDistSpec>();
    for (const [key, plan] of await this.store.entries(this.store.plans, `${runId}/`)) {
      stored.set(key.slice(runId.length + 1), plan.spec);
    }
    const blob = [...stored.values()].find((s): s is StoredDistSpec => 'blob' in s)?.blob;
    if (blob === undefined) return { specs: stored as Map<string, PushSpec> };
    const inline = [...stored.values()].find((s): s is DistSpec => 'manifest' in s)?.manifest;
    // Stored once from now on, so that a new run of the same blob (which stores none while this one
    // runs) can resume after this one finishes.
    if (inline)
      await this.store.commit([
        this.store.put<ManifestRecord>(this.store.manifests, blob, { manifest: inline }),
      ]);
    const manifest = inline ?? (await this.store.manifests.get(blob))?.manifest;
    const specs = new Map([...stored].map(([host, spec]) => [host, 'blob' in spec ? stripped(spec) : spec]));
    this.use(blob, runId);
    // Without a manifest (a damaged store) specFor gives nothing: the run manager names the run and host.
    return manifest ? { specs, manifest: { blob, manifest } } : { specs };
  }

  /** The store ops that drop a finished run's plans, and its manifest once no unfinished run shares it. */
  drop(runId: string, held: HostPlans): BatchOp[] {
    const ops = [...held.specs.keys()].map((h) => this.store.del(this.store.plans, `${runId}/${h}`));
    const blob = held.manifest?.blob ?? [...held.specs.values()].find((s) => 'blob' in s)?.blob;
    if (blob === undefined) return ops;
    const users = this.users.get(blob);
    users?.delete(runId);
    if (!users?.size) {
      this.users.delete(blob);
      ops.push(this.store.del(this.store.manifests, blob));
    }
    return ops;
  }

  /**
   * Deletes the stored manifests of blobs that neither `inUse` (the blobs of
   * the unfinished runs about to be loaded) nor a run of this process uses: a
   * crash between a run's end and its clean-up leaves one.
   */
  async sweep(inUse: readonly string[]): Promise<number> {
    const keep = new Set(inUse);
    const stale = (await this.store.keys(this.store.manifests)).filter(
      (blob) => !keep.has(blob) && !this.users.get(blob)?.size,
    );
    if (stale.length > 0) await this.store.commit(stale.map((b) => this.store.del(this.store.manifests, b)));
    return stale.length;
  }

  private use(blob: string, runId: string): void {
    const users = this.users.get(blob) ?? new Set<string>();
    users.add(runId);
    this.users.set(blob, users);
  }
}

/**
 * The spec a host's task carries: a file distribution's with the file's MD5
 * (the agent fetches the manifest from its peers), a tree's with its manifest
 * put back (shared, not copied: it only carries the tree's size).
 */
export function specFor(held: HostPlans, host: string): PushSpec | DistSpec | undefined {
  const spec = held.specs.get(host);
  if (!spec || !('blob' in spec)) return spec;
  if (!held.manifest) return undefined;
  const { manifest } = held.manifest;
  return spec.tree ? { ...spec, manifest } : { ...spec, md5: manifest.md5 };
}

/**
 * The task `host` is sent for `record` now: a command, a push or distribution from its plan (the
 * manifest put back), a step of an --activate together distribution, or a --source request.
 */
export function taskFor(record: RunRecord, plans: HostPlans, host: string, expiresInMs: number): Task {
  const spec = record.spec;
  const phase = record.phase;
  const common = {
    id: taskIdFor(record.id, host, phase?.step),
    runId: record.id,
    host,
    expiresInMs,
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
    const plan = specFor(plans, host);
    if (!plan) throw new Error(`${spec.kind} run ${record.id} has no plan for ${host}`);
    if (phase && spec.kind === 'dist' && plans.manifest) {
      return {
        ...common,
        kind: 'activation',
        spec: activationSpec(phase.step, plan as DistSpec, plans.manifest.manifest),
      };
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

/** A task as the queue stores it: a distribution's without its manifest (the queue is read only for ids). */
export function storedTask(task: Task): StoredTask {
  if (task.kind !== 'dist') return task;
  return { ...task, spec: stripped(task.spec) };
}

/** Splits a new run's plans: its specs without the manifest, and the one manifest they share. */
function split(runId: string, plans: ReadonlyMap<string, PushSpec | DistSpec>): HostPlans {
  let manifest: HostPlans['manifest'];
  const specs = new Map<string, PushSpec | StoredDistSpec>();
  for (const [host, spec] of plans) {
    if (!('blob' in spec)) {
      specs.set(host, spec);
      continue;
    }
    if (manifest && manifest.blob !== spec.blob) {
      throw new Error(`run ${runId}: its plans name two blobs (${manifest.blob}, ${spec.blob})`);
    }
    if (!spec.manifest) throw new Error(`run ${runId}: the plan for ${host} has no manifest`);
    manifest ??= { blob: spec.blob, manifest: spec.manifest };
    specs.set(host, stripped(spec));
  }
  return manifest ? { specs, manifest } : { specs };
}

function stripped(spec: DistSpec | StoredDistSpec): StoredDistSpec {
  if (!('manifest' in spec)) return spec;
  const { manifest: _, ...rest } = spec;
  return rest;
}
