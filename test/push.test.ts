// Config push end to end with real processes on loopback: a coordinator
// with an inventory, agents with their own roots, and `canopy push` /
// `canopy rollback` through the CLI (and POST /v1/pushes for the API).
// Every check reads the agents' files on disk: content, inode and mtime.
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { startFleet, type TestAgent, type TestFleet, waitFor } from './helpers/fleet.js';
import { tempTree } from './helpers/tree.js';

interface PushJson {
  push: string;
  mode: string;
  summary: {
    hosts: Record<string, number>;
    files: { written: number; changed: number; unchanged: number; failed: number };
  };
  results: {
    host: string;
    state: string;
    outcome: string;
    error?: string;
    notified?: boolean;
    stdout: string;
    files?: {
      dest: string;
      state: string;
      oldMd5: string | null;
      newMd5: string;
      content: boolean;
      error?: string;
      code?: string;
      diff?: string;
    }[];
  }[];
}

const INVENTORY = `
vars:
  greeting: hello
  db_password: s3cr3t-pw
groups:
  web:
    kind: set
    match: {role: web}
    vars: {workers: 4}
  db:
    kind: set
    match: {role: db}
    vars: {workers: 2}
hosts:
  web-01: {labels: {role: web}}
  web-02: {labels: {role: web}}
  db-01: {labels: {role: db}}
`;

/** A project dir: inventory, templates and a push file whose dests live in each agent's root. */
function project(t: Parameters<typeof tempTree>[0], pushYaml: string, extra: Record<string, string> = {}) {
  return tempTree(t, {
    'inventory.yaml': INVENTORY,
    'templates/app.conf.njk':
      '# {{ inventory_hostname }}\ngreeting = {{ greeting }}\nworkers = {{ workers }}\npassword = {{ db_password }}\n',
    'templates/motd.njk': '{% include "templates/partials/banner.njk" %}host {{ canopy.host.name }}\n',
    'templates/partials/banner.njk': '*** canopy ***\n',
    'files/plain.txt': 'the same bytes everywhere\n',
    'push.yaml': pushYaml,
    ...extra,
  });
}

/** Dests are under each agent's root: its data dir is DIR/agents/NAME, the root DIR/agents/NAME/root. */
function dests(fleet: TestFleet): string {
  return join(fleet.dir, 'agents', '{{ inventory_hostname }}', 'root');
}

const BASIC = (root: string, more = '') => `
targets: all
files:
  - template: templates/app.conf.njk
    dest: ${root}/etc/app.conf
    mode: "0640"
  - template: templates/motd.njk
    dest: ${root}/etc/motd
  - src: files/plain.txt
    dest: ${root}/etc/plain.txt
${more}`;

async function fleetWith(t: Parameters<typeof startFleet>[0], pushYaml: (root: string) => string) {
  const dirHolder: { dir?: string } = {};
  const proj = project(t, '');
  const fleet = await startFleet(t, { inventory: join(proj, 'inventory.yaml') });
  dirHolder.dir = fleet.dir;
  writeFileSync(join(proj, 'push.yaml'), pushYaml(dests(fleet)));
  for (const [name, role] of [
    ['web-01', 'web'],
    ['web-02', 'web'],
    ['db-01', 'db'],
  ] as const) {
    const a = await fleet.addAgent(name, { labels: { role }, wait: false });
    mkdirSync(join(a.dataDir, 'root', 'etc'), { recursive: true });
  }
  await fleet.waitOnline(['web-01', 'web-02', 'db-01']);
  return { fleet, proj, push: join(proj, 'push.yaml') };
}

async function pushJson(fleet: TestFleet, args: string[], expectCode = 0): Promise<PushJson> {
  const r = await fleet.cli(['push', ...args, '--json']);
  assert.equal(r.code, expectCode, `canopy push ${args.join(' ')} exited ${r.code}: ${r.stderr}\n${r.stdout}`);
  return JSON.parse(r.stdout) as PushJson;
}

function agentFile(fleet: TestFleet, host: string, rel: string): string {
  return join(fleet.dir, 'agents', host, 'root', rel);
}

function stamp(path: string): string {
  const s = statSync(path);
  return `${s.ino}:${s.mtimeMs}`;
}

test('cold push writes every file, warm push writes none (same inode and mtime), one variable changes only its hosts', async (t) => {
  const { fleet, proj, push } = await fleetWith(t, (root) => BASIC(root));

  const cold = await pushJson(fleet, [push]);
  assert.deepEqual(cold.summary.hosts, { changed: 3 });
  assert.equal(cold.summary.files.written, 9);
  const app = agentFile(fleet, 'web-01', 'etc/app.conf');
  assert.equal(
    readFileSync(app, 'utf8'),
    '# web-01\ngreeting = hello\nworkers = 4\npassword = s3cr3t-pw\n',
  );
  assert.equal(statSync(app).mode & 0o7777, 0o640);
  assert.equal(readFileSync(agentFile(fleet, 'db-01', 'etc/motd'), 'utf8'), '*** canopy ***\nhost db-01\n');
  assert.equal(readFileSync(agentFile(fleet, 'web-02', 'etc/plain.txt'), 'utf8'), 'the same bytes everywhere\n');
  assert.equal(statSync(agentFile(fleet, 'web-02', 'etc/plain.txt')).mode & 0o7777, 0o644);

  const files = ['etc/app.conf', 'etc/motd', 'etc/plain.txt'];
  const before = new Map<string, string>();
  for (const h of ['web-01', 'web-02', 'db-01']) {
    for (const f of files) before.set(`${h}/${f}`, stamp(agentFile(fleet, h, f)));
  }
  const warm = await pushJson(fleet, [push]);
  assert.deepEqual(warm.summary.hosts, { unchanged: 3 });
  assert.equal(warm.summary.files.written, 0);
  for (const [k, v] of before) {
    const [h, ...rest] = k.split('/');
    assert.equal(stamp(agentFile(fleet, h ?? '', rest.join('/'))), v, `${k} was rewritten by a warm push`);
  }

  // One group variable changes: only the web hosts' app.conf is written.
  const inv = join(proj, 'inventory.yaml');
  writeFileSync(inv, INVENTORY.replace('vars: {workers: 4}', 'vars: {workers: 6}'));
  await waitFor('the coordinator to reload the inventory', () =>
    fleet.coordinator.log().includes('inventory reloaded'),
  );
  const one = await pushJson(fleet, [push]);
  assert.deepEqual(one.summary.hosts, { changed: 2, unchanged: 1 });
  assert.equal(one.summary.files.written, 2);
  const web = one.results.find((r) => r.host === 'web-01');
  assert.deepEqual(
    web?.files?.map((f) => [f.dest.replace(/.*\/root/, ''), f.state]),
    [
      ['/etc/app.conf', 'changed'],
      ['/etc/motd', 'unchanged'],
      ['/etc/plain.txt', 'unchanged'],
    ],
  );
  assert.match(readFileSync(app, 'utf8'), /workers = 6/);
  assert.equal(stamp(agentFile(fleet, 'db-01', 'etc/app.conf')), before.get('db-01/etc/app.conf'));
  assert.equal(stamp(agentFile(fleet, 'web-01', 'etc/motd')), before.get('web-01/etc/motd'));

  // Task variables (--var) are the top layer.
  const tv = await pushJson(fleet, [push, '--var', 'greeting=bonjour', '--limit', 'db-01']);
  assert.deepEqual(tv.summary.hosts, { changed: 1 });
  assert.match(readFileSync(agentFile(fleet, 'db-01', 'etc/app.conf'), 'utf8'), /greeting = bonjour/);
});
