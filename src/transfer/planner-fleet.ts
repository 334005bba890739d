/**
 * The planner's fleet model (the design is in planner.ts's module comment):
 * the plan types, a PlanInput checked into a Fleet of ranked Hosts (labels,
 * link capacities, upload budgets, the chunks each needs), and a Fleet with
 * parents per host assembled back into a Plan. Pure: no I/O, no state.
 */
import { CanopyError } from '../errors/index.js';

export interface PlanHost {
  name: string;
  idc?: string;
  rack?: string;
  /** Default DEFAULT_LINK_BPS. */
  uplinkBps?: number;
  /** Default DEFAULT_LINK_BPS. */
  downlinkBps?: number;
  /** Verified chunks the host already holds: 'all', or their indexes. */
  has?: 'all' | readonly number[];
}

export interface PlanInput {
  /** The coordinator's machine or a seeding host; it holds every chunk. */
  source: PlanHost;
  /** The targets; those that hold every chunk become seeds. */
  hosts: readonly PlanHost[];
  chunkCount: number;
  /** Stripes S (default DEFAULT_STRIPES); more than chunkCount are cut to chunkCount. */
  stripes?: number;
  /** Hosts of an IDC that may receive from outside it (default 1). */
  crossIdc?: number;
}

export interface Plan {
  stripes: number;
  chunkCount: number;
  source: string;
  /** Targets that already hold the whole blob: roots, with no parents. */
  seeds: string[];
  /** Per receiving host, per stripe: the parent's name. */
  parents: Record<string, string[]>;
  /** Per IDC ('' when unlabelled): its hosts that receive from outside it. */
  entries: Record<string, string[]>;
  /** Hops from the source or a seed to the deepest host, over all stripes. */
  depth: number;
  /** Per host, source and seeds included: copies of the blob it uploads (1 = the whole blob). */
  uploads: Record<string, number>;
  /** Hosts taken out of the plan by replan. */
  failed: string[];
}

export const DEFAULT_STRIPES = 4;
export const DEFAULT_LINK_BPS = 1_000_000_000;
export const EPS = 1e-9;

/** A validated host. `need[s]` counts the chunks of stripe s it lacks. */
export interface Host {
  name: string;
  idc: string;
  /** IDC-qualified rack; hosts without a rack label share one per IDC. */
  rack: string;
  up: number;
  down: number;
  need: number[];
  /** Position in (idc, rack, name) order: the tie-break everywhere. */
  rank: number;
}

export interface Fleet {
  stripes: number;
  chunkCount: number;
  crossIdc: number;
  source: Host;
  /** Targets by name, in rank order. */
  hosts: Map<string, Host>;
  /** The median downlink of hosts that need data: what one budget unit of S streams is worth. */
  refRate: number;
}

// ---------------------------------------------------------------- input

export function invalid(message: string, subject: Record<string, unknown> = {}): never {
  throw new CanopyError('TRANSFER_PLAN_INVALID', message, subject);
}

export function checkWhole(value: unknown, field: string, min: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
    invalid(`${field} is ${String(value)}; give a whole number of at least ${min}`, { field });
  }
  return value;
}

function checkRate(h: PlanHost, field: 'uplinkBps' | 'downlinkBps'): number {
  const v = h[field];
  if (v === undefined) return DEFAULT_LINK_BPS;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    invalid(
      `host "${h.name}": ${field} is ${String(v)}; give a positive capacity in bits/s, or leave it out for the default`,
      { host: h.name, field },
    );
  }
  return v;
}

function checkHas(h: PlanHost, chunkCount: number): ReadonlySet<number> | 'all' {
  if (h.has === undefined) return new Set();
  if (h.has === 'all') return 'all';
  if (!Array.isArray(h.has)) {
    invalid(`host "${h.name}": has must be 'all' or a list of chunk indexes`, { host: h.name, field: 'has' });
  }
  for (const i of h.has) {
    if (!Number.isInteger(i) || i < 0 || i >= chunkCount) {
      invalid(
        `host "${h.name}": has lists chunk ${String(i)}, but the blob has chunks 0 to ${chunkCount - 1}; ` +
          'list only chunk indexes below chunkCount',
        { host: h.name, field: 'has' },
      );
    }
  }
  return new Set(h.has);
}

