/**
 * canopy's own inventory format: one YAML file, or a directory whose *.yaml
 * files are merged.
 *
 *   vars:    {...}                                   layer "global"
 *   groups:  {NAME: {kind, priority, hosts, match, vars}}   ("all": vars only)
 *   hosts:   {NAME: {address, labels, vars}}
 *   secrets: [variable names whose values are masked]
 *
 * A host or group defined in two files, or a global variable set in two
 * files, is an error naming both places: the result must never depend on the
 * order files are read in.
 */
import type { Diagnostics } from './diagnostics.js';
import { ADDRESS_RE, Checker, describe } from './inventory-check.js';
import {
  computeMemberships,
  GROUP_KINDS,
  type Group,
  type GroupKind,
  type Host,
  type Inventory,
  type VarSource,
} from './inventory-model.js';
import { isMapping, type VarMap } from './merge.js';
import { didYouMean } from './suggest.js';
import { formatPos, type SourcePos, type YamlSource } from './yaml-source.js';

const TOP_KEYS = ['vars', 'groups', 'hosts', 'secrets'] as const;
const GROUP_KEYS = ['kind', 'priority', 'hosts', 'match', 'vars', 'description'] as const;
const ALL_KEYS = ['vars', 'description'] as const;
const HOST_KEYS = ['address', 'labels', 'vars', 'description'] as const;

/** Is this parsed YAML document in canopy's format (rather than Ansible's)? */
export function looksLikeCanopyInventory(value: unknown): boolean {
  if (!isMapping(value)) return false;
  const keys = Object.keys(value);
  return keys.length > 0 && keys.every((k) => (TOP_KEYS as readonly string[]).includes(k));
}

interface GroupDraft {
  name: string;
  kind: GroupKind;
  priority: number;
  hosts: { name: string; pos: SourcePos }[];
  match: Record<string, string> | undefined;
  source: VarSource;
  pos: SourcePos;
}

export function loadCanopyInventory(path: string, sources: YamlSource[], d: Diagnostics): Inventory {
  const global: VarSource[] = [];
  const all: VarSource[] = [];
  const groups = new Map<string, GroupDraft>();
  const hosts = new Map<string, Host>();
  const secrets: string[] = [];
  const globalOwners = new Map<string, { pos: SourcePos; leaf: boolean }>();

  for (const src of sources) {
    const c = new Checker(src, d);
    if (src.value === null) continue; // an empty file is allowed
    const top = c.mapping([], src.value, 'the inventory');
    if (!top) continue;
    c.keys([], top, TOP_KEYS, 'the inventory (top level)');
    const vars = c.vars(['vars'], top.vars, '"vars"');
    if (Object.keys(vars).length > 0) {
      claimLeaves(c, vars, ['vars'], globalOwners, 'global variable');
      global.push({ origin: src.file, yaml: { version: '1.2', keyPath: ['vars'] }, vars });
    }
    secrets.push(...c.stringList(['secrets'], top.secrets, '"secrets"'));
    const groupMap = c.mapping(['groups'], top.groups, '"groups"') ?? {};
    for (const [name, body] of Object.entries(groupMap)) {
      if (name === 'all') {
        const b = c.mapping(['groups', 'all'], body, 'group "all"') ?? {};
        c.keys(['groups', 'all'], b, ALL_KEYS, 'group "all" (it holds every host: only "vars" is allowed)');
        const v = c.vars(['groups', 'all', 'vars'], b.vars, 'group "all" vars');
        all.push({ origin: src.file, yaml: { version: '1.2', keyPath: ['groups', 'all', 'vars'] }, vars: v });
        continue;
      }
      const draft = readGroup(c, name, body);
      if (!draft) continue;
      const prev = groups.get(name);
      if (prev) {
        d.error(
          'INVENTORY_DUPLICATE',
          draft.pos,
          `group "${name}" is already defined at ${formatPos(prev.pos)}; define it once`,
        );
        continue;
      }
      groups.set(name, draft);
    }
    const hostMap = c.mapping(['hosts'], top.hosts, '"hosts"') ?? {};
    for (const [name, body] of Object.entries(hostMap)) {
      const host = readHost(c, name, body);
      if (!host) continue;
      const prev = hosts.get(name);
      if (prev) {
        d.error(
          'INVENTORY_DUPLICATE',
          host.pos,
          `host "${name}" is already defined at ${formatPos(prev.pos)}; define it once`,
        );
        continue;
      }
      hosts.set(name, host);
    }
  }

  const finalGroups = new Map<string, Group>();
  for (const g of groups.values()) finalGroups.set(g.name, finishGroup(g, hosts, d));
  return {
    format: 'canopy',
    path,
    files: sources.map((s) => s.file),
    global,
    all,
    groups: finalGroups,
    hosts,
    memberships: computeMemberships(hosts, finalGroups),
    secrets,
    warnings: [],
  };
}

