/**
 * Ansible YAML inventories, read as Ansible reads them, so that an operator's
 * existing inventory works as-is: groups with `hosts`, `vars` and `children`,
 * host ranges (`web[01:20]`), `group_vars/` and `host_vars/` beside the
 * inventory (files `NAME`, `NAME.yml|.yaml|.json` or a directory `NAME/`),
 * YAML 1.1 scalars, `ansible_host` as the address and
 * `ansible_group_priority`.
 *
 * Mapping onto canopy's model: every Ansible group is a `custom` group unless
 * its variable `canopy_group_kind` says `idc` or `set`; a group's layer holds
 * its inline vars with its group_vars files merged over them; a child group
 * ranks above its parents (Ansible's depth), then by priority, then by name.
 * Host labels come from the optional host variable `canopy_labels`.
 */
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
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
import { isMapping, mergeAll, type VarMap } from './merge.js';
import { didYouMean } from './suggest.js';
import { type KeyPath, type SourcePos, YamlSource } from './yaml-source.js';

const GROUP_BODY_KEYS = ['hosts', 'vars', 'children'] as const;
const VARS_EXTENSIONS = ['', '.yml', '.yaml', '.json'];

interface GroupDraft {
  name: string;
  inline: VarSource[];
  hosts: Set<string>;
  children: Set<string>;
  pos: SourcePos;
}

interface HostDraft {
  name: string;
  inline: VarSource[];
  pos: SourcePos;
}

class AnsibleReader {
  readonly groups = new Map<string, GroupDraft>();
  readonly hosts = new Map<string, HostDraft>();

  constructor(readonly d: Diagnostics) {}

  group(name: string, pos: SourcePos): GroupDraft {
    let g = this.groups.get(name);
    if (!g) {
      g = { name, inline: [], hosts: new Set(), children: new Set(), pos };
      this.groups.set(name, g);
    }
    return g;
  }

  readFile(src: YamlSource): void {
    const c = new Checker(src, this.d);
    if (src.value === null) return;
    const top = c.mapping([], src.value, 'the Ansible inventory');
    if (!top) return;
    const all = this.group('all', c.pos([]));
    for (const [name, body] of Object.entries(top)) {
      if (name !== 'all') all.children.add(name);
      this.readGroup(c, name, body, [name]);
    }
  }

  readGroup(c: Checker, name: string, body: unknown, path: KeyPath): void {
    if (!c.name(path, name, 'group')) return;
    const g = this.group(name, c.pos(path));
    const b = c.mapping(path, body, `group "${name}"`) ?? {};
    c.keys(path, b, GROUP_BODY_KEYS, `Ansible group "${name}"`);
    if (b.vars !== undefined) {
      const vars = c.vars([...path, 'vars'], b.vars, `group "${name}" vars`);
      g.inline.push({ origin: c.src.file, yaml: { version: '1.1', keyPath: [...path, 'vars'] }, vars });
    }
    const hosts = c.mapping([...path, 'hosts'], b.hosts, `group "${name}" hosts`) ?? {};
    for (const [pattern, hv] of Object.entries(hosts)) {
      const hpath = [...path, 'hosts', pattern];
      const vars = c.vars(hpath, hv, `host "${pattern}"`);
      for (const host of expandHostPattern(pattern)) {
        if (!c.name(hpath, host, 'host')) continue;
        g.hosts.add(host);
        let h = this.hosts.get(host);
        if (!h) {
          h = { name: host, inline: [], pos: c.pos(hpath) };
          this.hosts.set(host, h);
        }
        if (Object.keys(vars).length > 0)
          h.inline.push({ origin: c.src.file, yaml: { version: '1.1', keyPath: hpath }, vars });
      }
    }
    const children = c.mapping([...path, 'children'], b.children, `group "${name}" children`) ?? {};
    for (const [child, cb] of Object.entries(children)) {
      g.children.add(child);
      this.readGroup(c, child, cb, [...path, 'children', child]);
    }
  }
}

