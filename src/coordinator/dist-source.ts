/**
 * `canopy dist --source HOST`: the file lives on agent HOST, not on the
 * coordinator's machine. This module asks that agent for the file's manifest
 * through a one-host run of a `source` task (the durable queue, the agent's
 * journal and result delivery, as for any task): the agent checks the path
 * against its roots, hashes the file (BLAKE3 per chunk, MD5) and from then on
 * serves the blob from its peer server. The distribution manager then plans
 * with HOST as the root of the tree. This module never reads the file, and
 * refuses, naming the host and the path, whatever keeps HOST from serving it.
 *
 * After the answer the coordinator has nothing more to do with HOST: the
 * agent recorded its seed in its data directory before answering and serves
 * the blob, across its own restarts, for `serveForMs` (its file re-checked at
 * each start; a changed file is refused to every host, naming HOST and the
 * path). If HOST goes offline mid-distribution, the hosts wait for it by
 * their own rules (HOST is the last candidate of every stripe, asked again
 * for twelve stall windows), so nothing here re-asks or re-plans; HOST must
 * come back on the peer address the plans name (docs/transfer.md).
 */
import { CanopyError } from '../errors/index.js';
import type { PeerAddress } from '../protocol/index.js';
import { type Manifest, type PlanHost, validateManifest } from '../transfer/index.js';
import type { Fleet } from './fleet.js';
import type { RunManager } from './runs.js';
import type { HostResult } from './store.js';

export interface AgentSource {
  host: string;
  manifest: Manifest;
  blob: string;
  /** Where the agent's peer server listens (the plan's source). */
  address: PeerAddress;
  /** The agent as the planner sees it (its IDC and rack). */
  plan: PlanHost;
}

export interface SourceRequest {
  host: string;
  path: string;
  chunkSize: number;
  /** How long the agent may take to answer (hashing the file). */
  timeoutMs: number;
  /** How long it serves the blob after answering. */
  serveForMs: number;
  rateLimit?: number;
}

/** Asks agent `req.host` for the manifest of its file and to serve it; throws DIST_SOURCE_REFUSED saying why not. */
export async function askAgentSource(
  deps: { runs: RunManager; fleet: Fleet },
  req: SourceRequest,
): Promise<AgentSource> {
  const { host, path } = req;
  const refuse = (why: string) =>
    new CanopyError('DIST_SOURCE_REFUSED', `--source ${host}: ${why}`, { host, path });
  const agent = deps.fleet.list().find((a) => a.name === host);
  if (!agent) {
    throw refuse(
      `no agent named "${host}" has joined; --source names the agent that holds ${path} (see: canopy agents)`,
    );
  }
  if (agent.revoked) throw refuse(`agent "${host}" is revoked; it cannot serve ${path}`);
  if (!agent.online) throw refuse(`agent "${host}" is offline; start it to serve ${path}`);
  const peer = agent.facts?.peer;
  if (!peer) {
    throw refuse(
      `agent "${host}" runs no peer server: start it with --peer-listen HOST:PORT to serve ${path}`,
    );
  }
  const run = await deps.runs.create(
    {
      kind: 'source',
      targets: [host],
      path,
      chunkSize: req.chunkSize,
      serveForMs: req.serveForMs,
      ...(req.rateLimit ? { rateLimit: req.rateLimit } : {}),
      timeoutMs: req.timeoutMs,
      concurrency: 1,
    },
    [host],
  );
  const answer = await resultOf(deps.runs, run.id);
  if (answer?.state !== 'ok' || !answer.source) {
    // The agent's own message names itself and the path (outside its roots, no such file, ...).
    const why = answer?.error ?? `agent "${host}" gave no answer (${answer?.state ?? 'none'})`;
    throw new CanopyError('DIST_SOURCE_REFUSED', why, { host, path });
  }
  const manifest = await validateManifest(answer.source.manifest, {
    id: answer.source.blob,
    source: `agent "${host}"'s manifest of ${path}`,
  });
  const labels = agent.facts?.labels ?? {};
  return {
    host,
    manifest,
    blob: answer.source.blob,
    address: { name: host, address: peer },
    plan: {
      name: host,
      ...(labels.idc ? { idc: labels.idc } : {}),
      ...(labels.rack ? { rack: labels.rack } : {}),
    },
  };
}

/** The one result of a run, once it is done. */
async function resultOf(runs: RunManager, id: string): Promise<HostResult | undefined> {
  await new Promise<void>((resolve) => {
    const stop = runs.subscribe(id, (e) => {
      if (e.type !== 'done') return;
      stop?.();
      resolve();
    });
    if (!stop) resolve(); // already finished (the agent was unreachable at once)
  });
  return (await runs.get(id))?.results[0];
}
