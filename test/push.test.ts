// Config push end to end with real processes on loopback: a coordinator
// with an inventory, agents with their own roots, and `canopy push` /
// `canopy rollback` through the CLI (and POST /v1/pushes for the API).
// Every check reads the agents' files on disk: content, inode and mtime.
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { apiOf, startFleet, type TestAgent, type TestFleet, waitFor } from './helpers/fleet.js';
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

async function fleetWith(
  t: Parameters<typeof startFleet>[0],
  pushYaml: (root: string) => string,
  sharedRoot?: string,
) {
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
    const root = join(fleet.dir, 'agents', name, 'root');
    const a = await fleet.addAgent(name, {
      labels: { role },
      wait: false,
      ...(sharedRoot ? { roots: [root, sharedRoot] } : {}),
    });
    mkdirSync(join(a.dataDir, 'root', 'etc'), { recursive: true });
  }
  await fleet.waitOnline(['web-01', 'web-02', 'db-01']);
  return { fleet, proj, push: join(proj, 'push.yaml') };
}

async function pushJson(fleet: TestFleet, args: string[], expectCode = 0): Promise<PushJson> {
  const r = await fleet.cli(['push', ...args, '--json']);
  assert.equal(
    r.code,
    expectCode,
    `canopy push ${args.join(' ')} exited ${r.code}: ${r.stderr}\n${r.stdout}`,
  );
  return JSON.parse(r.stdout) as PushJson;
}