export function loadAnsibleInventory(
  path: string,
  sources: YamlSource[],
  varsDir: string,
  d: Diagnostics,
): Inventory {
  const reader = new AnsibleReader(d);
  for (const src of sources) reader.readFile(src);
  const files = sources.map((s) => s.file);
  const groupFiles = readVarsDir(join(varsDir, 'group_vars'), reader.groups, 'group', d, files);
  const hostFiles = readVarsDir(join(varsDir, 'host_vars'), reader.hosts, 'host', d, files);
  const depths = groupDepths(reader.groups, d);

  const hosts = new Map<string, Host>();
  for (const h of reader.hosts.values()) {
    const sourcesOf = [...h.inline, ...(hostFiles.get(h.name) ?? [])];
    const vars = mergeAll(sourcesOf.map((s) => s.vars));
    hosts.set(h.name, {
      name: h.name,
      address: hostAddress(h, vars, d),
      labels: hostLabels(h, vars, d),
      sources: sourcesOf,
      vars,
      pos: h.pos,
    });
  }

  const groups = new Map<string, Group>();
  let all: VarSource[] = [];
  for (const g of reader.groups.values()) {
    const sourcesOf = [...g.inline, ...(groupFiles.get(g.name) ?? [])];
    if (g.name === 'all') {
      all = sourcesOf;
      continue;
    }
    const vars = mergeAll(sourcesOf.map((s) => s.vars));
    groups.set(g.name, {
      name: g.name,
      kind: groupKind(g, vars, d),
      priority: groupPriority(g, vars, d),
      depth: depths.get(g.name) ?? 1,
      hosts: [...members(g.name, reader.groups, new Set())].sort(),
      match: undefined,
      sources: sourcesOf,
      vars,
      pos: g.pos,
    });
  }
  return {
    format: 'ansible',
    path,
    files,
    global: [],
    all,
    groups,
    hosts,
    memberships: computeMemberships(hosts, groups),
    secrets: [],
    warnings: [],
  };
}

/** Every host of a group, its children's included (Ansible's membership). */
function members(name: string, groups: Map<string, GroupDraft>, seen: Set<string>): Set<string> {
  const out = new Set<string>();
  const g = groups.get(name);
  if (!g || seen.has(name)) return out;
  seen.add(name);
  for (const h of g.hosts) out.add(h);
  for (const c of g.children) for (const h of members(c, groups, seen)) out.add(h);
  return out;
}

/** Ansible's group depth: all = 0, its children 1, a child one deeper than its deepest parent. */
function groupDepths(groups: Map<string, GroupDraft>, d: Diagnostics): Map<string, number> {
  const depths = new Map<string, number>();
  const visit = (name: string, depth: number, stack: string[]): void => {
    if (stack.includes(name)) {
      const g = groups.get(name);
      d.error(
        'INVENTORY_INVALID',
        g?.pos,
        `groups form a cycle: ${[...stack.slice(stack.indexOf(name)), name].join(' -> ')}; a group cannot contain itself`,
      );
      return;
    }
    if ((depths.get(name) ?? -1) >= depth) return;
    depths.set(name, depth);
    for (const c of groups.get(name)?.children ?? []) visit(c, depth + 1, [...stack, name]);
  };
  visit('all', 0, []);
  return depths;
}

function groupKind(g: GroupDraft, vars: VarMap, d: Diagnostics): GroupKind {
  const kind = vars.canopy_group_kind;
  if (kind === undefined) return 'custom';
  if ((GROUP_KINDS as readonly unknown[]).includes(kind)) return kind as GroupKind;
  d.error(
    'INVENTORY_INVALID',
    g.pos,
    `group "${g.name}": canopy_group_kind must be one of ${GROUP_KINDS.join(', ')}, not ${describe(kind)}${didYouMean(String(kind), GROUP_KINDS)}`,
  );
  return 'custom';
}

function groupPriority(g: GroupDraft, vars: VarMap, d: Diagnostics): number {
  const p = vars.ansible_group_priority;
  if (p === undefined || p === null) return 1; // Ansible's default
  if (typeof p === 'number' && Number.isInteger(p)) return p;
  if (typeof p === 'string' && /^-?\d+$/.test(p.trim())) return Number(p);
  d.error(
    'INVENTORY_INVALID',
    g.pos,
    `group "${g.name}": ansible_group_priority must be an integer, not ${describe(p)}`,
  );
  return 1;
}

