/**
 * The module-boundary lint (DESIGN.md "Components and boundaries"):
 *  - a component imports another only through its index.ts;
 *  - render, transfer, protocol and pki never import coordinator, agent, ssh or cli;
 *  - pki imports only errors (both daemons and the CLI use it);
 *  - coordinator and agent never import each other (they share protocol);
 *  - PUBLIC_LEAVES are light second entry points a CLI command may import directly, so that
 *    `canopy run` does not load every schema of the protocol (typebox) just to find its config.
 * Prints each violation as file:line and exits 1 if there is any.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const SRC = resolve(import.meta.dirname, '..', 'src');
const DAEMONS = ['coordinator', 'agent', 'ssh', 'cli'];
const FORBIDDEN: Record<string, string[]> = {
  render: DAEMONS,
  transfer: DAEMONS,
  protocol: DAEMONS,
  pki: [...DAEMONS, 'render', 'transfer', 'protocol'],
  errors: [...DAEMONS, 'render', 'transfer', 'protocol'],
  coordinator: ['agent', 'cli'],
  agent: ['coordinator', 'cli'],
  ssh: ['coordinator', 'cli'],
};

const PUBLIC_LEAVES = new Set(['protocol/client-config.js', 'protocol/limits.js', 'agent/config.js']);

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : [];
  });
}

export function violations(): string[] {
  const out: string[] = [];
  for (const file of files(SRC)) {
    const from = relative(SRC, file).split('/')[0] ?? '';
    readFileSync(file, 'utf8')
      .split('\n')
      .forEach((line, i) => {
        const m =
          /^\s*(?:import|export)\s[^'"]*['"](\.[^'"]+)['"]/.exec(line) ??
          /^\s*import\s*\(?\s*['"](\.[^'"]+)['"]/.exec(line);
        if (!m?.[1]) return;
        const target = resolve(dirname(file), m[1]);
        const rel = relative(SRC, target).split('/');
        const to = rel[0] ?? '';
        if (to === from || to.startsWith('..')) return;
        const where = `${relative(process.cwd(), file)}:${i + 1}`;
        if (FORBIDDEN[from]?.includes(to)) out.push(`${where}: src/${from} must not import src/${to}`);
        else if (rel.length !== 2 || (rel[1] !== 'index.js' && !PUBLIC_LEAVES.has(rel.join('/'))))
          out.push(`${where}: import src/${to} only through its index.js, not ${rel.slice(1).join('/')}`);
      });
  }
  return out;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const v = violations();
  for (const line of v) process.stderr.write(`${line}\n`);
  process.exitCode = v.length > 0 ? 1 : 0;
}
