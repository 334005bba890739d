/**
 * `canopy inventory --inventory INV [--json]`: the fleet as canopy reads it:
 * groups with their kind, priority and size; hosts with address, groups (in
 * layer order) and labels. Warnings go to stderr.
 */
import { resolve } from 'node:path';
import { type Inventory, loadInventory } from '../render/index.js';
import { COMMON_OPTIONS, INVENTORY_OPTIONS, inventoryPath, parse, usage } from './args.js';
import { type CliIO, palette, writeJson } from './io.js';
import { printWarnings } from './warnings.js';

export const INVENTORY_HELP = `usage: canopy inventory --inventory INV [--json]

Loads and checks an inventory (canopy or Ansible YAML) and prints its groups and hosts.
Exit code 2 and every problem (file:line:column) if it is invalid.
`;

export function inventoryCommand(argv: string[], io: CliIO): number {
  const { values, positionals } = parse('inventory', argv, { ...COMMON_OPTIONS, ...INVENTORY_OPTIONS });
  if (values.help) {
    io.out.write(INVENTORY_HELP);
    return 0;
  }
  if (positionals.length > 0) throw usage('inventory', `unexpected argument "${positionals[0]}"`);
  const inv = loadInventory(resolve(io.cwd, inventoryPath('inventory', values.inventory, io.env)));
  printWarnings(io, inv.warnings);
  if (values.json) writeJson(io, inventoryJson(inv));
  else printInventory(io, inv);
  return 0;
}

export function inventoryJson(inv: Inventory) {
  const members = new Map<string, string[]>();
  for (const [host, groups] of inv.memberships) {
    for (const g of groups) members.set(g.name, [...(members.get(g.name) ?? []), host]);
  }
  return {
    format: inv.format,
    path: inv.path,
    files: inv.files,
    groups: [...inv.groups.values()]
      .sort((a, b) => (a.name < b.name ? -1 : 1))
      .map((g) => ({
        name: g.name,
        kind: g.kind,
        priority: g.priority,
        hosts: (members.get(g.name) ?? []).sort(),
        ...(g.match ? { match: g.match } : {}),
      })),
    hosts: [...inv.hosts.values()]
      .sort((a, b) => (a.name < b.name ? -1 : 1))
      .map((h) => ({
        name: h.name,
        address: h.address,
        labels: h.labels,
        groups: ['all', ...(inv.memberships.get(h.name) ?? []).map((g) => g.name)],
      })),
    warnings: inv.warnings,
  };
}

function printInventory(io: CliIO, inv: Inventory): void {
  const p = palette(io.out, io.env);
  const j = inventoryJson(inv);
  io.out.write(
    `${p.bold(inv.path)} (${inv.format} format): ${j.hosts.length} hosts, ${j.groups.length} groups\n`,
  );
  io.out.write(
    `${p.bold('groups')} (layer order within a host: idc < set < custom, then priority, then name)\n`,
  );
  const gw = Math.max(4, ...j.groups.map((g) => g.name.length));
  for (const g of j.groups) {
    const match = g.match
      ? `  match ${Object.entries(g.match)
          .map(([k, v]) => `${k}=${v}`)
          .join(',')}`
      : '';
    io.out.write(
      `  ${g.name.padEnd(gw)}  ${g.kind.padEnd(6)}  priority ${String(g.priority).padEnd(4)}  ${g.hosts.length} hosts${match}\n`,
    );
  }
  io.out.write(`${p.bold('hosts')}\n`);
  const hw = Math.max(4, ...j.hosts.map((h) => h.name.length));
  const aw = Math.max(7, ...j.hosts.map((h) => h.address.length));
  for (const h of j.hosts) {
    const labels = Object.entries(h.labels)
      .map(([k, v]) => `${k}=${v}`)
      .join(',');
    io.out.write(
      `  ${h.name.padEnd(hw)}  ${h.address.padEnd(aw)}  ${h.groups.join(' ')}${labels ? `  ${p.dim(labels)}` : ''}\n`,
    );
  }
}