function hostAddress(h: HostDraft, vars: VarMap, d: Diagnostics): string {
  const a = vars.ansible_host;
  if (a === undefined || a === null) return h.name;
  if (typeof a === 'string' && ADDRESS_RE.test(a)) return a;
  d.error(
    'INVENTORY_INVALID',
    h.pos,
    `host "${h.name}": ansible_host must be a host name or IP address, not ${describe(a)}`,
  );
  return h.name;
}

function hostLabels(h: HostDraft, vars: VarMap, d: Diagnostics): Record<string, string> {
  const labels = vars.canopy_labels;
  if (labels === undefined || labels === null) return {};
  if (!isMapping(labels)) {
    d.error(
      'INVENTORY_INVALID',
      h.pos,
      `host "${h.name}": canopy_labels must be a mapping, not ${describe(labels)}`,
    );
    return {};
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels)) out[k] = String(v);
  return out;
}

/**
 * Reads `group_vars/` or `host_vars/`: for each NAME, the files `NAME`,
 * `NAME.yml`, `NAME.yaml`, `NAME.json` and every file in a directory `NAME/`
 * (sorted), lowest first. Files naming no known group or host are warned about.
 */
function readVarsDir(
  dir: string,
  known: ReadonlyMap<string, unknown>,
  what: 'group' | 'host',
  d: Diagnostics,
  files: string[],
): Map<string, VarSource[]> {
  const out = new Map<string, VarSource[]>();
  let entries: string[];
  try {
    entries = readdirSync(dir).sort();
  } catch {
    return out;
  }
  for (const entry of entries) {
    const full = join(dir, entry);
    const isDir = statSync(full).isDirectory();
    const name = isDir ? entry : stripExtension(entry);
    if (name === undefined || entry.startsWith('.')) continue;
    if (!known.has(name)) {
      d.warn(
        'INVENTORY_INVALID',
        { file: full, line: 1, column: 1 },
        `no ${what} "${name}" in the inventory, so this file is not used${didYouMean(name, known.keys())}`,
      );
      continue;
    }
    const paths = isDir
      ? readdirSync(full)
          .sort()
          .filter((f) => stripExtension(f) !== undefined && !f.startsWith('.'))
          .map((f) => join(full, f))
      : [full];
    for (const p of paths) {
      const src = YamlSource.read(p, '1.1');
      files.push(p);
      const c = new Checker(src, d);
      const vars = c.vars([], src.value, `${what}_vars file`);
      const list = out.get(name) ?? [];
      list.push({ origin: p, yaml: { version: '1.1', keyPath: [] }, vars });
      out.set(name, list);
    }
  }
  return out;
}

function stripExtension(file: string): string | undefined {
  for (const ext of VARS_EXTENSIONS) {
    if (ext === '' && !file.includes('.')) return file;
    if (ext !== '' && file.endsWith(ext)) return file.slice(0, -ext.length);
  }
  return undefined;
}

/**
 * Expands Ansible host ranges: `web[01:03]` is web01, web02, web03;
 * `db-[a:c]` is db-a, db-b, db-c; `[1:9:2]` steps by 2.
 */
export function expandHostPattern(pattern: string): string[] {
  const m = /^(.*?)\[([0-9a-zA-Z]+):([0-9a-zA-Z]+)(?::(\d+))?\](.*)$/.exec(pattern);
  if (!m) return [pattern];
  const [, head = '', beg = '', end = '', stepText, tail = ''] = m;
  const step = stepText ? Number(stepText) : 1;
  const out: string[] = [];
  const numeric = /^\d+$/.test(beg) && /^\d+$/.test(end);
  if (numeric) {
    const width = beg.length > 1 && beg.startsWith('0') ? beg.length : 0;
    for (let i = Number(beg); i <= Number(end); i += step)
      out.push(`${head}${String(i).padStart(width, '0')}`);
  } else if (beg.length === 1 && end.length === 1) {
    for (let i = beg.charCodeAt(0); i <= end.charCodeAt(0); i += step)
      out.push(head + String.fromCharCode(i));
  } else return [pattern];
  return out.flatMap((prefix) => expandHostPattern(prefix + tail));
}
