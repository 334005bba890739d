/**
 * The planner's finish-time model (the "Estimate" part of planner.ts's module
 * comment): how long a plan takes to put every chunk on every host, from the
 * hosts' link capacities, the chunk size and a fixed cost per hop.
 */
import {
  DEFAULT_LINK_BPS,
  type Fleet,
  fleetOf,
  invalid,
  type Plan,
  type PlanInput,
  stripeChunks,
} from './planner-fleet.js';

export interface EstimateOptions {
  /** Blob size in bytes. */
  size: number;
  /** Chunk size in bytes; ceil(size / chunkSize) must be the plan's chunkCount. */
  chunkSize: number;
  /** Fixed cost of a hop (round trip, verification), paid once per hop. Default 0. */
  hopSeconds?: number;
}

interface PathState {
  /** Sum over hops of per-chunk time plus hop latency. */
  sum: number;
  /** The slowest hop's per-chunk time. */
  max: number;
}

const AT_ROOT: PathState = { sum: 0, max: 0 };

function checkEstimate(p: Plan, opts: EstimateOptions): { bits: number; hop: number } {
  const { size, chunkSize, hopSeconds = 0 } = opts;
  for (const [field, v] of [
    ['size', size],
    ['chunkSize', chunkSize],
  ] as const) {
    if (!Number.isFinite(v) || v <= 0) {
      invalid(`${field} is ${v}; give a positive number of bytes`, { field });
    }
  }
  if (!Number.isFinite(hopSeconds) || hopSeconds < 0) {
    invalid(`hopSeconds is ${hopSeconds}; give zero or more seconds`, { field: 'hopSeconds' });
  }
  const chunks = Math.ceil(size / chunkSize);
  if (chunks !== p.chunkCount) {
    invalid(
      `size / chunkSize gives ${chunks} chunks, but the plan has ${p.chunkCount}; plan with chunkCount ${chunks}`,
      { field: 'chunkSize' },
    );
  }
  return { bits: chunkSize * 8, hop: hopSeconds };
}

/** Streams each host serves and stripes each host fetches (only those that carry chunks). */
function streamCounts(f: Fleet, p: Plan): { out: Map<string, number>; in: Map<string, number> } {
  const out = new Map<string, number>();
  const inn = new Map<string, number>();
  for (const [name, ps] of Object.entries(p.parents)) {
    const need = f.hosts.get(name)?.need ?? [];
    ps.forEach((parent, s) => {
      if ((need[s] ?? 0) === 0) return;
      out.set(parent, (out.get(parent) ?? 0) + 1);
      inn.set(name, (inn.get(name) ?? 0) + 1);
    });
  }
  return { out, in: inn };
}

type StreamCounts = ReturnType<typeof streamCounts>;

function stripeSeconds(
  f: Fleet,
  p: Plan,
  s: number,
  counts: StreamCounts,
  bits: number,
  hop: number,
): number {
  const host = (n: string) => (n === f.source.name ? f.source : f.hosts.get(n));
  const state = new Map<string, PathState>();
  const holds = (n: string) => n === p.source || p.seeds.includes(n) || (host(n)?.need[s] ?? 0) === 0;
  const n = stripeChunks(f.chunkCount, f.stripes, s);
  let worst = 0;
  for (const name of Object.keys(p.parents)) {
    const chain: string[] = [];
    for (let x = name; !state.has(x) && !holds(x); x = p.parents[x]?.[s] ?? p.source) {
      if (chain.length > f.hosts.size) {
        invalid(`stripe ${s} has a cycle through host "${name}"`, { host: name });
      }
      chain.push(x);
    }
    for (const y of chain.reverse()) {
      const parent = p.parents[y]?.[s] ?? p.source;
      const from = state.get(parent) ?? AT_ROOT;
      const up = (host(parent)?.up ?? DEFAULT_LINK_BPS) / (counts.out.get(parent) ?? 1);
      const down = (host(y)?.down ?? DEFAULT_LINK_BPS) / (counts.in.get(y) ?? 1);
      const t = bits / Math.min(up, down);
      state.set(y, { sum: from.sum + t + hop, max: Math.max(from.max, t) });
    }
    const st = state.get(name) ?? AT_ROOT;
    if ((host(name)?.need[s] ?? 0) > 0) worst = Math.max(worst, st.sum + (n - 1) * st.max);
  }
  return worst;
}

/**
 * Seconds until every host holds every chunk, by the model in the module
 * comment of planner.ts. `input` gives the capacities (the one the plan was made from).
 */
export function estimateSeconds(p: Plan, input: PlanInput, opts: EstimateOptions): number {
  const { bits, hop } = checkEstimate(p, opts);
  const f = fleetOf(p, input);
  const counts = streamCounts(f, p);
  let worst = 0;
  for (let s = 0; s < p.stripes; s++) worst = Math.max(worst, stripeSeconds(f, p, s, counts, bits, hop));
  return worst;
}
