/**
 * `canopy render TEMPLATE --inventory INV --host HOST [--var k=v]... [--vars-file F] [--out FILE]`
 *
 * Renders one template for one host, to stdout or atomically to --out (a
 * temporary file beside it, then rename: never a half-written file).
 */
import { createHash } from 'node:crypto';
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { loadInventory, parseTaskVars, TemplateEngine, VarResolver } from '../render/index.js';
import { COMMON_OPTIONS, INVENTORY_OPTIONS, inventoryPath, parse, TASK_VAR_OPTIONS, usage } from './args.js';
import { type CliIO, writeJson } from './io.js';
import { printWarnings } from './warnings.js';

export const RENDER_HELP = `usage: canopy render TEMPLATE --inventory INV --host HOST [options]

Renders TEMPLATE (nunjucks, with Ansible's template settings) for HOST.

options:
  -i, --inventory INV     inventory file or directory (canopy or Ansible YAML); or $CANOPY_INVENTORY
      --host HOST         the host to render for
  -e, --var KEY=VALUE     task variable (value parsed as YAML; dotted keys nest); repeatable
      --vars-file FILE    YAML file of task variables; repeatable, later ones win
      --template-root DIR where includes and imports resolve (default: TEMPLATE's directory)
      --out FILE          write to FILE atomically instead of stdout
      --json              print {host, template, md5, bytes, content} as JSON
`;

export function renderCommand(argv: string[], io: CliIO): number {
  const { values, positionals, taskVars } = parse('render', argv, {
    ...COMMON_OPTIONS,
    ...INVENTORY_OPTIONS,
    ...TASK_VAR_OPTIONS,
    host: { type: 'string' },
    out: { type: 'string' },
    'template-root': { type: 'string' },
  });
  if (values.help) {
    io.out.write(RENDER_HELP);
    return 0;
  }
  const [template, ...extra] = positionals;
  if (!template) throw usage('render', 'missing TEMPLATE');
  if (extra.length > 0) throw usage('render', `unexpected argument "${extra[0]}"`);
  if (!values.host) throw usage('render', 'missing --host HOST');
  const inv = loadInventory(resolve(io.cwd, inventoryPath('render', values.inventory, io.env)));
  printWarnings(io, inv.warnings);
  const task = parseTaskVars(taskVars);
  const file = resolve(io.cwd, template);
  const engine = new TemplateEngine({
    root: values['template-root'] ? resolve(io.cwd, values['template-root']) : dirname(file),
  });
  // The same variables a push renders with (inventory_hostname, as Ansible sets it, then the layers).
  const vars = { inventory_hostname: values.host, ...new VarResolver(inv, task).templateVars(values.host) };
  const text = engine.template(file).render(vars, values.host);
  if (values.out) writeAtomic(resolve(io.cwd, values.out), text);
  if (values.json) {
    writeJson(io, {
      host: values.host,
      template: file,
      md5: createHash('md5').update(text).digest('hex'),
      bytes: Buffer.byteLength(text),
      ...(values.out ? { out: resolve(io.cwd, values.out) } : { content: text }),
    });
  } else if (!values.out) io.out.write(text);
  return 0;
}

function writeAtomic(path: string, text: string): void {
  const tmp = join(dirname(path), `.${basename(path)}.canopy-${process.pid}.tmp`);
  try {
    writeFileSync(tmp, text, { flush: true });
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}
