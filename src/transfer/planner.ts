/**
 * The distribution planner: a pure function from hosts (IDC and rack labels,
 * link capacities, chunks already held) to a relay plan, the re-parenting of
 * a plan when hosts die or stall, and an analytic estimate of a plan's finish
 * time. It does no I/O, keeps no state and uses no randomness: the same input
 * gives the same plan, whatever the order of the hosts. Plans are plain JSON.
 *
 * Shape. The blob's chunks are striped: chunk i belongs to stripe i mod S.
 * Every stripe is a tree over all hosts, and a host fetches the chunks of a
 * stripe it lacks from its parent in that stripe. Every host has a budget of
 * upload streams, S x its uplink / the median downlink (S with equal links);
 * a stream carries 1/S of the blob, so a host spending its budget uploads
 * about one copy, and the source's budget is at least S (one copy).
 *
 * Groups. Hosts are grouped by IDC. A group's roots are its seeds (targets
 * that already hold everything) and, in the source's IDC, the source; stripe
 * s enters the group at roots[s mod roots.length], so seeds take stripes off
 * the source. A group without a root is entered from outside through at most
 * `crossIdc` entry hosts: entry j receives the stripes s with s mod k = j
 * from outside and roots them inside its IDC (with k = 1, every stripe).
 * "Crossed once" is meant in bytes: each stripe enters an IDC by one edge, so
 * one copy of the blob crosses into each IDC, carried by at most `crossIdc`
 * hosts. With equal links every group has exactly one copy to spare (its
 * hosts' budgets less its own needs), so it feeds one other IDC's entries;
 * groups are fed breadth-first from the rooted groups, and when no group has
 * a copy to spare the source feeds the IDC over its budget.
 *
 * Trees (SplitStream). Inside a group, each stripe needs one slot per host
 * that joins its tree. Members, one rack after another in turn, spend their
 * budgets along the stripes' needs in stripe order: a member covers the rest
 * of one stripe and the start of the next, so it is interior (S children)
 * in one stripe and a leaf in the others, and at most S - 1 members per IDC
 * forward two stripes; none exceeds its budget. Where the members' budgets
 * fall short, a source or seed with streams left takes more children in the
 * stripes it roots (first, so they are near the top), and past every budget
 * the stripe's root takes the rest. Each stripe's tree is then filled: the first interior host
 * of each rack joins at the oldest free slot, the rack's other interior
 * hosts below it breadth-first, entries of fed IDCs as early as that cannot
 * starve the rest, and leaves at a free slot in their own rack if any.
 * Depth is about log_S(hosts of the IDC) + 2 per IDC on the way.
 *
 * Re-parenting (`replan`). Failed hosts leave the plan, and only the edges
 * of orphans (live hosts whose parent in a stripe failed) change. An orphan
 * takes its nearest live ancestor if that has a stream to spare (the failed
 * child's), else the live host of its IDC with a stream to spare (same rack
 * first, or shallowest first for an orphan with children of its own). Each
 * failed edge's first orphan goes first, so a freed stream goes back to the
 * stripe that lost it. If the edge entering an IDC in a stripe failed, one
 * orphan may take a parent in the IDC that fed it and the rest stay inside:
 * each stripe still crosses once, though by up to S hosts until the next
 * fresh plan. A candidate must reach a root through live hosts, which rules
 * out the orphan's descendants, so no cycle forms; orphans are adopted in
 * rounds, as adopted subtrees become reachable again. When a round adopts
 * nobody, the live host of the IDC least over its budget takes one, and the
 * source only if no host of the IDC reaches a root. A failed host's parents
 * free as many streams as it served, so after one failure, in IDCs of at
 * least S hosts, nobody passes 1 + 1/S copies and the source uploads no more.
 *
 * Estimate. A chunk of stripe s moves over edge p -> c at min(uplink(p) /
 * streams p serves, downlink(c) / stripes c fetches). Along a path of hops
 * with per-chunk times t_j (plus `hopSeconds` each, paid once: several chunks
 * are in flight), n chunks store-and-forward arrive by sum(t_j + hop) +
 * (n - 1) * max(t_j); the plan finishes when its slowest host and stripe do.
 * Hosts holding a whole stripe start it at 0; partial holders are counted as
 * needing the whole stripe (an upper bound). With equal links B and depth d:
 * size/B + (d - 1) * S * chunkSize/B, so both depth and chunk size matter.
 * `choosePlan` tries S = 1..8 and keeps the fastest (the smaller S on a tie).
 *
 * What the model says for a 128 MiB blob, every link 25 Mbit/s (size/B =
 * 42.95 s), hopSeconds 0, S chosen by `choosePlan`; ratio = time / (size/B).
 * The chain (S = 1) is shown for comparison. planner.test.ts recomputes it.
 *
 *   hosts  chunk    S  depth  seconds  ratio   chain (S=1) ratio
 *       8  256 KiB  2      4    43.45  1.012   1.014
 *       8  1 MiB    2      4    44.96  1.047   1.055
 *       8  4 MiB    2      4    51.00  1.187   1.219
 *      16  256 KiB  2      5    43.62  1.016   1.029
 *      16  1 MiB    2      5    45.63  1.063   1.117
 *      16  4 MiB    2      5    53.69  1.250   1.469
 *      32  256 KiB  2      6    43.79  1.020   1.061
 *      32  1 MiB    2      6    46.31  1.078   1.242
 *      32  4 MiB    2      6    56.37  1.313   1.969
 *
 * So chunks of 1 MiB or less meet the 1.10 target at N = 32, and 256 KiB
 * keeps the growth from N = 8 to 32 under 0.01; 4 MiB chunks miss it even
 * in a tree (a 4 MiB hop at half a link is 2.7 s). At N = 32, S = 3 all but
 * ties S = 2; the model prefers few stripes because each stripe's edge is
 * 1/S of a link, so a chunk's hop takes S times longer.
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

export interface EstimateOptions {
  /** Blob size in bytes. */
  size: number;
  /** Chunk size in bytes; ceil(size / chunkSize) must be the plan's chunkCount. */
  chunkSize: number;
  /** Fixed cost of a hop (round trip, verification), paid once per hop. Default 0. */
  hopSeconds?: number;
}

