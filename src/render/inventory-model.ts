/**
 * The fleet as canopy knows it: hosts, groups, labels and where each
 * variable was written. Both inventory formats (canopy's own and Ansible's)
 * load into these types; nothing downstream knows which format it came from.
 * Pure data and small pure helpers; no I/O here.
 */
import type { Diagnostic } from './diagnostics.js';
import type { VarMap } from './merge.js';
import type { KeyPath, SourcePos, YamlVersion } from './yaml-source.js';

export const GROUP_KINDS = ['idc', 'set', 'custom'] as const;
export type GroupKind = (typeof GROUP_KINDS)[number];

/** Variable layers from lowest to highest priority. */
export const LAYER_KINDS = ['global', 'all', 'idc', 'set', 'custom', 'host', 'task'] as const;
export type LayerKind = (typeof LAYER_KINDS)[number];

/** The variable reserved for the built-in host facts templates see. */
export const RESERVED_VAR = 'canopy';

/**
 * One mapping of variables as written in one place: a file (and the key
 * path to the mapping inside it), or the command line.
 */
export interface VarSource {
  /** A file path, or a description such as `--var db.port=5433`. */
  readonly origin: string;
  /** Set when `origin` is a YAML file: how to re-read it to locate a key. */
  readonly yaml?: { version: YamlVersion; keyPath: KeyPath };
  readonly vars: VarMap;
}

export interface Group {
  readonly name: string;
  readonly kind: GroupKind;
  readonly priority: number;
  /** 1 for canopy's groups; Ansible's nesting depth below `all` for Ansible's. */
  readonly depth: number;
  /** Static members (already checked to exist). */
  readonly hosts: readonly string[];
  /** Every host whose labels include all of these is a member too. */
  readonly match: Readonly<Record<string, string>> | undefined;
  readonly sources: readonly VarSource[];
  /** `sources` merged, lowest first. */
  readonly vars: VarMap;
  readonly pos: SourcePos;
}

export interface Host {
  readonly name: string;
  readonly address: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly sources: readonly VarSource[];
  readonly vars: VarMap;
  readonly pos: SourcePos;
}

export interface Inventory {
  readonly format: 'canopy' | 'ansible';
  /** The path the operator gave. */
  readonly path: string;
  /** Every file read, in the order read. */
  readonly files: readonly string[];
  readonly global: readonly VarSource[];
  readonly all: readonly VarSource[];
  readonly groups: ReadonlyMap<string, Group>;
  readonly hosts: ReadonlyMap<string, Host>;
  /** Each host's groups (not `all`), in layer order: lowest first. */
  readonly memberships: ReadonlyMap<string, readonly Group[]>;
  /** Variable names (or dotted paths) whose values are secret. */
  readonly secrets: readonly string[];
  readonly warnings: readonly Diagnostic[];
}

const KIND_RANK: Record<GroupKind, number> = { idc: 0, set: 1, custom: 2 };

/**
 * Layer order of two groups that both hold a host: kind first, then (for
 * Ansible's nested groups) depth, then priority, then name. Later sorts
 * higher, so it wins. Never depends on file or key order.
 */
export function compareGroups(a: Group, b: Group): number {
  return (
    KIND_RANK[a.kind] - KIND_RANK[b.kind] ||
    a.depth - b.depth ||
    a.priority - b.priority ||
    (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
  );
}

export function matchesLabels(
  labels: Readonly<Record<string, string>>,
  match: Readonly<Record<string, string>>,
): boolean {
  for (const [k, v] of Object.entries(match)) if (labels[k] !== v) return false;
  return true;
}

/** Computes every host's groups, sorted in layer order. */
export function computeMemberships(
  hosts: ReadonlyMap<string, Host>,
  groups: ReadonlyMap<string, Group>,
): Map<string, Group[]> {
  const out = new Map<string, Group[]>();
  for (const name of hosts.keys()) out.set(name, []);
  for (const group of groups.values()) {
    const members = new Set(group.hosts);
    if (group.match) {
      for (const host of hosts.values()) if (matchesLabels(host.labels, group.match)) members.add(host.name);
    }
    for (const m of members) out.get(m)?.push(group);
  }
  for (const list of out.values()) list.sort(compareGroups);
  return out;
}

/** How a layer is named in explain output. */
export function describeGroup(g: Group): string {
  return `group ${g.name} (${g.kind}, priority ${g.priority})`;
}

/** Host and group names: safe in a shell word, a file name and a URL. */
export const NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$/;
/** Label keys and values (values also may not hold `,` or `=`: selector syntax). */
export const LABEL_KEY_RE = /^[A-Za-z0-9_][A-Za-z0-9_./-]{0,62}$/;
export const LABEL_VALUE_RE = /^[A-Za-z0-9_.:/@+-]{0,253}$/;
