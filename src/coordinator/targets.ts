/**
 * Turns a run's targets into host names. A target is `all`, a label
 * selector (`role=web,idc=bj`: every pair must match), a group of the
 * inventory, a host name, or a host range (`web-[01-04]`). The fleet is the
 * inventory's hosts plus agents that joined under a name the inventory does
 * not have. Pure: the caller passes the inventory and the agents.
 */
import { closest, type Inventory } from '../render/index.js';

export interface FleetView {
  inventory: Inventory | undefined;
  /** Joined agents (revoked ones too: they resolve, then show as unreachable) and the labels they report. */
  agents: ReadonlyMap<string, Readonly<Record<string, string>>>;
}

export type TargetResult = { ok: true; hosts: string[] } | { ok: false; index: number; message: string };

const RANGE_RE = /^([^[\]]*)\[(\d+)-(\d+)\]([^[\]]*)$/;
const SELECTOR_PAIR_RE = /^([A-Za-z0-9_][A-Za-z0-9_./-]*)(!?=)([A-Za-z0-9_.:/@+-]*)$/;

/** Labels of a host: the agent's own, overridden by the inventory's. */
export function hostLabels(view: FleetView, host: string): Record<string, string> {
  return { ...(view.agents.get(host) ?? {}), ...(view.inventory?.hosts.get(host)?.labels ?? {}) };
}

export function allHosts(view: FleetView): string[] {
  const names = new Set<string>(view.inventory ? view.inventory.hosts.keys() : []);
  for (const name of view.agents.keys()) names.add(name);
  return [...names].sort();
}

function expandRange(target: string): string[] | undefined {
  const m = RANGE_RE.exec(target);
  if (!m) return undefined;
  const [, pre = '', lo = '', hi = '', post = ''] = m;
  const a = Number(lo);
  const b = Number(hi);
  if (b < a || b - a > 100_000) return undefined;
  const width = lo.length;
  const out: string[] = [];
  for (let i = a; i <= b; i++) out.push(`${pre}${String(i).padStart(width, '0')}${post}`);
  return out;
}

export function resolveTargets(targets: readonly string[], view: FleetView): TargetResult {
  const known = allHosts(view);
  const knownSet = new Set(known);
  const out = new Set<string>();
  for (const [index, target] of targets.entries()) {
    if (target === 'all') {
      for (const h of known) out.add(h);
      continue;
    }
    if (target.includes('=')) {
      const pairs = target.split(',');
      const parsed: { key: string; neg: boolean; value: string }[] = [];
      for (const pair of pairs) {
        const m = SELECTOR_PAIR_RE.exec(pair);
        if (!m) {
          return {
            ok: false,
            index,
            message: `label selector "${target}": "${pair}" is not KEY=VALUE or KEY!=VALUE`,
          };
        }
        parsed.push({ key: m[1] ?? '', neg: m[2] === '!=', value: m[3] ?? '' });
      }
      const matched = known.filter((h) => {
        const labels = hostLabels(view, h);
        return parsed.every((p) => (labels[p.key] === p.value) !== p.neg);
      });
      if (matched.length === 0) {
        return { ok: false, index, message: `label selector "${target}" matches no host` };
      }
      for (const h of matched) out.add(h);
      continue;
    }
    const group = view.inventory?.groups.get(target);
    if (group) {
      const members = [...(view.inventory?.memberships ?? [])]
        .filter(([, groups]) => groups.some((g) => g.name === target))
        .map(([h]) => h);
      if (members.length === 0) return { ok: false, index, message: `group "${target}" has no hosts` };
      for (const h of members) out.add(h);
      continue;
    }
    if (knownSet.has(target)) {
      out.add(target);
      continue;
    }
    const range = expandRange(target);
    if (range) {
      const missing = range.filter((h) => !knownSet.has(h));
      if (missing.length > 0) {
        return {
          ok: false,
          index,
          message: `host range "${target}": no host named ${missing.slice(0, 3).join(', ')}`,
        };
      }
      for (const h of range) out.add(h);
      continue;
    }
    const groups = view.inventory ? [...view.inventory.groups.keys()] : [];
    const near = closest(target, [...known, ...groups]);
    return {
      ok: false,
      index,
      message: `"${target}" is not a host, group, host range or label selector${near ? ` (did you mean "${near}"?)` : ''}; targets are all, NAME, GROUP, web-[01-04] or key=value,key=value`,
    };
  }
  return { ok: true, hosts: [...out].sort() };
}
