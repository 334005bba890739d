/**
 * The planner's IDC groups (the "Groups" part of planner.ts's module comment):
 * one group per IDC with its roots (seeds and the source, or the entries
 * that receive from outside), and which group feeds each entered group.
 */
import { budgetOf, cmp, type Fleet, type Host, isSeed, pushTo } from './planner-fleet.js';

/** The hosts of one IDC. Stripe s enters it at roots[s mod roots.length]. */
export interface Group {
  idc: string;
  roots: Host[];
  /** Hosts that need data, in rank order (entries included). */
  members: Host[];
  /** True when the roots are entries that receive from outside the IDC. */
  entered: boolean;
  /** Groups whose entries this group feeds. */
  children: Group[];
}

export function rootOf(g: Group, s: number): Host {
  const r = g.roots[s % g.roots.length];
  if (r === undefined) throw new Error(`planner: group ${g.idc} has no root`);
  return r;
}

/** Hosts that attach to the group's tree of stripe s. */
export function movers(g: Group, s: number): Host[] {
  const root = rootOf(g, s);
  return g.members.filter((h) => h !== root);
}

export function participants(g: Group): Host[] {
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
export function makeGroups(f: Fleet): Group[] {
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
export function linkGroups(f: Fleet, groups: Group[]): Group[] {
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