function readGroup(c: Checker, name: string, body: unknown): GroupDraft | undefined {
  const base = ['groups', name];
  if (!c.name(base, name, 'group')) return undefined;
  const b = c.mapping(base, body, `group "${name}"`) ?? {};
  c.keys(base, b, GROUP_KEYS, `group "${name}"`);
  let kind: GroupKind = 'custom';
  if (b.kind !== undefined) {
    if ((GROUP_KINDS as readonly unknown[]).includes(b.kind)) kind = b.kind as GroupKind;
    else
      c.d.error(
        'INVENTORY_INVALID',
        c.pos([...base, 'kind']),
        `group "${name}": kind must be one of ${GROUP_KINDS.join(', ')}, not ${describe(b.kind)}${didYouMean(String(b.kind), GROUP_KINDS)}`,
      );
  }
  const hostNames = c.stringList([...base, 'hosts'], b.hosts, `group "${name}" hosts`);
  const match =
    b.match === undefined ? undefined : c.labels([...base, 'match'], b.match, `group "${name}" match`);
  return {
    name,
    kind,
    priority: c.integer([...base, 'priority'], b.priority, `group "${name}" priority`) ?? 0,
    hosts: hostNames.map((h, i) => ({ name: h, pos: c.pos([...base, 'hosts', i]) })),
    match,
    source: {
      origin: c.src.file,
      yaml: { version: '1.2', keyPath: [...base, 'vars'] },
      vars: c.vars([...base, 'vars'], b.vars, `group "${name}" vars`),
    },
    pos: c.pos(base),
  };
}

function readHost(c: Checker, name: string, body: unknown): Host | undefined {
  const base = ['hosts', name];
  if (!c.name(base, name, 'host')) return undefined;
  const b = c.mapping(base, body, `host "${name}"`) ?? {};
  c.keys(base, b, HOST_KEYS, `host "${name}"`);
  let address = name;
  if (b.address !== undefined && b.address !== null) {
    if (typeof b.address === 'string' && ADDRESS_RE.test(b.address)) address = b.address;
    else
      c.d.error(
        'INVENTORY_INVALID',
        c.pos([...base, 'address']),
        `host "${name}": address must be a host name or IP address, not ${describe(b.address)}`,
      );
  }
  const vars = c.vars([...base, 'vars'], b.vars, `host "${name}" vars`);
  return {
    name,
    address,
    labels: c.labels([...base, 'labels'], b.labels, `host "${name}" labels`),
    sources: [{ origin: c.src.file, yaml: { version: '1.2', keyPath: [...base, 'vars'] }, vars }],
    vars,
    pos: c.pos(base),
  };
}

function finishGroup(g: GroupDraft, hosts: ReadonlyMap<string, Host>, d: Diagnostics): Group {
  const members: string[] = [];
  for (const h of g.hosts) {
    if (hosts.has(h.name)) members.push(h.name);
    else
      d.error(
        'INVENTORY_UNKNOWN_HOST',
        h.pos,
        `group "${g.name}" names host "${h.name}", which is not defined under "hosts"${didYouMean(h.name, hosts.keys())}; define the host or remove it from the group`,
      );
  }
  return {
    name: g.name,
    kind: g.kind,
    priority: g.priority,
    depth: 1,
    hosts: members,
    match: g.match,
    sources: [g.source],
    vars: g.source.vars,
    pos: g.pos,
  };
}

/**
 * Records where each variable path is set. The same path set in two files is
 * an error when either sets a value there (rather than a mapping both extend):
 * otherwise the result would depend on the order the files are read in.
 */
function claimLeaves(
  c: Checker,
  vars: VarMap,
  keyPath: string[],
  owners: Map<string, { pos: SourcePos; leaf: boolean }>,
  what: string,
): void {
  for (const [k, v] of Object.entries(vars)) {
    const path = [...keyPath, k];
    const leaf = !(isMapping(v) && Object.keys(v).length > 0);
    const dotted = path.slice(1).join('.');
    const pos = c.pos(path);
    const prev = owners.get(dotted);
    if (prev && prev.pos.file !== pos.file && (leaf || prev.leaf)) {
      c.d.error(
        'INVENTORY_DUPLICATE',
        pos,
        `${what} "${dotted}" is also set at ${formatPos(prev.pos)}; set it in one file only`,
      );
      continue;
    }
    if (!prev || leaf) owners.set(dotted, { pos, leaf });
    if (!leaf) claimLeaves(c, v as VarMap, path, owners, what);
  }
}
