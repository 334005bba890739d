/**
 * `canopy vars HOST` (the merged variables a template sees) and
 * `canopy vars explain HOST KEY` (every layer that defines KEY, in priority
 * order, with file and line, and which one wins).
 */
import { relative, resolve } from 'node:path';
import { stringify } from 'yaml';
import {
  type Explanation,
  explainVar,
  loadInventory,
  parseTaskVars,
  requireHost,
  VarResolver,
} from '../render/index.js';
import { COMMON_OPTIONS, INVENTORY_OPTIONS, inventoryPath, parse, TASK_VAR_OPTIONS, usage } from './args.js';
import { type CliIO, palette, writeJson } from './io.js';
import { printWarnings } from './warnings.js';

export const VARS_HELP = `usage: canopy vars HOST --inventory INV [--var k=v]... [--vars-file F] [--json]
       canopy vars explain HOST KEY --inventory INV [--var k=v]... [--vars-file F] [--json]

vars:          prints the variables HOST's templates see (merged layers plus canopy.*), as YAML or JSON.
vars explain:  prints every layer that defines KEY (a dotted path such as app.db.port), lowest
               first, with the file and line it was written at, its value, and which one wins.
               Layers: global < group all < idc groups < set groups < custom groups < host < task.
`;

const OPTIONS = { ...COMMON_OPTIONS, ...INVENTORY_OPTIONS, ...TASK_VAR_OPTIONS };

export function varsCommand(argv: string[], io: CliIO): number {
  const { values, positionals, taskVars } = parse('vars', argv, OPTIONS);
  if (values.help) {
    io.out.write(VARS_HELP);
    return 0;
  }
  const explain = positionals[0] === 'explain';
  const args = explain ? positionals.slice(1) : positionals;
  const [host, key, ...extra] = args;
  if (!host) throw usage(explain ? 'vars explain' : 'vars', 'missing HOST');
  if (explain && !key)
    throw usage('vars explain', 'missing KEY (a dotted variable path such as app.db.port)');
  if ((explain ? extra : [key, ...extra].filter((x) => x !== undefined)).length > 0) {
    throw usage('vars', `unexpected argument "${explain ? extra[0] : key}"`);
  }
  const inv = loadInventory(resolve(io.cwd, inventoryPath('vars', values.inventory, io.env)));
  printWarnings(io, inv.warnings);
  const task = parseTaskVars(taskVars);
  requireHost(inv, host);
  if (explain && key) {
    const e = explainVar(inv, host, key, task);
    if (values.json) writeJson(io, e);
    else printExplanation(io, e);
    return 0;
  }
  const vars = new VarResolver(inv, task).templateVars(host);
  if (values.json) writeJson(io, vars);
  else io.out.write(stringify(vars, { lineWidth: 0 }));
  return 0;
}

function printExplanation(io: CliIO, e: Explanation): void {
  const p = palette(io.out, io.env);
  const where = (x: Explanation['entries'][number]) =>
    x.line === undefined ? x.origin : `${shortPath(io.cwd, x.origin)}:${x.line}:${x.column}`;
  if (e.entries.length === 0) {
    io.out.write(`${e.key} is not defined for ${e.host} in any layer\n`);
    return;
  }
  const head = e.defined
    ? `${p.bold(e.key)} for ${e.host} = ${compact(e.value)}`
    : `${p.bold(e.key)} for ${e.host} is not defined (a higher layer replaced a parent of it)`;
  io.out.write(`${head}\n`);
  const rows = e.entries.map((x) => [
    x.layer,
    where(x),
    x.path === e.key ? compact(x.value) : `${x.path} = ${compact(x.value)}`,
    x.status,
  ]);
  const widths = [0, 1, 2].map((i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  for (const r of rows) {
    const status =
      r[3] === 'wins' ? p.green('<- wins') : r[3] === 'merged' ? p.cyan('merged') : p.dim('overridden');
    io.out.write(`  ${[0, 1, 2].map((i) => (r[i] ?? '').padEnd(widths[i] ?? 0)).join('  ')}  ${status}\n`);
  }
}

function compact(value: unknown): string {
  const s = JSON.stringify(value) ?? 'undefined';
  return s.length > 72 ? `${s.slice(0, 69)}...` : s;
}

export function shortPath(cwd: string, path: string): string {
  const rel = relative(cwd, path);
  return rel.startsWith('..') ? path : rel;
}