/** Chunks in stripe s. */
export function stripeChunks(chunkCount: number, stripes: number, s: number): number {
  return Math.ceil((chunkCount - s) / stripes);
}

function needs(has: ReadonlySet<number> | 'all', chunkCount: number, stripes: number): number[] {
  const need = Array.from({ length: stripes }, (_, s) => stripeChunks(chunkCount, stripes, s));
  if (has === 'all') return need.fill(0);
  for (const i of has) need[i % stripes] = (need[i % stripes] ?? 0) - 1;
  return need;
}

function checkHost(h: PlanHost, role: string, chunkCount: number, stripes: number): Host {
  if (typeof h?.name !== 'string' || h.name === '') {
    invalid(`${role} has no name; give every host a non-empty name`, { field: 'name' });
  }
  const idc = h.idc ?? '';
  return {
    name: h.name,
    idc,
    rack: `${idc}\u0000${h.rack ?? ''}`,
    up: checkRate(h, 'uplinkBps'),
    down: checkRate(h, 'downlinkBps'),
    need: needs(checkHas(h, chunkCount), chunkCount, stripes),
    rank: 0,
  };
}

function byRank(a: Host, b: Host): number {
  return cmp(a.idc, b.idc) || cmp(a.rack, b.rack) || cmp(a.name, b.name);
}

export function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function pushTo<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)] ?? DEFAULT_LINK_BPS;
}

export function toFleet(input: PlanInput): Fleet {
  const chunkCount = checkWhole(input.chunkCount, 'chunkCount', 1);
  const stripes = Math.min(checkWhole(input.stripes ?? DEFAULT_STRIPES, 'stripes', 1), chunkCount);
  const crossIdc = checkWhole(input.crossIdc ?? 1, 'crossIdc', 1);
  const source = checkHost(input.source, 'the source', chunkCount, stripes);
  source.need.fill(0);
  const list: Host[] = [];
  const seen = new Set<string>([source.name]);
  for (const raw of input.hosts) {
    const h = checkHost(raw, 'a target', chunkCount, stripes);
    if (h.name === source.name) {
      invalid(`host "${h.name}" is both the source and a target; leave the source out of hosts`, {
        host: h.name,
      });
    }
    if (seen.has(h.name)) {
      invalid(`host "${h.name}" is listed twice; list every target once`, { host: h.name });
    }
    seen.add(h.name);
    list.push(h);
  }
  list.sort(byRank).forEach((h, i) => {
    h.rank = i;
  });
  const refRate = median(list.filter((h) => !isSeed(h)).map((h) => h.down));
  return { stripes, chunkCount, crossIdc, source, hosts: new Map(list.map((h) => [h.name, h])), refRate };
}

export function isSeed(h: Host): boolean {
  return h.need.every((n) => n === 0);
}

/** Upload streams a host may serve; a stream carries 1/S of the blob. */
export function budgetOf(f: Fleet, h: Host): number {
  const b = Math.floor((f.stripes * h.up) / f.refRate + EPS);
  return h === f.source ? Math.max(f.stripes, b) : b;
}

/** The fleet `p` was made from; throws when `input` is not it. */
export function fleetOf(p: Plan, input: PlanInput): Fleet {
  const f = toFleet({ ...input, stripes: p.stripes });
  if (f.source.name !== p.source || f.chunkCount !== p.chunkCount || f.stripes !== p.stripes) {
    invalid(
      `the plan was made for source "${p.source}", ${p.chunkCount} chunks and ${p.stripes} stripes, ` +
        `not source "${f.source.name}" and ${f.chunkCount} chunks; pass the input the plan was made from`,
      { field: 'input' },
    );
  }
  for (const name of [...Object.keys(p.parents), ...p.seeds, ...p.failed]) {
    if (!f.hosts.has(name)) {
      invalid(`host "${name}" of the plan is not in the input; pass the input the plan was made from`, {
        host: name,
      });
    }
  }
  return f;
}