export interface ChooseOptions extends EstimateOptions {
  /** Try S = 1..maxStripes (default 8). */
  maxStripes?: number;
}

export const DEFAULT_STRIPES = 4;
export const DEFAULT_LINK_BPS = 1_000_000_000;
const EPS = 1e-9;

/** A validated host. `need[s]` counts the chunks of stripe s it lacks. */
interface Host {
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

interface Fleet {
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

function invalid(message: string, subject: Record<string, unknown> = {}): never {
  throw new CanopyError('TRANSFER_PLAN_INVALID', message, subject);
}

function checkWhole(value: unknown, field: string, min: number): number {
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
function stripeChunks(chunkCount: number, stripes: number, s: number): number {
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

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function pushTo<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)] ?? DEFAULT_LINK_BPS;
}

function toFleet(input: PlanInput): Fleet {
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

function isSeed(h: Host): boolean {
  return h.need.every((n) => n === 0);
}

/** Upload streams a host may serve; a stream carries 1/S of the blob. */
function budgetOf(f: Fleet, h: Host): number {
  const b = Math.floor((f.stripes * h.up) / f.refRate + EPS);
  return h === f.source ? Math.max(f.stripes, b) : b;
}

// ---------------------------------------------------------------- groups

/** The hosts of one IDC. Stripe s enters it at roots[s mod roots.length]. */
interface Group {
  idc: string;
  roots: Host[];
  /** Hosts that need data, in rank order (entries included). */
  members: Host[];
  /** True when the roots are entries that receive from outside the IDC. */
  entered: boolean;
  /** Groups whose entries this group feeds. */
  children: Group[];
}

function rootOf(g: Group, s: number): Host {
  const r = g.roots[s % g.roots.length];
  if (r === undefined) throw new Error(`planner: group ${g.idc} has no root`);
  return r;
}

/** Hosts that attach to the group's tree of stripe s. */
function movers(g: Group, s: number): Host[] {
  const root = rootOf(g, s);
  return g.members.filter((h) => h !== root);
}

function participants(g: Group): Host[] {
  return [...g.roots.filter((r) => !g.members.includes(r)), ...g.members];
}

function heldCount(f: Fleet, h: Host): number {
  return f.chunkCount - h.need.reduce((a, b) => a + b, 0);
}

/** The crossIdc hosts best placed to receive from outside: budget, then chunks held. */
function pickEntries(f: Fleet, members: Host[]): Host[] {
  const k = Math.min(f.crossIdc, f.stripes, members.length);
  const best = [...members].sort(
    (a, b) => budgetOf(f, b) - budgetOf(f, a) || heldCount(f, b) - heldCount(f, a) || a.rank - b.rank,
  );
  return best.slice(0, k).sort((a, b) => a.rank - b.rank);
}

/** One group per IDC, the source's first, then by IDC name. */
function makeGroups(f: Fleet): Group[] {
  const byIdc = new Map<string, Host[]>([[f.source.idc, []]]);
  for (const h of f.hosts.values()) pushTo(byIdc, h.idc, h);
  const idcs = [...byIdc.keys()].sort(
    (a, b) => Number(b === f.source.idc) - Number(a === f.source.idc) || cmp(a, b),
  );
  return idcs.map((idc) => {
    const hosts = byIdc.get(idc) ?? [];
    const seeds = hosts.filter(isSeed);
    const members = hosts.filter((h) => !isSeed(h));
    if (idc === f.source.idc)
      return { idc, roots: [...seeds, f.source], members, entered: false, children: [] };
    if (seeds.length > 0) return { idc, roots: seeds, members, entered: false, children: [] };
    return { idc, roots: pickEntries(f, members), members, entered: true, children: [] };
  });
}

/** Streams a group has left after serving itself. */
function spareOf(f: Fleet, g: Group): number {
  let spare = 0;
  for (const h of participants(g)) spare += budgetOf(f, h);
  for (let s = 0; s < f.stripes; s++) spare -= movers(g, s).length;
  return spare;
}

/**
 * Decides which group feeds each entered group (a feed costs one stream per
 * stripe), breadth-first from the rooted groups, and returns the groups in
 * an order where every feeder comes before the groups it feeds.
 */
function linkGroups(f: Fleet, groups: Group[]): Group[] {
  const order = groups.filter((g) => !g.entered);
  const waiting = groups
    .filter((g) => g.entered)
    .sort((a, b) => b.members.length - a.members.length || cmp(a.idc, b.idc));
  const spare = new Map(groups.map((g) => [g, spareOf(f, g)]));
  let next = 0;
  for (const child of waiting) {
    while (next < order.length && (spare.get(order[next] as Group) ?? 0) < f.stripes) next++;
    // No group has a copy to spare: the source's group feeds it over budget.
    const feeder = order[next] ?? (order[0] as Group);
    feeder.children.push(child);
    spare.set(feeder, (spare.get(feeder) ?? 0) - f.stripes);
    order.push(child);
  }
  return order;
}

// ---------------------------------------------------------------- slots

/** Per participant of a group, per stripe: how many children it takes. */
type Slots = Map<Host, number[]>;

function slotsOf(a: Slots, h: Host, s: number): number {
  return a.get(h)?.[s] ?? 0;
}

function bump(a: Slots, h: Host, s: number, by: number): void {
  const row = a.get(h);
  if (row) row[s] = (row[s] ?? 0) + by;
}

/**
 * Spends the budgets of a group's hosts on its stripes (see the module
 * comment): each root takes one child in each stripe it roots, and as many
 * more, spread over its stripes, as the members' budgets fall short; then
 * members, racks interleaved, cover the stripes' needs in stripe order, each
 * member's budget one run along them.
 */
function allocate(f: Fleet, g: Group): Slots {
  const a: Slots = new Map();
  const left = new Map<Host, number>();
  for (const h of participants(g)) {
    a.set(h, new Array<number>(f.stripes).fill(0));
    left.set(h, budgetOf(f, h));
  }
  const need: number[] = [];
  for (let s = 0; s < f.stripes; s++) {
    const r = rootOf(g, s);
    bump(a, r, s, 1);
    left.set(r, (left.get(r) ?? 0) - 1);
    need.push(Math.max(0, movers(g, s).length + g.children.length - 1));
  }
  let short = need.reduce((x, y) => x + y, 0);
  for (const h of g.members) short -= Math.max(0, left.get(h) ?? 0);
  for (const r of g.roots) {
    if (!g.members.includes(r) && short > 0) short -= spendRootLeftover(f, g, r, a, left, need, short);
  }
  let s = 0;
  for (const h of interleaveRacks(g.members)) {
    let l = left.get(h) ?? 0;
    while (l > 0 && s < f.stripes) {
      const take = Math.min(l, need[s] ?? 0);
      bump(a, h, s, take);
      need[s] = (need[s] ?? 0) - take;
      l -= take;
      if (need[s] === 0) s++;
    }
  }
  // Over budget as a last resort: the stripe's root serves the rest.
  for (let t = 0; t < f.stripes; t++) bump(a, rootOf(g, t), t, Math.max(0, need[t] ?? 0));
  return a;
}

/** A source or seed with streams left serves up to `most` more children, spread over its stripes. */
function spendRootLeftover(
  f: Fleet,
  g: Group,
  r: Host,
  a: Slots,
  left: Map<Host, number>,
  need: number[],
  most: number,
): number {
  const rooted = Array.from({ length: f.stripes }, (_, s) => s).filter((s) => rootOf(g, s) === r);
  let spent = 0;
  for (let i = 0; spent < Math.min(most, left.get(r) ?? 0) && rooted.some((s) => (need[s] ?? 0) > 0); i++) {
    const s = rooted[i % rooted.length] ?? 0;
    if ((need[s] ?? 0) <= 0) continue;
    bump(a, r, s, 1);
    need[s] = (need[s] ?? 0) - 1;
    spent++;
  }
  left.set(r, (left.get(r) ?? 0) - spent);
  return spent;
}

/** Members in rank order, but one from each rack in turn, so every stripe's interior spans the racks. */
function interleaveRacks(members: Host[]): Host[] {
  const racks = new Map<string, Host[]>();
  for (const h of members) pushTo(racks, h.rack, h);
  const out: Host[] = [];
  for (let i = 0; out.length < members.length; i++) {
    for (const hs of racks.values()) if (hs[i]) out.push(hs[i] as Host);
  }
  return out;
}

// ---------------------------------------------------------------- trees

interface Slot {
  host: Host;
  free: number;
  depth: number;
}

/** Slots in the order they were opened (about by depth); spent ones are skipped. */
class SlotFifo {
  private readonly items: Slot[] = [];
  private head = 0;

  push(slot: Slot): void {
    this.items.push(slot);
  }

  peek(): Slot | undefined {
    while ((this.items[this.head]?.free ?? 1) === 0) this.head++;
    return this.items[this.head];
  }
}

class SlotQueue {
  free = 0;
  private readonly all = new SlotFifo();
  private readonly racks = new Map<string, SlotFifo>();

  open(host: Host, free: number, depth: number): void {
    if (free <= 0) return;
    const slot = { host, free, depth };
    this.all.push(slot);
    const fifo = this.racks.get(host.rack) ?? new SlotFifo();
    fifo.push(slot);
    this.racks.set(host.rack, fifo);
    this.free += free;
  }

  /** 'oldest': the oldest free slot, or one in `rack` as shallow; 'rack': the oldest in `rack`, else the oldest. */
  take(rack: string | undefined, prefer: 'oldest' | 'rack'): Slot {
    const any = this.all.peek();
    if (!any) throw new Error('planner: a stripe ran out of slots');
    const near = rack === undefined ? undefined : this.racks.get(rack)?.peek();
    const pick = near && (prefer === 'rack' || near.depth <= any.depth) ? near : any;
    pick.free--;
    this.free--;
    return pick;
  }
}

/** One stripe's tree: parent and depth per host. */
interface Tree {
  parent: Map<string, string>;
  depth: Map<string, number>;
}

function attach(t: Tree, slot: Slot, h: Host): void {
  t.parent.set(h.name, slot.host.name);
  t.depth.set(h.name, slot.depth + 1);
}

/**
 * Fills the group's part of stripe s (see the module comment): the first
 * interior host of each rack joins at the oldest free slot, the other
 * interior hosts below their rack's first, breadth-first, and leaves at a
 * slot in their rack if there is one.
 */
function buildStripe(g: Group, s: number, a: Slots, t: Tree): void {
  const root = rootOf(g, s);
  const q = new SlotQueue();
  q.open(root, slotsOf(a, root, s), t.depth.get(root.name) ?? 0);
  const all = movers(g, s);
  const interior = all
    .filter((h) => slotsOf(a, h, s) > 0)
    .sort((x, y) => slotsOf(a, y, s) - slotsOf(a, x, s) || x.rank - y.rank);
  const heads = interior.filter((h, i) => interior.findIndex((x) => x.rack === h.rack) === i);
  const entries = g.children.map((c) => rootOf(c, s));
  let e = 0;
  for (const h of [...heads, ...interior.filter((x) => !heads.includes(x))]) {
    // An entry takes a slot for good; with two free, the rest can still attach.
    for (; e < entries.length && q.free >= 2; e++) attach(t, q.take(undefined, 'oldest'), entries[e] as Host);
    const slot = q.take(h.rack, heads.includes(h) ? 'oldest' : 'rack');
    attach(t, slot, h);
    q.open(h, slotsOf(a, h, s), slot.depth + 1);
  }
  for (; e < entries.length; e++) attach(t, q.take(undefined, 'oldest'), entries[e] as Host);
  for (const h of all) if (slotsOf(a, h, s) === 0) attach(t, q.take(h.rack, 'rack'), h);
}

/** A relay plan for `input` (see the module comment). Throws CanopyError TRANSFER_PLAN_INVALID. */
export function plan(input: PlanInput): Plan {
  const f = toFleet(input);
  const groups = linkGroups(f, makeGroups(f));
  const trees: Tree[] = Array.from({ length: f.stripes }, () => ({ parent: new Map(), depth: new Map() }));
  for (const g of groups) {
    const a = allocate(f, g);
    for (let s = 0; s < f.stripes; s++) buildStripe(g, s, a, trees[s] as Tree);
  }
  const parents = new Map<string, string[]>();
  for (const h of f.hosts.values()) {
    if (isSeed(h)) continue;
    parents.set(
      h.name,
      trees.map((t) => t.parent.get(h.name) ?? f.source.name),
    );
  }
  return assemble(f, parents, []);
}

// ---------------------------------------------------------------- plan output

function sortedRecord<T>(entries: Iterable<[string, T]>): Record<string, T> {
  return Object.fromEntries([...entries].sort((x, y) => cmp(x[0], y[0])));
}

/** Hops from a root per host in stripe s; throws on a cycle or a parent outside the plan. */
function stripeDepths(
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

function idcOf(f: Fleet, name: string): string | undefined {
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

function assemble(f: Fleet, parents: Map<string, string[]>, failed: string[]): Plan {
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

// ---------------------------------------------------------------- replan

/** The fleet `p` was made from; throws when `input` is not it. */
function fleetOf(p: Plan, input: PlanInput): Fleet {
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

interface Repair {
  f: Fleet;
  dead: ReadonlySet<string>;
  old: Plan;
  parents: Map<string, string[]>;
  /** Streams each live host serves now. */
  used: Map<string, number>;
}

function isRoot(r: Repair, name: string): boolean {
  return name === r.f.source.name || (r.old.seeds.includes(name) && !r.dead.has(name));
}

/** Whether `name` reaches a root in stripe s through live, attached hosts. */
function connected(r: Repair, name: string, s: number): boolean {
  let x = name;
  for (let steps = 0; steps <= r.parents.size; steps++) {
    if (isRoot(r, x)) return true;
    if (r.dead.has(x)) return false;
    const next = r.parents.get(x)?.[s];
    if (next === undefined) return false;
    x = next;
  }
  return false;
}

function depthNow(r: Repair, name: string, s: number): number {
  let d = 0;
  for (let x = name; !isRoot(r, x) && d <= r.parents.size; d++) x = r.parents.get(x)?.[s] ?? r.f.source.name;
  return d;
}

function spare(r: Repair, name: string): number {
  const h = name === r.f.source.name ? r.f.source : r.f.hosts.get(name);
  return h ? budgetOf(r.f, h) - (r.used.get(name) ?? 0) : 0;
}

/** The first live host above `name` in the old tree of stripe s. */
function liveAncestor(r: Repair, name: string, s: number): string {
  let x = r.old.parents[name]?.[s] ?? r.old.source;
  while (r.dead.has(x)) x = r.old.parents[x]?.[s] ?? r.old.source;
  return x;
}

/** Whether a live edge enters `idc` in stripe s. */
function entered(r: Repair, idc: string, s: number): boolean {
  for (const [name, ps] of r.parents) {
    const p = ps[s] ?? '';
    if (idcOf(r.f, name) === idc && !r.dead.has(p) && idcOf(r.f, p) !== idc) return true;
  }
  return false;
}

/**
 * The orphan's new parent in stripe s, short of the source (see the module
 * comment). Candidates are live hosts of its IDC and, if no live edge enters
 * its IDC in s any more, of the IDC its failed parent fed it from; with
 * `squeeze`, the candidate least over its budget.
 */
function adopter(r: Repair, orphan: Host, s: number, squeeze: boolean): string | undefined {
  const up = liveAncestor(r, orphan.name, s);
  const feeder = entered(r, orphan.idc, s) ? orphan.idc : idcOf(r.f, up);
  const near = (h: Host) => h.idc === orphan.idc || h.idc === feeder;
  if (spare(r, up) > 0 && connected(r, up, s) && idcOf(r.f, up) === feeder) return up;
  const interior = childrenOf(r.old, orphan.name, s).length > 0;
  let best: { name: string; key: number[] } | undefined;
  // Not the source: it takes only its own orphans (above), and the last resort.
  for (const h of r.f.hosts.values()) {
    if (!near(h) || h === orphan || r.dead.has(h.name)) continue;
    const room = spare(r, h.name);
    if ((!squeeze && room <= 0) || !connected(r, h.name, s)) continue;
    const rackMiss = h.rack === orphan.rack ? 0 : 1;
    const d = depthNow(r, h.name, s);
    const key = [
      squeeze ? -room : 0,
      h.idc === orphan.idc ? 0 : 1,
      interior ? d : rackMiss,
      interior ? rackMiss : d,
    ];
    if (!best || before(key, best.key)) best = { name: h.name, key };
  }
  return best?.name;
}

function before(a: readonly number[], b: readonly number[]): boolean {
  for (const [i, x] of a.entries()) {
    const y = b[i] ?? 0;
    if (x !== y) return x < y;
  }
  return false;
}

/** An orphan: a live host whose parent in stripe s failed. */
interface Orphan {
  name: string;
  s: number;
}

/**
 * The orphans of every stripe, in the order they are adopted: first one
 * orphan of each failed edge (the stream its failed parent freed above is
 * theirs), then by whether they are fed from outside their IDC (those go
 * last: they may take a spare stream of the feeding IDC), old depth, stripe
 * and name.
 */
function orphansOf(r: Repair): Orphan[] {
  const keyed: { o: Orphan; key: number[] }[] = [];
  for (let s = 0; s < r.f.stripes; s++) {
    const depth = stripeDepths(r.f, new Map(Object.entries(r.old.parents)), s);
    const rank = new Map<string, number>();
    for (const name of [...r.parents.keys()].sort(cmp)) {
      const parent = r.parents.get(name)?.[s] ?? '';
      if (!r.dead.has(parent)) continue;
      const crossing = Number(idcOf(r.f, liveAncestor(r, name, s)) !== r.f.hosts.get(name)?.idc);
      const sibling = rank.get(parent) ?? 0;
      rank.set(parent, sibling + 1);
      keyed.push({ o: { name, s }, key: [sibling, crossing, depth.get(name) ?? 0, s] });
    }
  }
  keyed.sort((x, y) => (before(x.key, y.key) ? -1 : before(y.key, x.key) ? 1 : cmp(x.o.name, y.o.name)));
  return keyed.map((k) => k.o);
}

/**
 * Re-parents orphans in rounds: a host that was below a failed one reaches
 * a root again once its orphaned ancestor is adopted, and its spare streams
 * can then adopt others. When a round adopts nobody, the first orphan left
 * goes to the live host of its IDC least over budget, or to the source when
 * none reaches a root.
 */
function adoptOrphans(r: Repair, orphans: Orphan[]): void {
  const set = (o: Orphan, to: string) => {
    (r.parents.get(o.name) as string[])[o.s] = to;
    r.used.set(to, (r.used.get(to) ?? 0) + 1);
  };
  let pending = orphans;
  while (pending.length > 0) {
    const left = pending.filter((o) => {
      const to = adopter(r, r.f.hosts.get(o.name) as Host, o.s, false);
      if (to !== undefined) set(o, to);
      return to === undefined;
    });
    if (left.length === pending.length) {
      const o = left.shift() as Orphan;
      set(o, adopter(r, r.f.hosts.get(o.name) as Host, o.s, true) ?? r.f.source.name);
    }
    pending = left;
  }
}

function checkFailed(f: Fleet, failed: readonly string[]): void {
  for (const name of failed) {
    if (name === f.source.name) {
      invalid(`the source "${name}" cannot fail over; plan again with another source or seed`, {
        host: name,
      });
    }
    if (!f.hosts.has(name)) {
      invalid(`failed host "${name}" is not in the plan; name targets of the plan`, { host: name });
    }
  }
}

/**
 * `p` with `failed` (dead or stalled hosts) taken out: each live host whose
 * parent in a stripe failed gets a new parent in that stripe; no other edge
 * changes. `input` is the input `p` was made from.
 */
export function replan(p: Plan, input: PlanInput, failed: readonly string[]): Plan {
  const f = fleetOf(p, input);
  checkFailed(f, failed);
  const dead = new Set([...p.failed, ...failed]);
  const parents = new Map(
    Object.entries(p.parents)
      .filter(([n]) => !dead.has(n))
      .map(([n, ps]) => [n, [...ps]]),
  );
  const used = new Map<string, number>();
  for (const ps of parents.values()) for (const x of ps) used.set(x, (used.get(x) ?? 0) + 1);
  const r: Repair = { f, dead, old: p, parents, used };
  adoptOrphans(r, orphansOf(r));
  return assemble(f, parents, [...dead]);
}

/**
 * Where a host that restarts mid-distribution should fetch what it still
 * lacks, per stripe: by then replan gave its children its parent, so going
 * back to that parent would make it upload two streams and halve the rest
 * of the stripe (measured: +26 s on a 16-host chain). It joins instead
 * below a host that serves nobody in that stripe (a chain's tail), in its
 * own IDC and rack if it can, the deepest first (it has fetched the
 * longest); undefined where no other host is a leaf (it is the tail).
 */
export function rejoinParents(p: Plan, input: PlanInput): Record<string, (string | undefined)[]> {
  const f = fleetOf(p, input);
  const parents = new Map(Object.entries(p.parents));
  const out: Record<string, (string | undefined)[]> = {};
  for (const name of parents.keys()) out[name] = [];
  for (let s = 0; s < p.stripes; s++) {
    const serving = new Set([...parents.values()].map((ps) => ps[s]));
    const depth = stripeDepths(f, parents, s);
    const leaves = [...parents.keys()].filter((n) => !serving.has(n)).sort(cmp);
    for (const name of parents.keys()) {
      const me = f.hosts.get(name) as Host;
      let best: { name: string; key: number[] } | undefined;
      for (const leaf of leaves) {
        if (leaf === name) continue;
        const h = f.hosts.get(leaf) as Host;
        const key = [h.idc === me.idc ? 0 : 1, h.rack === me.rack ? 0 : 1, -(depth.get(leaf) ?? 0)];
        if (!best || before(key, best.key)) best = { name: leaf, key };
      }
      (out[name] as (string | undefined)[])[s] = best?.name;
    }
  }
  return out;
}

// ---------------------------------------------------------------- estimate

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
 * comment. `input` gives the capacities (the one the plan was made from).
 */
export function estimateSeconds(p: Plan, input: PlanInput, opts: EstimateOptions): number {
  const { bits, hop } = checkEstimate(p, opts);
  const f = fleetOf(p, input);
  const counts = streamCounts(f, p);
  let worst = 0;
  for (let s = 0; s < p.stripes; s++) worst = Math.max(worst, stripeSeconds(f, p, s, counts, bits, hop));
  return worst;
}

/** Plans with S = 1..maxStripes and keeps the plan the estimate finds fastest (the smaller S on a tie). */
export function choosePlan(input: PlanInput, opts: ChooseOptions): { plan: Plan; seconds: number } {
  const maxStripes = checkWhole(opts.maxStripes ?? 8, 'maxStripes', 1);
  let best = { plan: plan({ ...input, stripes: 1 }), seconds: 0 };
  best.seconds = estimateSeconds(best.plan, input, opts);
  for (let s = 2; s <= Math.min(maxStripes, best.plan.chunkCount); s++) {
    const p = plan({ ...input, stripes: s });
    const seconds = estimateSeconds(p, input, opts);
    if (seconds < best.seconds * (1 - EPS)) best = { plan: p, seconds };
  }
  return best;
}