async function contentBytes(fleet: TestFleet): Promise<number> {
  const m = await apiOf(fleet)('GET', '/metrics');
  return Number(/^canopy_push_content_bytes_total(?:\{\})? (\d+)$/m.exec(m.text)?.[1] ?? 'NaN');
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
  assert.equal(readFileSync(app, 'utf8'), '# web-01\ngreeting = hello\nworkers = 4\npassword = s3cr3t-pw\n');
  assert.equal(statSync(app).mode & 0o7777, 0o640);
  assert.equal(readFileSync(agentFile(fleet, 'db-01', 'etc/motd'), 'utf8'), '*** canopy ***\nhost db-01\n');
  assert.equal(
    readFileSync(agentFile(fleet, 'web-02', 'etc/plain.txt'), 'utf8'),
    'the same bytes everywhere\n',
  );
  assert.equal(statSync(agentFile(fleet, 'web-02', 'etc/plain.txt')).mode & 0o7777, 0o644);

  const files = ['etc/app.conf', 'etc/motd', 'etc/plain.txt'];
  const before = new Map<string, string>();
  for (const h of ['web-01', 'web-02', 'db-01']) {
    for (const f of files) before.set(`${h}/${f}`, stamp(agentFile(fleet, h, f)));
  }
  const sentCold = await contentBytes(fleet);
  assert.ok(sentCold > 0, `content bytes after the cold push: ${sentCold}`);
  const warm = await pushJson(fleet, [push]);
  assert.deepEqual(warm.summary.hosts, { unchanged: 3 });
  assert.equal(await contentBytes(fleet), sentCold, 'a warm push sent file content');
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

test('--check writes nothing; --diff groups identical diffs and masks secrets', async (t) => {
  const shared = tempTree(t, { 'etc/same.conf': 'greeting = hello\nworkers = 1\n' });
  const { fleet, proj, push } = await fleetWith(t, (root) => BASIC(root), shared);
  const check = await pushJson(fleet, [push, '--check']);
  assert.deepEqual(check.summary.hosts, { 'would change': 3 });
  assert.equal(check.summary.files.written, 0);
  assert.deepEqual(readdirSync(join(fleet.dir, 'agents', 'web-01', 'root', 'etc')), []);

  await pushJson(fleet, [push]);
  const r = await fleet.cli([
    'push',
    push,
    '--check',
    '--diff',
    '--var',
    'greeting=hi',
    '--var',
    'db_password=n3w-s3cret',
  ]);
  assert.equal(r.code, 0, r.stderr);
  // Both web hosts render the same diff except the header line naming the host... the app.conf
  // first line differs per host, so each host has its own app.conf diff; but the diff body is shown.
  assert.match(r.stdout, /-greeting = hello\n\+greeting = hi/);
  assert.doesNotMatch(r.stdout, /s3cr3t-pw|n3w-s3cret/, 'a secret leaked into the diff');
  assert.match(r.stdout, /-password = \*{8}\n\+password = \*{8}/);
  assert.match(r.stdout, /3 would change \(3 hosts\)/);
  // Nothing was written by --check.
  assert.match(readFileSync(agentFile(fleet, 'web-01', 'etc/app.conf'), 'utf8'), /greeting = hello/);

  // A diff identical on several hosts is shown once for all of them (a shared file, checked only).
  writeFileSync(join(proj, 'templates', 'same.njk'), 'greeting = {{ greeting }}\nworkers = {{ workers }}\n');
  writeFileSync(
    join(proj, 'same.yaml'),
    `targets: all\nfiles:\n  - template: templates/same.njk\n    dest: ${shared}/etc/same.conf\n`,
  );
  const same = await fleet.cli(['push', join(proj, 'same.yaml'), '--check', '--diff']);
  assert.equal(same.code, 0, same.stderr);
  assert.match(same.stdout, new RegExp(`web-\\[01-02\\] \\(2 hosts\\): ${shared}/etc/same.conf\n`));
  assert.match(same.stdout, new RegExp(`db-01 \\(1 host\\): ${shared}/etc/same.conf\n`));
  assert.equal(same.stdout.match(/\+workers = 4/g)?.length, 1, "the web hosts' diff is shown once");
  assert.match(same.stdout, /\+workers = 2/);

  // The API carries the masked diff too.
  const j = await pushJson(fleet, [push, '--check', '--diff', '--var', 'db_password=other-pw']);
  const diff = j.results
    .flatMap((x) => x.files ?? [])
    .map((f) => f.diff ?? '')
    .join('');
  assert.match(diff, /\*{8}/);
  assert.doesNotMatch(JSON.stringify(j), /other-pw|s3cr3t-pw/);
});

test('validate failure keeps the old file and shows the output; backup and rollback restore it', async (t) => {
  const { fleet, proj, push } = await fleetWith(
    t,
    (root) => `
targets: web-01
files:
  - template: templates/app.conf.njk
    dest: ${root}/etc/app.conf
    backup: true
    validate: "grep -q 'workers = [0-9]' %s || { echo 'validator: workers must be a number'; exit 3; }"
notify: echo reloaded
`,
  );
  const first = await pushJson(fleet, [push]);
  assert.equal(first.results[0]?.notified, true);
  assert.equal(first.results[0]?.stdout, 'reloaded\n');
  const app = agentFile(fleet, 'web-01', 'etc/app.conf');
  const v1 = readFileSync(app, 'utf8');

  const bad = await pushJson(fleet, [push, '--var', 'workers=many'], 1);
  const f = bad.results[0]?.files?.[0];
  assert.equal(f?.state, 'failed');
  assert.equal(f?.code, 'PUSH_VALIDATE_FAILED');
  assert.match(f?.error ?? '', /validator: workers must be a number/);
  assert.equal(bad.results[0]?.notified, undefined, 'a failed host must not be notified');
  assert.equal(readFileSync(app, 'utf8'), v1);
  assert.deepEqual(
    readdirSync(join(fleet.dir, 'agents', 'web-01', 'root', 'etc')).filter((n) => n.includes('canopy-tmp')),
    [],
  );
  const human = await fleet.cli(['push', push, '--var', 'workers=many']);
  assert.equal(human.code, 1);
  assert.match(human.stdout, /validator: workers must be a number/);

  await pushJson(fleet, [push, '--var', 'workers=12']);
  assert.match(readFileSync(app, 'utf8'), /workers = 12/);
  const rb = await fleet.cli(['rollback', push, '--json']);
  assert.equal(rb.code, 0, rb.stderr);
  assert.equal(readFileSync(app, 'utf8'), v1);
  // Only one backup existed (the first push created the file): a second rollback has none.
  const again = await fleet.cli(['rollback', push, '--json']);
  assert.equal(again.code, 1);
  assert.match(again.stdout, /PUSH_NO_BACKUP/);

  // run_as: validate and notify run as that account, if the agent's run_as allows it.
  const asRoot = join(proj, 'as-root.yaml');
  writeFileSync(
    asRoot,
    readFileSync(push, 'utf8').replace('notify: echo reloaded', 'notify: id -un\nrun_as: root'),
  );
  const ran = await pushJson(fleet, [asRoot, '--var', 'workers=13']);
  assert.equal(ran.results[0]?.stdout, 'root\n');
  writeFileSync(
    join(proj, 'as-nobody.yaml'),
    readFileSync(asRoot, 'utf8').replace('run_as: root', 'run_as: nobody'),
  );
  const refused = await pushJson(fleet, [join(proj, 'as-nobody.yaml'), '--var', 'workers=14'], 1);
  assert.match(
    refused.results[0]?.files?.[0]?.error ?? '',
    /run-as account "nobody" is not allowed: .*add "nobody" to run_as in the agent config/,
  );
  assert.match(readFileSync(app, 'utf8'), /workers = 13/);
});

test('agents refuse destinations outside their roots: .., a symlinked parent, a symlink at the destination', async (t) => {
  const outside = tempTree(t, { 'victim.conf': 'untouched\n' });
  const { fleet, push } = await fleetWith(
    t,
    (root) => `
targets: web-01
files:
  - src: files/plain.txt
    dest: ${root}/etc/../../escape.txt
  - src: files/plain.txt
    dest: ${root}/linkdir/x.conf
  - src: files/plain.txt
    dest: ${root}/etc/link.conf
  - src: files/plain.txt
    dest: ${root}/etc/fine.txt
  - src: files/plain.txt
    dest: ${root}/etc/suid
    mode: "4755"
`,
  );
  const root = join(fleet.dir, 'agents', 'web-01', 'root');
  symlinkSync(outside, join(root, 'linkdir'));
  symlinkSync(join(outside, 'victim.conf'), join(root, 'etc', 'link.conf'));
  const r = await pushJson(fleet, [push], 1);
  const files = r.results[0]?.files ?? [];
  assert.deepEqual(
    files.map((f) => [f.state, f.code ?? '']),
    [
      ['failed', 'PUSH_DEST_REFUSED'],
      ['failed', 'PUSH_DEST_REFUSED'],
      ['failed', 'PUSH_DEST_REFUSED'],
      ['changed', ''],
      ['failed', 'AGENT_SETID_REFUSED'],
    ],
  );
  // A setuid mode would step around run_as (the file runs as its owner): refused, nothing written.
  assert.match(files[4]?.error ?? '', /etc\/suid: mode 04755 is setuid\/setgid.*allow_setid: true/);
  assert.throws(() => statSync(join(root, 'etc', 'suid')));
  assert.match(files[0]?.error ?? '', /outside the allowed roots.*allowed roots: .*\/root/);
  assert.match(files[1]?.error ?? '', /goes through a symlink/);
  assert.match(files[2]?.error ?? '', /is a symlink/);
  assert.equal(readFileSync(join(outside, 'victim.conf'), 'utf8'), 'untouched\n');
  assert.deepEqual(readdirSync(outside).sort(), ['victim.conf']);
  assert.throws(() => statSync(join(fleet.dir, 'agents', 'web-01', 'escape.txt')));
});

test('a render error in one host pushes nothing (every error listed); --keep-going pushes the rest', async (t) => {
  const { fleet, proj, push } = await fleetWith(t, (root) => BASIC(root));
  writeFileSync(
    join(proj, 'inventory.yaml'),
    INVENTORY.replace('vars: {workers: 2}', 'vars: {}').replace(
      'db-01: {labels: {role: db}}',
      'db-01: {labels: {role: db}}\n  db-02: {labels: {role: db}}',
    ),
  );
  await waitFor('the reload', () => fleet.coordinator.log().includes('inventory reloaded'));
  const r = await fleet.cli(['push', push, '--limit', 'all']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /2 host\(s\) failed to render; nothing was pushed/);
  assert.match(r.stderr, /db-01: .*workers/);
  assert.match(r.stderr, /db-02: .*workers/);
  assert.match(r.stderr, /app\.conf\.njk:3/);
  for (const h of ['web-01', 'web-02', 'db-01']) {
    assert.deepEqual(readdirSync(join(fleet.dir, 'agents', h, 'root', 'etc')), [], `${h} got files`);
  }
  const kg = await pushJson(fleet, [push, '--keep-going'], 1);
  assert.equal(kg.summary.hosts.changed, 2);
  assert.equal(kg.summary.hosts.failed, 2);
  const failed = kg.results.find((x) => x.host === 'db-01');
  assert.match(failed?.error ?? '', /workers/);

  // An undefined variable in a dest names files[i].dest and its text, not an internal name.
  writeFileSync(
    join(proj, 'bad-dest.yaml'),
    'targets: web-01\nfiles:\n  - src: files/plain.txt\n    dest: "{{ nope }}/x"\n',
  );
  const bad = await fleet.cli(['push', join(proj, 'bad-dest.yaml')]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /web-01: .*files\[0\]\.dest "\{\{ nope \}\}\/x".*"nope" is undefined/);
  assert.doesNotMatch(bad.stderr, /canopy-dest/);
});

test('an offline agent is unreachable, and a re-run finishes it; a kill -9 mid-install leaves old or new, no temp file', async (t) => {
  const big = 'x'
    .repeat(1024 * 1024)
    .concat('\n')
    .repeat(6);
  const { fleet, push } = await fleetWith(
    t,
    (root) => `
targets: all
files:
  - src: files/big.bin
    dest: ${root}/etc/big.bin
    validate: "sleep 5; true %s"
  - src: files/big2.bin
    dest: ${root}/etc/big2.bin
`,
  );
  const proj = push.replace(/push\.yaml$/, '');
  writeFileSync(join(proj, 'files', 'big.bin'), big);
  // Together more than one content message carries: the agent fetches them in two batches.
  const big2 = 'y'
    .repeat(1024 * 1024)
    .concat('\n')
    .repeat(6);
  writeFileSync(join(proj, 'files', 'big2.bin'), big2);
  const db = fleet.agents.get('db-01') as TestAgent;
  await db.kill('SIGKILL');
  await waitFor(
    'db-01 offline',
    async () => {
      const l = await fleet.cliJson<{ agents: { name: string; online: boolean }[] }>(['agents']);
      return l.agents.some((a) => a.name === 'db-01' && !a.online);
    },
    30_000,
  );

  // web-01 is killed while validate runs on its temporary file (the content is already written).
  const web = fleet.agents.get('web-01') as TestAgent;
  const running = fleet.cli(['push', push, '--json']);
  const etc = join(fleet.dir, 'agents', 'web-01', 'root', 'etc');
  await waitFor(
    'web-01 to write its temporary file',
    () => readdirSync(etc).some((n) => n.includes('canopy-tmp')),
    30_000,
  );
  await web.kill('SIGKILL');
  // Killed mid-install: the destination is still the old state (absent), only the temp file exists.
  assert.deepEqual(
    readdirSync(etc).filter((n) => !n.includes('canopy-tmp')),
    [],
  );
  web.restart();
  await waitFor('web-01 to clean up after its restart', () =>
    web.log().includes('removed temporary files of an interrupted push'),
  );
  assert.deepEqual(readdirSync(etc), [], 'the interrupted install left a file behind');
  const r = await running;
  const j = JSON.parse(r.stdout) as PushJson;
  const by = Object.fromEntries(j.results.map((x) => [x.host, x]));
  assert.equal(r.code, 1);
  assert.equal(by['db-01']?.state, 'unreachable');
  assert.match(by['db-01']?.error ?? '', /offline/);
  assert.equal(by['web-02']?.outcome, 'changed');
  assert.equal(by['web-01']?.state, 'interrupted');
  db.restart();
  await fleet.waitOnline(['web-01', 'db-01']);
  const again = await pushJson(fleet, [push]);
  assert.deepEqual(again.summary.hosts, { changed: 2, unchanged: 1 });
  assert.equal(readFileSync(join(etc, 'big.bin'), 'utf8'), big);
  assert.equal(readFileSync(join(etc, 'big2.bin'), 'utf8'), big2);
});

test('the API: POST /v1/pushes, its event stream and GET; bad bodies and bad push files name the field or line', async (t) => {
  const { fleet, proj, push } = await fleetWith(t, (root) => BASIC(root));
  const api = apiOf(fleet);
  const root = dests(fleet);
  const body = {
    targets: ['role=web'],
    files: [{ template: 't.njk', dest: `${root}/etc/api.conf`, mode: '0600' }],
    templates: { 't.njk': 'workers={{ workers }}\n' },
  };
  const created = await api('POST', '/v1/pushes', body);
  assert.equal(created.status, 201, created.text);
  const { id, hosts } = JSON.parse(created.text) as { id: string; hosts: string[] };
  assert.deepEqual(hosts.sort(), ['web-01', 'web-02']);
  const events = await api('GET', `/v1/pushes/${id}/events`);
  assert.equal(events.text.match(/event: result/g)?.length, 2);
  assert.match(events.text, /event: done/);
  const got = JSON.parse((await api('GET', `/v1/pushes/${id}`)).text) as { results: PushJson['results'] };
  assert.deepEqual(
    got.results.map((r) => r.files?.[0]?.state),
    ['changed', 'changed'],
  );
  assert.equal(readFileSync(agentFile(fleet, 'web-02', 'etc/api.conf'), 'utf8'), 'workers=4\n');
  assert.equal(statSync(agentFile(fleet, 'web-02', 'etc/api.conf')).mode & 0o7777, 0o600);

  const bad = async (b: unknown, status: number, pattern: RegExp) => {
    const r = await api('POST', '/v1/pushes', b);
    assert.equal(r.status, status, r.text);
    assert.match(r.text, pattern);
  };
  await bad({ ...body, files: [] }, 400, /"field":"files"/);
  await bad(
    { ...body, files: [{ template: 'nope.njk', dest: '/x' }] },
    400,
    /nope\.njk.*not among the request's templates/,
  );
  await bad({ ...body, targets: ['no-such-host'] }, 400, /"field":"targets.0"/);
  await bad({ ...body, files: [{ template: 't.njk', dest: '/x', mode: 'rw' }] }, 400, /files.0.mode/);
  await bad({ ...body, templates: { 't.njk': '{{ nope }}' } }, 422, /PUSH_RENDER.*"errors":\[/);
  assert.equal((await api('GET', '/v1/pushes/nope')).status, 404);

  writeFileSync(
    join(proj, 'bad.yaml'),
    `targets: all\nfiles:\n  - template: templates/app.conf.njk\n    dest: /x\n    mdoe: "0644"\n`,
  );
  const r = await fleet.cli(['push', join(proj, 'bad.yaml')]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /bad\.yaml:5:5: unknown key "mdoe" in files\[0\]; did you mean "mode"\?/);
  void push;
});
