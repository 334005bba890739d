/**
 * The layered variable model: which layers apply to a host, in which order,
 * and what they merge to.
 *
 *   global < group all < idc groups < set groups < custom groups < host < task
 *
 * Each layer deep-merges over the ones below (mappings merge, scalars and
 * lists replace). Templates also see the reserved, read-only `canopy`
 * mapping of built-in host facts. VarResolver caches the merge of the group
 * layers per distinct set of groups, so that 10,000 hosts in a handful of
 * group combinations cost a handful of group merges.
 */
import { CanopyError } from '../errors/index.js';
import {
  describeGroup,
  type Group,
  type Inventory,
  type LayerKind,
  type VarSource,
} from './inventory-model.js';
import { deepMerge, mergeAll, type VarMap } from './merge.js';
import { didYouMean } from './suggest.js';

export interface Layer {
  readonly kind: LayerKind;
  /** How explain output names it: `global`, `group web (set, priority 2)`, `host web-01`, `task`. */
  readonly label: string;
  readonly sources: readonly VarSource[];
  readonly group?: Group;
}

/** The built-in facts templates see as `canopy.host.*`. */
export interface HostFacts {
  readonly host: {
    readonly name: string;
    readonly address: string;
    readonly labels: Readonly<Record<string, string>>;
    readonly groups: readonly string[];
  };
}

export function requireHost(inv: Inventory, name: string): void {
  if (inv.hosts.has(name)) return;
  throw new CanopyError(
    'INVENTORY_UNKNOWN_HOST',
    `host "${name}" is not in inventory ${inv.path}${didYouMean(name, inv.hosts.keys())}; list the hosts with: canopy inventory --inventory ${inv.path}`,
    { host: name },
  );
}

/** Every layer that applies to `host`, lowest first. */
export function hostLayers(inv: Inventory, hostName: string, task: readonly VarSource[] = []): Layer[] {
  requireHost(inv, hostName);
  const host = inv.hosts.get(hostName);
  const layers: Layer[] = [
    { kind: 'global', label: 'global', sources: inv.global },
    { kind: 'all', label: 'group all', sources: inv.all },
  ];
  for (const g of inv.memberships.get(hostName) ?? []) {
    layers.push({ kind: g.kind, label: describeGroup(g), sources: g.sources, group: g });
  }
  layers.push({ kind: 'host', label: `host ${hostName}`, sources: host?.sources ?? [] });
  layers.push({ kind: 'task', label: 'task', sources: task });
  return layers;
}

export function hostFacts(inv: Inventory, hostName: string): HostFacts {
  requireHost(inv, hostName);
  const host = inv.hosts.get(hostName);
  const groups = ['all', ...(inv.memberships.get(hostName) ?? []).map((g) => g.name)];
  return deepFreeze({
    host: { name: hostName, address: host?.address ?? hostName, labels: { ...host?.labels }, groups },
  });
}

export class VarResolver {
  readonly #inv: Inventory;
  readonly #base: VarMap;
  readonly #task: VarMap;
  readonly #byGroups = new Map<string, VarMap>();

  constructor(inv: Inventory, task: readonly VarSource[] = []) {
    this.#inv = inv;
    this.#base = mergeAll([...inv.global, ...inv.all].map((s) => s.vars));
    this.#task = mergeAll(task.map((s) => s.vars));
  }

  /** The merged variables of a host (without the `canopy` facts). */
  vars(hostName: string): VarMap {
    requireHost(this.#inv, hostName);
    const groups = this.#inv.memberships.get(hostName) ?? [];
    const key = groups.map((g) => g.name).join('\0');
    let withGroups = this.#byGroups.get(key);
    if (!withGroups) {
      withGroups = groups.reduce((acc, g) => deepMerge(acc, g.vars), this.#base);
      this.#byGroups.set(key, withGroups);
    }
    const host = this.#inv.hosts.get(hostName);
    return deepMerge(deepMerge(withGroups, host?.vars ?? {}), this.#task);
  }

  /** What a template sees: the merged variables plus the read-only `canopy` facts. */
  templateVars(hostName: string): VarMap {
    return { ...this.vars(hostName), canopy: hostFacts(this.#inv, hostName) };
  }
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