// ---------------------------------------------------------------- plan output

function sortedRecord<T>(entries: Iterable<[string, T]>): Record<string, T> {
  return Object.fromEntries([...entries].sort((x, y) => cmp(x[0], y[0])));
}

/** Hops from a root per host in stripe s; throws on a cycle or a parent outside the plan. */
export function stripeDepths(
  f: Fleet,
  parents: ReadonlyMap<string, readonly string[]>,
  s: number,
): Map<string, number> {
  const depth = new Map<string, number>();
  for (const name of parents.keys()) {
    const chain: string[] = [];
    let x = name;
    while (!depth.has(x) && parents.has(x)) {
      if (chain.length > parents.size) {
        invalid(`stripe ${s} has a cycle through host "${name}"`, { host: name });
      }
      chain.push(x);
      x = parents.get(x)?.[s] ?? '';
    }
    if (!depth.has(x) && x !== f.source.name && !f.hosts.has(x)) {
      invalid(`host "${chain.at(-1)}" has parent "${x}" in stripe ${s}, which is not in the plan`, {
        host: name,
      });
    }
    let d = depth.get(x) ?? 0;
    for (const y of chain.reverse()) depth.set(y, ++d);
  }
  return depth;
}

function uploadsOf(
  f: Fleet,
  parents: ReadonlyMap<string, readonly string[]>,
  alive: string[],
): Map<string, number> {
  const up = new Map<string, number>(alive.map((n) => [n, 0]));
  for (const [name, ps] of parents) {
    const need = f.hosts.get(name)?.need ?? [];
    ps.forEach((p, s) => {
      up.set(p, (up.get(p) ?? 0) + (need[s] ?? 0) / f.chunkCount);
    });
  }
  for (const [n, v] of up) up.set(n, Math.round(v * 1e6) / 1e6);
  return up;
}

export function idcOf(f: Fleet, name: string): string | undefined {
  return name === f.source.name ? f.source.idc : f.hosts.get(name)?.idc;
}

function entriesOf(f: Fleet, parents: ReadonlyMap<string, readonly string[]>): Record<string, string[]> {
  const entries = new Map<string, string[]>();
  for (const [name, ps] of parents) {
    const idc = idcOf(f, name) ?? '';
    if (ps.some((p) => idcOf(f, p) !== idc)) pushTo(entries, idc, name);
  }
  return sortedRecord(entries);
}

export function assemble(f: Fleet, parents: Map<string, string[]>, failed: string[]): Plan {
  let depth = 0;
  for (let s = 0; s < f.stripes; s++) {
    for (const d of stripeDepths(f, parents, s).values()) depth = Math.max(depth, d);
  }
  const dead = new Set(failed);
  const alive = [f.source.name, ...[...f.hosts.keys()].filter((n) => !dead.has(n))];
  return {
    stripes: f.stripes,
    chunkCount: f.chunkCount,
    source: f.source.name,
    seeds: [...f.hosts.values()].filter((h) => isSeed(h) && !dead.has(h.name)).map((h) => h.name),
    parents: sortedRecord(parents),
    entries: entriesOf(f, parents),
    depth,
    uploads: sortedRecord(uploadsOf(f, parents, alive)),
    failed: [...failed].sort(cmp),
  };
}

/** The hosts that fetch stripe s from `host`, by name. */
export function childrenOf(p: Plan, host: string, stripe: number): string[] {
  return Object.keys(p.parents)
    .filter((name) => p.parents[name]?.[stripe] === host)
    .sort(cmp);
}
