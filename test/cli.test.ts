// The built `canopy` binary on the example fleet and on broken fixtures: output, --json shapes, exit codes.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { canopy, ROOT } from './helpers/cli.js';
import { tempTree } from './helpers/tree.js';

const INV = 'examples/inventory.yaml';
const TPL = 'examples/templates/nginx.conf.njk';

test('render prints the rendered template for a host', () => {
  const r = canopy(['render', TPL, '--inventory', INV, '--host', 'web-03']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^# Managed by canopy for web-03 \(all, sh, web, canary\); do not edit\.\n/);
  assert.match(r.stdout, /worker_connections 4096;/);
  assert.match(r.stdout, /server_name web-03\.sh\.internal;/);
  assert.match(r.stdout, /add_header X-Canary "1\.5\.0-rc1";/);
});

test('render gives templates inventory_hostname, as a push does', (t) => {
  const dir = tempTree(t, { 'host.njk': 'I am {{ inventory_hostname }}\n' });
  const r = canopy(['render', join(dir, 'host.njk'), '--inventory', INV, '--host', 'web-03']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, 'I am web-03\n');
});

test('render --var overrides every inventory layer', () => {
  const r = canopy([
    'render',
    TPL,
    '-i',
    INV,
    '--host',
    'db-01',
    '--var',
    'nginx.worker_connections=7',
    '--var',
    'release.channel=canary',
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /worker_connections 7;/);
  assert.match(r.stdout, /X-Canary/);
});

test('render --vars-file and --var apply in command-line order', (t) => {
  const dir = tempTree(t, { 'v.yaml': 'nginx: {worker_connections: 11}\n' });
  const a = canopy([
    'render',
    TPL,
    '-i',
    INV,
    '--host',
    'db-01',
    '--var',
    'nginx.worker_connections=10',
    '--vars-file',
    `${dir}/v.yaml`,
  ]);
  const b = canopy([
    'render',
    TPL,
    '-i',
    INV,
    '--host',
    'db-01',
    '--vars-file',
    `${dir}/v.yaml`,
    '--var',
    'nginx.worker_connections=10',
  ]);
  assert.match(a.stdout, /worker_connections 11;/);
  assert.match(b.stdout, /worker_connections 10;/);
});

test('render --out writes the file and --json reports its md5', (t) => {
  const dir = tempTree(t, {});
  const r = canopy(['render', TPL, '-i', INV, '--host', 'web-01', '--out', `${dir}/nginx.conf`, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const json = JSON.parse(r.stdout);
  const text = readFileSync(`${dir}/nginx.conf`, 'utf8');
  assert.equal(json.md5, createHash('md5').update(text).digest('hex'));
  assert.equal(json.bytes, Buffer.byteLength(text));
  assert.equal(json.host, 'web-01');
  assert.deepEqual(readdirSync(dir), ['nginx.conf'], 'no temporary file is left beside the output');
});

test('a render error exits 1, names template line, host and variable, and writes no --out file', (t) => {
  const dir = tempTree(t, { 't.njk': 'ok\n{{ app.wokers }}\n' });
  const r = canopy(['render', `${dir}/t.njk`, '-i', INV, '--host', 'web-01', '--out', `${dir}/out.conf`]);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, '');
  assert.match(
    r.stderr,
    /t\.njk:2: "app\.wokers" is undefined for host web-01; did you mean "app\.workers"\?/,
  );
  assert.deepEqual(readdirSync(dir), ['t.njk']);
});

test('--json errors put the error object on stdout', (t) => {
  const dir = tempTree(t, { 't.njk': '{{ nope }}' });
  const r = canopy(['render', `${dir}/t.njk`, '-i', INV, '--host', 'web-01', '--json']);
  assert.equal(r.code, 1);
  const json = JSON.parse(r.stdout);
  assert.equal(json.error.code, 'RENDER_UNDEFINED_VAR');
  assert.equal(json.error.host, 'web-01');
  assert.equal(json.error.variable, 'nope');
  assert.equal(json.error.line, 1);
});

test('an unknown host exits 2 with the closest name', () => {
  const r = canopy(['render', TPL, '-i', INV, '--host', 'web-1']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /host "web-1" is not in inventory .*; did you mean "web-01"\?/);
});

test('usage errors exit 2 and point at --help', () => {
  for (const args of [
    ['render'],
    ['render', TPL, '-i', INV],
    ['render', TPL, '--bogus'],
    ['nosuchcommand'],
    ['vars', 'explain', 'web-01', '-i', INV],
  ]) {
    const r = canopy(args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, /canopy: error: .*--help/);
  }
});

test('a missing inventory exits 2 naming it', () => {
  const r = canopy(['inventory', '-i', 'nope.yaml']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /inventory .*nope\.yaml does not exist/);
});

test('--inventory defaults to $CANOPY_INVENTORY', () => {
  const r = canopy(['inventory', '--json'], { env: { CANOPY_INVENTORY: `${ROOT}${INV}` } });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).hosts.length, 8);
});

test('vars --json prints the merged variables with the canopy facts', () => {
  const r = canopy(['vars', 'app-01', '-i', INV, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const v = JSON.parse(r.stdout);
  assert.equal(v.app.port, 8081);
  assert.equal(v.app.db.host, 'pg.bj.internal');
  assert.deepEqual(v.canopy.host, {
    name: 'app-01',
    address: '127.0.0.14',
    labels: { idc: 'bj', role: 'app', rack: 'r2' },
    groups: ['all', 'bj'],
  });
});

test('vars prints YAML by default', () => {
  const r = canopy(['vars', 'db-02', '-i', INV]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^dns_servers:\n {2}- 198\.18\.20\.53\n/);
});

test('vars explain shows each layer with file:line and the winner', () => {
  const r = canopy(['vars', 'explain', 'web-01', 'app.log.level', '-i', INV], { env: { NO_COLOR: '1' } });
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  assert.equal(lines[0], 'app.log.level for web-01 = "debug"');
  assert.match(lines[1] ?? '', /^ {2}group all +examples\/inventory\.yaml:14:\d+ +"info" +overridden$/);
  assert.match(
    lines[2] ?? '',
    /^ {2}group canary \(custom, priority 10\) +examples\/inventory\.yaml:48:\d+ +"debug" +<- wins$/,
  );
});

test('vars explain --json has a stable shape', () => {
  const r = canopy(['vars', 'explain', 'web-03', 'app.log', '-i', INV, '--json']);
  const e = JSON.parse(r.stdout);
  assert.deepEqual(Object.keys(e), ['host', 'key', 'defined', 'value', 'entries']);
  assert.deepEqual(e.value, { level: 'debug', format: 'json' });
  assert.deepEqual(
    e.entries.map((x: { layer: string; status: string }) => [x.layer, x.status]),
    [
      ['group all', 'merged'],
      ['group sh (idc, priority 0)', 'merged'],
      ['group canary (custom, priority 10)', 'merged'],
    ],
  );
  assert.deepEqual(Object.keys(e.entries[0]), [
    'layer',
    'kind',
    'origin',
    'line',
    'column',
    'path',
    'value',
    'status',
  ]);
});

test('inventory --json lists groups and hosts', () => {
  const r = canopy(['inventory', '-i', INV, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.equal(j.format, 'canopy');
  assert.deepEqual(
    j.groups.map((g: { name: string; hosts: string[] }) => [g.name, g.hosts.length]),
    [
      ['bj', 4],
      ['canary', 2],
      ['db', 2],
      ['sh', 4],
      ['web', 4],
    ],
  );
  assert.deepEqual(j.hosts.find((h: { name: string }) => h.name === 'web-01').groups, [
    'all',
    'bj',
    'web',
    'canary',
  ]);
});

test('a broken inventory exits 2 listing every problem with file:line:column', (t) => {
  const dir = tempTree(t, {
    'inv.yaml': 'groups:\n  web:\n    prioriy: 1\n    hosts: [ghost]\nhosts:\n  a:\n    vars: {canopy: 1}\n',
  });
  const r = canopy(['inventory', '-i', `${dir}/inv.yaml`]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /inv\.yaml has 3 problems:/);
  assert.match(r.stderr, /inv\.yaml:3:5: unknown key "prioriy" in group "web"; did you mean "priority"\?/);
  assert.match(r.stderr, /inv\.yaml:4:\d+: group "web" names host "ghost"/);
  assert.match(r.stderr, /inv\.yaml:7:\d+: the variable "canopy" is reserved/);
});

test('inventory warnings go to stderr and do not fail the command', (t) => {
  const dir = tempTree(t, {
    'inv.yaml': 'groups:\n  g: {match: {role: nope}}\nhosts:\n  a: {labels: {role: web}}\n',
  });
  const r = canopy(['inventory', '-i', `${dir}/inv.yaml`, '--json']);
  assert.equal(r.code, 0);
  assert.match(r.stderr, /warning: .*inv\.yaml:2:\d+: group "g": match selects no host/);
  assert.equal(JSON.parse(r.stdout).warnings.length, 1);
});

test('demo starts 8 agents, runs a command on all, pushes the templates (then a warm re-push changes nothing), renders and explains', () => {
  const r = canopy(['demo'], { env: { NO_COLOR: '1' } });
  assert.equal(r.code, 0, r.stderr);
  // Its own agents only (another demo may run on this machine): they run from its state directory.
  const dir = /\(state in (\/\S+canopy-demo-\w+)\)/.exec(r.stdout)?.[1];
  assert.ok(dir, 'the demo did not say where its state is');
  const leftover = spawnSync('pgrep', ['-f', dir], { encoding: 'utf8' }).stdout.trim();
  assert.equal(leftover, '', 'the demo stopped every agent it started');
  assert.ok(!existsSync(dir), `the demo left ${dir} behind`);
  assert.match(
    r.stdout,
    /^8 agents joined with one-time tokens, each from its own address: web-01@127\.0\.0\.11 /m,
  );
  assert.match(r.stdout, /^app-\[01-02\],db-\[01-02\],web-\[01-04\] \(8\): ok$/m);
  assert.match(r.stdout, /^8 ok, 8 total$/m);
  assert.match(r.stdout, /^8 changed \(8 hosts\); files: 16 written, 16 changed, 0 unchanged, 0 failed$/m);
  assert.match(r.stdout, /^app-\[01-02\],db-\[01-02\],web-\[01-04\] \(8\): unchanged$/m);
  assert.match(r.stdout, /^8 unchanged \(8 hosts\); files: 0 written, 0 changed, 16 unchanged, 0 failed$/m);
  assert.match(r.stdout, /^- {2}workers: 8\n\+ {2}workers: 16$/m);
  assert.match(
    r.stdout,
    /^8 of 8 hosts have the file \(64\.0 MiB\) in .*; the source uploaded \d+\.\d\d copies/m,
  );
  assert.equal((r.stdout.match(/^== /gm) ?? []).length, 8);
  assert.equal((r.stdout.match(/^-- nginx\.conf\.njk md5 [0-9a-f]{32}$/gm) ?? []).length, 8);
  assert.match(r.stdout, /app\.log\.level = "debug" +\(group all < group canary/);
  const json = JSON.parse(canopy(['demo', '--json']).stdout);
  assert.equal(json.hosts.length, 8);
  assert.deepEqual(json.dist.summary.counts, { ok: 8 });
  assert.deepEqual(json.run.summary.counts, { ok: 8 });
  assert.deepEqual(
    json.pushes.map((x: { summary: { files: { written: number } } }) => x.summary.files.written),
    [16, 0, 0],
  );
});

test('no color without a TTY, and --version prints the package version', () => {
  assert.ok(!canopy(['demo']).stdout.includes('\u001b['), 'no ANSI escapes');
  const pkg = JSON.parse(readFileSync(`${ROOT}package.json`, 'utf8'));
  assert.equal(canopy(['--version']).stdout, `canopy ${pkg.version}\n`);
});

test('an include leaving the template root exits 1 and names the include and the root', (t) => {
  const dir = tempTree(t, { 'tpl/t.njk': '{% include "../secret.txt" %}', 'secret.txt': 'nope' });
  const r = canopy(['render', `${dir}/tpl/t.njk`, '-i', INV, '--host', 'web-01']);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, '');
  assert.match(r.stderr, /template "\.\.\/secret\.txt" is outside the template root .*tpl/);
});

test('a template syntax error exits 1 with template:line:column', (t) => {
  const dir = tempTree(t, { 't.njk': 'a\n{{ x + }}\n' });
  const r = canopy(['render', `${dir}/t.njk`, '-i', INV, '--host', 'web-01', '--json']);
  assert.equal(r.code, 1);
  assert.equal(JSON.parse(r.stdout).error.code, 'RENDER_SYNTAX');
  assert.match(r.stderr, /t\.njk:2:8: template syntax error: unexpected token: }}/);
});

test('an Ansible inventory directory is listed with its groups in layer order', (t) => {
  const dir = tempTree(t, {
    'hosts.yml': 'all:\n  children:\n    web:\n      hosts: {w1: {ansible_host: 198.18.0.7}}\n',
    'group_vars/web.yml': 'canopy_group_kind: set\n',
  });
  const r = canopy(['inventory', '-i', dir, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.equal(j.format, 'ansible');
  assert.deepEqual(j.hosts, [{ name: 'w1', address: '198.18.0.7', labels: {}, groups: ['all', 'web'] }]);
  assert.equal(j.groups[0].kind, 'set');
});

test('an agent refuses to start with a root that does not exist, naming it (exit 2, nothing joined)', (t) => {
  const dir = tempTree(t, {});
  const r = canopy([
    'agent',
    '--data',
    `${dir}/data`,
    '--root',
    `${dir}/missing`,
    '--join',
    'canopy-join-v1.x',
  ]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /root .*missing is not an existing directory; create it/);
  assert.equal(existsSync(`${dir}/data/identity.json`), false);
});

test('coordinator start-up mistakes are named, exit 2, and leave nothing listening', async (t) => {
  const dir = tempTree(t, { 'a-file': 'x' });
  const busy = createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
  t.after(() => busy.close());
  const port = (busy.address() as AddressInfo).port;
  const start = (...args: string[]) => canopy(['coordinator', '--data', join(dir, 'state'), ...args]);
  const cases: [string[], RegExp][] = [
    [
      ['--listen', `127.0.0.1:${port}`],
      new RegExp(`cannot listen: 127\\.0\\.0\\.1:${port} is in use.*pick another --listen port`),
    ],
    [['--listen', '127.0.0.1:99999'], /--listen "127\.0\.0\.1:99999": port 99999 is not 0-65535/],
    [['--listen', 'nosuchhost.invalid:0'], /cannot listen: nosuchhost\.invalid does not resolve/],
    [['--listen', '127.0.0.1:0', '--advertise', 'notaurl'], /--advertise "notaurl" is not an https:\/\/ URL/],
  ];
  for (const [args, message] of cases) {
    const r = start(...args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message);
    assert.doesNotMatch(r.stderr, /internal error|\n\s+at /);
  }
  const notDir = canopy(['coordinator', '--data', join(dir, 'a-file'), '--listen', '127.0.0.1:0']);
  assert.equal(notDir.code, 2);
  assert.match(notDir.stderr, /--data .*a-file: cannot be the coordinator's state directory/);
});
