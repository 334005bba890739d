/**
 * Loading an inventory from disk, in either format.
 *
 * `loadInventory(path)` takes a YAML file or a directory. A file is canopy's
 * format when its top-level keys are only canopy's (`vars`, `groups`, `hosts`,
 * `secrets`), else Ansible's. A directory holding `group_vars/` or
 * `host_vars/` is an Ansible inventory directory; any other directory is
 * canopy's format, its *.yaml and *.yml files merged. Every problem in every
 * file is reported at once (see Diagnostics); warnings are returned.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { CanopyError } from '../errors/index.js';
import { loadAnsibleInventory } from './ansible-inventory.js';
import { loadCanopyInventory, looksLikeCanopyInventory } from './canopy-inventory.js';
import { Diagnostics } from './diagnostics.js';
import { type Inventory, matchesLabels } from './inventory-model.js';
import { YamlSource } from './yaml-source.js';

export interface LoadOptions {
  /** Force a format instead of detecting it. */
  format?: 'canopy' | 'ansible';
}

export function loadInventory(path: string, options: LoadOptions = {}): Inventory {
  let isDir: boolean;
  try {
    isDir = statSync(path).isDirectory();
  } catch (err) {
    throw new CanopyError(
      'INPUT_NOT_FOUND',
      `inventory ${path} does not exist; pass --inventory FILE_OR_DIR (canopy or Ansible YAML)`,
      { path, cause: err },
    );
  }
  const d = new Diagnostics();
  const inv = isDir ? loadDirectory(path, options, d) : loadFile(path, options, d);
  warnUnmatched(inv, d);
  d.throwIfErrors(`inventory ${path}`);
  return { ...inv, warnings: d.warnings };
}

function loadFile(path: string, options: LoadOptions, d: Diagnostics): Inventory {
  const text = readText(path);
  if (looksLikeIni(text) && options.format !== 'canopy') {
    throw new CanopyError(
      'INVENTORY_INVALID',
      `${path}: looks like an INI inventory, which canopy does not read; convert it with ` +
        `"ansible-inventory -i ${path} --list --yaml > hosts.yml" and pass hosts.yml`,
      { file: path },
    );
  }
  const format = options.format ?? detectFormat(path, text);
  if (format === 'canopy') return loadCanopyInventory(path, [YamlSource.parse(path, text, '1.2')], d);
  return loadAnsibleInventory(path, [YamlSource.parse(path, text, '1.1')], dirname(path), d);
}

function loadDirectory(path: string, options: LoadOptions, d: Diagnostics): Inventory {
  const entries = readdirSync(path).sort();
  const yamlFiles = entries
    .filter((e) => /\.ya?ml$/.test(e) && !e.startsWith('.'))
    .map((e) => join(path, e))
    .filter((f) => statSync(f).isFile());
  const ansible =
    options.format === 'ansible' ||
    (options.format !== 'canopy' && (entries.includes('group_vars') || entries.includes('host_vars')));
  if (ansible) {
    const sources = yamlFiles.map((f) => YamlSource.read(f, '1.1'));
    return loadAnsibleInventory(path, sources, path, d);
  }
  if (yamlFiles.length === 0) {
    throw new CanopyError('INPUT_NOT_FOUND', `inventory directory ${path} holds no *.yaml files`, { path });
  }
  return loadCanopyInventory(
    path,
    yamlFiles.map((f) => YamlSource.read(f, '1.2')),
    d,
  );
}

/** A `match:` that selects no host is almost always a typo in a label. */
function warnUnmatched(inv: Inventory, d: Diagnostics): void {
  const hosts = [...inv.hosts.values()];
  for (const g of inv.groups.values()) {
    if (!g.match || Object.keys(g.match).length === 0) continue;
    const match = g.match;
    if (hosts.some((h) => matchesLabels(h.labels, match))) continue;
    const missing = Object.entries(g.match).find(([k, v]) => !hosts.some((h) => h.labels[k] === v));
    const detail = missing
      ? hosts.some((h) => missing[0] in h.labels)
        ? `no host has label ${missing[0]}=${missing[1]}`
        : `no host has a label "${missing[0]}"`
      : 'no host has all of these labels';
    d.warn('INVENTORY_INVALID', g.pos, `group "${g.name}": match selects no host: ${detail}`);
  }
}

function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new CanopyError('INPUT_NOT_FOUND', `${path}: cannot read: ${(err as Error).message}`, {
      path,
      cause: err,
    });
  }
}

/**
 * canopy's format when every top-level key is one of canopy's. Read from the
 * unindented `key:` lines, so a large inventory is parsed once, in the right
 * YAML version; a document without such lines (flow style) is parsed to tell.
 */
function detectFormat(path: string, text: string): 'canopy' | 'ansible' {
  const keys = [...text.matchAll(/^([A-Za-z0-9_"'.-][^:#\n]*):(?:\s|$)/gm)].map((m) =>
    (m[1] ?? '').replace(/^["']|["']$/g, ''),
  );
  if (keys.length === 0)
    return looksLikeCanopyInventory(YamlSource.parse(path, text, '1.2').value) ? 'canopy' : 'ansible';
  return looksLikeCanopyInventory(Object.fromEntries(keys.map((k) => [k, true]))) ? 'canopy' : 'ansible';
}

function looksLikeIni(text: string): boolean {
  const first = text.split('\n').find((l) => l.trim() !== '' && !l.trim().startsWith('#'));
  return first !== undefined && /^\s*\[[^\]]+\]\s*$/.test(first);
}
