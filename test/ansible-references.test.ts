// The push harness's Ansible workload (../shared/bench/push) must render byte for byte
// like its independent Jinja2 reference renderer, for every host, with canopy reading the
// generated Ansible inventory (group_vars/, host_vars/, ansible_group_priority) as-is.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import {
  explainVar,
  loadInventory,
  parseTaskVars,
  TemplateEngine,
  VarResolver,
} from '../src/render/index.js';
import { canopy, ROOT } from './helpers/cli.js';
import { tempTree } from './helpers/tree.js';

const HARNESS = join(ROOT, '..', 'shared', 'bench', 'push');
const WORKLOAD = join(HARNESS, 'workload');
const PY = '/usr/bin/python3'; // Debian's, with python3-jinja2 and python3-yaml (.ci/run installs them)
const N = 10;
const FILES = [
  ['nginx.conf.j2', 'etc/nginx/nginx.conf'],
  ['app.yaml.j2', 'etc/orders/app.yaml'],
  ['app.service.j2', 'etc/systemd/system/orders.service'],
] as const;

let state = '';
after(() => rmSync(state, { recursive: true, force: true }));

before(() => {
  assert.ok(existsSync(join(HARNESS, 'lib', 'pushbench.py')), `the push harness is missing at ${HARNESS}`);
  state = tempTree(undefined, {});
  // gen-fleet writes known_hosts from the fleet's host key; any key text will do here.
  writeFileSync(
    join(state, 'ssh_host_ed25519_key.pub'),
    'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlaceholderPlaceholderPlaceholderPlace test\n',
  );
  const pb = join(HARNESS, 'lib', 'pushbench.py');
  execFileSync(PY, [
    pb,
    'gen-fleet',
    '--n',
    String(N),
    '--port',
    '42222',
    '--state',
    state,
    '--workload',
    WORKLOAD,
  ]);
  for (const [inv, out] of [
    ['inventory', 'base'],
    ['inventory-onevar', 'onevar'],
  ] as const) {
    execFileSync(PY, [
      pb,
      'render',
      '--inventory',
      join(state, inv),
      '--task-vars',
      join(WORKLOAD, 'task_vars.yml'),
      '--templates',
      join(WORKLOAD, 'templates'),
      '--files',
      join(WORKLOAD, 'files.tsv'),
      '--root',
      join(state, 'ref', out),
    ]);
  }
});

function renderAll(inventory: string): Map<string, string> {
  const inv = loadInventory(join(state, inventory, 'hosts.yml'));
  assert.equal(inv.format, 'ansible');
  assert.deepEqual(inv.warnings, []);
  const resolver = new VarResolver(
    inv,
    parseTaskVars([{ kind: 'file', path: join(WORKLOAD, 'task_vars.yml') }]),
  );
  const engine = new TemplateEngine({ root: join(WORKLOAD, 'templates') });
  const out = new Map<string, string>();
  for (const host of inv.hosts.keys()) {
    const vars = resolver.templateVars(host);
    for (const [tpl, dest] of FILES) out.set(`${host}/${dest}`, engine.template(tpl).render(vars, host));
  }
  return out;
}

for (const [inventory, ref] of [
  ['inventory', 'base'],
  ['inventory-onevar', 'onevar'],
] as const) {
  test(`every host of the harness's ${inventory} renders byte-identically to the Jinja2 reference`, () => {
    const out = renderAll(inventory);
    assert.equal(out.size, N * FILES.length);
    for (const [path, text] of out) {
      assert.equal(
        text,
        readFileSync(join(state, 'ref', ref, path), 'utf8'),
        `${path} differs from the reference`,
      );
    }
  });
}

test("push-one-var changes exactly the web hosts' nginx.conf", () => {
  const base = renderAll('inventory');
  const onevar = renderAll('inventory-onevar');
  const changed = [...base.keys()].filter((k) => base.get(k) !== onevar.get(k)).sort();
  const web = Array.from({ length: N }, (_, i) => i + 1).filter((i) => i % 2 === 1);
  assert.deepEqual(
    changed,
    web.map((i) => `h${String(i).padStart(3, '0')}/etc/nginx/nginx.conf`),
  );
});

test('the built binary renders harness templates identically to the reference', () => {
  for (const host of ['h001', 'h005', 'h010']) {
    for (const [tpl, dest] of FILES) {
      const r = canopy([
        'render',
        join(WORKLOAD, 'templates', tpl),
        '--inventory',
        join(state, 'inventory', 'hosts.yml'),
        '--host',
        host,
        '--vars-file',
        join(WORKLOAD, 'task_vars.yml'),
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, readFileSync(join(state, 'ref', 'base', host, dest), 'utf8'), `${host} ${tpl}`);
    }
  }
});

test("vars explain agrees with the harness's own explain on layers, values and winner", () => {
  const inv = loadInventory(join(state, 'inventory', 'hosts.yml'));
  const task = parseTaskVars([{ kind: 'file', path: join(WORKLOAD, 'task_vars.yml') }]);
  for (const [host, key] of [
    ['h005', 'app.db.pool.max'],
    ['h001', 'app.log.level'],
    ['h006', 'app.log.level'],
    ['h004', 'nginx.worker_connections'],
  ] as const) {
    const theirs = execFileSync(
      PY,
      [
        join(HARNESS, 'lib', 'pushbench.py'),
        'explain',
        '--inventory',
        join(state, 'inventory'),
        '--task-vars',
        join(WORKLOAD, 'task_vars.yml'),
        host,
        key,
      ],
      { encoding: 'utf8' },
    )
      .trim()
      .split('\n');
    const ours = explainVar(inv, host, key, task);
    const theirValues = theirs.slice(0, -1).map((l) => JSON.parse(l.slice(28).trim()));
    assert.deepEqual(
      ours.entries.map((e) => e.value),
      theirValues,
      `${host} ${key}`,
    );
    const winner = theirs
      .at(-1)
      ?.replace('winner: ', '')
      .replace(/ \(priority \d+\)/, '');
    const ourWinner = ours.entries
      .find((e) => e.status === 'wins')
      ?.layer.replace(/ \(custom, priority \d+\)/, '');
    assert.equal(ourWinner, winner, `${host} ${key}`);
  }
});
