/**
 * The planner's re-parenting (the "Re-parenting" part of planner.ts's module
 * comment): replan takes failed hosts out of a plan and gives their orphans
 * new parents, changing no other edge, and rejoinParents places a host that
 * restarts mid-distribution.
 */
import {
  assemble,
  budgetOf,
  childrenOf,
  cmp,
  type Fleet,
  fleetOf,
  type Host,
  idcOf,
  invalid,
  type Plan,
  type PlanInput,
  stripeDepths,
} from './planner-fleet.js';

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
 * comment in planner.ts). Candidates are live hosts of its IDC and, if no live edge enters
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
