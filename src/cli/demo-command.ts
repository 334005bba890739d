/**
 * `canopy demo`: canopy on its embedded example fleet (examples/), with no
 * setup. For now it loads the example inventory, renders every example
 * template for every host, and explains a few variables; later capabilities
 * (agents, pushes, distribution) join it here.
 */
import { createHash } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { explainVar, loadInventory, TemplateEngine, VarResolver } from '../render/index.js';
import { COMMON_OPTIONS, parse } from './args.js';
import { type CliIO, palette, writeJson } from './io.js';
import { packageRoot } from './package-root.js';
import { shortPath } from './vars-command.js';

export const DEMO_HELP = `usage: canopy demo [--json]

Renders the example fleet in examples/ (8 hosts in two IDCs): every template for
every host, and where a few variables come from (vars explain).
`;

const EXPLAINED = ['app.log.level', 'app.workers', 'release.channel'];

export function demoCommand(argv: string[], io: CliIO): number {
  const { values } = parse('demo', argv, COMMON_OPTIONS);
  if (values.help) {
    io.out.write(DEMO_HELP);
    return 0;
  }
  const p = palette(io.out, io.env);
  const root = join(packageRoot(), 'examples');
  const inv = loadInventory(join(root, 'inventory.yaml'));
  const engine = new TemplateEngine({ root: join(root, 'templates') });
  const templates = readdirSync(engine.root)
    .filter((f) => f.endsWith('.njk'))
    .sort();
  const resolver = new VarResolver(inv);
  const report: unknown[] = [];
  if (!values.json) {
    io.out.write(
      `${p.bold('canopy demo')}: ${inv.hosts.size} hosts from ${shortPath(io.cwd, inv.path)}, templates ${templates.join(', ')}\n`,
    );
  }
  for (const host of inv.hosts.keys()) {
    const vars = resolver.templateVars(host);
    const files = templates.map((t) => {
      const text = engine.template(t).render(vars, host);
      return { template: t, md5: createHash('md5').update(text).digest('hex'), text };
    });
    const explained = EXPLAINED.map((k) => explainVar(inv, host, k));
    report.push({ host, files, explain: explained });
    if (values.json) continue;
    io.out.write(
      `\n${p.bold(`== ${host}`)} (${inv.hosts.get(host)?.address}; groups ${(inv.memberships.get(host) ?? []).map((g) => g.name).join(', ')})\n`,
    );
    for (const f of files) {
      io.out.write(`${p.cyan(`-- ${f.template}`)} ${p.dim(`md5 ${f.md5}`)}\n${f.text}`);
    }
    io.out.write(`${p.cyan('-- vars explain')}\n`);
    for (const e of explained) {
      const winner = e.entries.find((x) => x.status === 'wins');
      const chain = e.entries.map((x) => (x.status === 'wins' ? p.green(x.layer) : x.layer)).join(' < ');
      io.out.write(
        `  ${e.key} = ${JSON.stringify(e.value)}  (${chain}${winner ? `; from ${shortPath(io.cwd, winner.origin)}:${winner.line}` : ''})\n`,
      );
    }
  }
  if (values.json) writeJson(io, { hosts: report });
  else
    io.out.write(
      `\nTry: canopy vars explain web-01 app.log.level --inventory ${shortPath(io.cwd, inv.path)}\n`,
    );
  return 0;
}
