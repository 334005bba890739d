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
 *
 * Code. planner-fleet.ts checks the input and models the fleet (and turns
 * parents back into a Plan), planner-groups.ts makes the IDC groups, this
 * file spends the budgets and builds the trees (plan, choosePlan),
 * planner-repair.ts re-parents (replan, rejoinParents) and
 * planner-estimate.ts holds the finish-time model. Import them through here.
 */
import { type EstimateOptions, estimateSeconds } from './planner-estimate.js';
import {
  assemble,
  budgetOf,
  checkWhole,
  EPS,
  type Fleet,
  type Host,
  isSeed,
  type Plan,
  type PlanInput,
  pushTo,
  toFleet,
} from './planner-fleet.js';
import { type Group, linkGroups, makeGroups, movers, participants, rootOf } from './planner-groups.js';

export { type EstimateOptions, estimateSeconds } from './planner-estimate.js';
export {
  childrenOf,
  DEFAULT_LINK_BPS,
  DEFAULT_STRIPES,
  type Plan,
  type PlanHost,
  type PlanInput,
} from './planner-fleet.js';
export { rejoinParents, replan } from './planner-repair.js';

export interface ChooseOptions extends EstimateOptions {
  /** Try S = 1..maxStripes (default 8). */
  maxStripes?: number;
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
