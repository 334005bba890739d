// Pushes with a src: file above dist_above, end to end with real processes
// on loopback: the coordinator checks which hosts need the large file,
// distributes it peer to peer (agents started with --peer-listen) as a
// staged copy beside its destination, and each push task installs it like
// any other file of the push (mode, validate, backup, notify once). Every
// check reads the agents' files on disk.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { stagedPathFor as agentStagedPath } from '../src/agent/push-task.js';
import { stagedPathFor as coordinatorStagedPath } from '../src/coordinator/pushes.js';
import { apiOf, startFleet, type TestFleet, waitFor } from './helpers/fleet.js';
import { tempTree } from './helpers/tree.js';

interface FileJson {
  dest: string;
  state: string;
  oldMd5: string | null;
  newMd5: string;
  content: boolean;
  error?: string;
  code?: string;
}

interface PushJson {
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
    files?: FileJson[];
    transfer?: { fetchedBytes: number; fromPeers: Record<string, number> };
  }[];
}

const HOSTS: readonly string[] = ['web-01', 'web-02', 'db-01'];
const BIG = 12 * 1024 * 1024;

const INVENTORY = `
vars:
  greeting: hello
hosts:
  web-01: {labels: {role: web}}
  web-02: {labels: {role: web}}
  db-01: {labels: {role: db}}
`;

/** Dests are under each agent's root: DIR/agents/NAME/root. */
const PUSH = (root: string) => `
targets: all
files:
  - src: files/big.bin
    dest: ${root}/opt/big.bin
    mode: "0640"
    validate: "test -s %s"
    backup: true
  - template: templates/app.conf.njk
    dest: ${root}/etc/app.conf
notify: echo reloaded
`;

function md5(data: Buffer): string {
  return createHash('md5').update(data).digest('hex');
}

function agentFile(fleet: TestFleet, host: string, rel: string): string {
  return join(fleet.dir, 'agents', host, 'root', rel);
}

function stamp(path: string): string {
  const s = statSync(path);
  return `${s.ino}:${s.mtimeMs}`;
}

/** Coordinator log lines with this message (pino JSON). */
function logged(fleet: TestFleet, msg: string): number {
  return fleet.coordinator.log().split(`"msg":"${msg}"`).length - 1;
}

async function contentBytes(fleet: TestFleet): Promise<number> {
  const m = await apiOf(fleet)('GET', '/metrics');
  return Number(/^canopy_push_content_bytes_total(?:\{\})? (\d+)$/m.exec(m.text)?.[1] ?? 'NaN');
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

function byHost(j: PushJson) {
  return Object.fromEntries(j.results.map((r) => [r.host, r]));
}

/** No staged copy (or any temporary file) left beside the destinations. */
function assertNoLeftovers(fleet: TestFleet, host: string, dir: string): void {
  const names = readdirSync(agentFile(fleet, host, dir));
  assert.deepEqual(
    names.filter((n) => n.includes('canopy-tmp')),
    [],
    `${host}:${dir} has leftovers: ${names.join(' ')}`,
  );
}

/**
 * A coordinator with the inventory and three agents; `peer` says which run a peer server,
 * `roots` which run with other roots than their own root directory.
 */
async function fleetWith(
  t: TestContext,
  opts: { peer?: (h: string) => boolean; roots?: (h: string, root: string) => string[] } = {},
) {
  const proj = tempTree(t, {
    'inventory.yaml': INVENTORY,
    'templates/app.conf.njk': '# {{ inventory_hostname }}\ngreeting = {{ greeting }}\n',
  });
  const big = randomBytes(BIG);
  mkdirSync(join(proj, 'files'));
  writeFileSync(join(proj, 'files', 'big.bin'), big);
  const fleet = await startFleet(t, { inventory: join(proj, 'inventory.yaml') });
  writeFileSync(join(proj, 'push.yaml'), PUSH(join(fleet.dir, 'agents', '{{ inventory_hostname }}', 'root')));
  const peer = opts.peer ?? (() => true);
  for (const name of HOSTS) {
    const root = join(fleet.dir, 'agents', name, 'root');
    for (const d of ['etc', 'opt']) mkdirSync(join(root, d), { recursive: true });
    await fleet.addAgent(name, {
      wait: false,
      ...(opts.roots ? { roots: opts.roots(name, root) } : {}),
      ...(peer(name) ? { extra: ['--peer-listen', '127.0.0.1:0'] } : {}),
    });
  }
  await fleet.waitOnline([...HOSTS]);
  await waitFor('the peer servers to be announced', async () => {
    const l = await fleet.cliJson<{ agents: { name: string; facts: { peer?: string } | null }[] }>([
      'agents',
    ]);
    return HOSTS.every((h) => !peer(h) || l.agents.some((a) => a.name === h && a.facts?.peer));
  });
  return { fleet, proj, push: join(proj, 'push.yaml'), big };
}

test('the coordinator and the agent agree on where a staged copy goes', () => {
  for (const dest of ['/srv/app/data.bin', '/srv/x/../app/data.bin', '/a//b/c', '/etc/.env', '/x/y/.']) {
    assert.equal(
      coordinatorStagedPath(dest, 'rmq1abc0123abcd'),
      agentStagedPath(dest, 'rmq1abc0123abcd'),
      dest,
    );
  }
});

test('a 12 MiB src file goes peer to peer: every MD5 and mode right, notified once; a re-run moves nothing; --check compares only', async (t) => {
  const { fleet, proj, push, big } = await fleetWith(t);
  const bigMd5 = md5(big);

  // Cold: every host needs the file; one distribution serves all three.
  const cold = await pushJson(fleet, [push]);
  assert.deepEqual(cold.summary.hosts, { changed: 3 });
  assert.equal(cold.summary.files.written, 6);
  assert.equal(logged(fleet, 'push distributing a large file'), 1);
  let fromAgents = 0;
  for (const h of HOSTS) {
    const r = byHost(cold)[h];
    assert.equal(r?.state, 'ok', `${h}: ${r?.error}`);
    assert.deepEqual(
      r?.files?.map((f) => [f.state, f.content, f.oldMd5]),
      [
        ['changed', true, null],
        ['changed', true, null],
      ],
    );
    assert.equal(r?.files?.[0]?.newMd5, bigMd5);
    assert.equal(r?.notified, true, `${h} was not notified`);
    assert.equal(r?.stdout, 'reloaded\n');
    // The host fetched the file once, over the peer channel.
    assert.equal(r?.transfer?.fetchedBytes, BIG, h);
    fromAgents += Object.entries(r?.transfer?.fromPeers ?? {}).reduce(
      (n, [peer, b]) => n + (peer === 'canopy-source' ? 0 : b),
      0,
    );
    const file = agentFile(fleet, h, 'opt/big.bin');
    assert.equal(md5(readFileSync(file)), bigMd5, `${h} has a wrong big.bin`);
    assert.equal(statSync(file).mode & 0o7777, 0o640);
    assert.equal(readFileSync(agentFile(fleet, h, 'etc/app.conf'), 'utf8'), `# ${h}\ngreeting = hello\n`);
    assertNoLeftovers(fleet, h, 'opt');
  }
  assert.ok(fromAgents > 0, 'no host relayed the file to another');
  // Only the template went over the control channel.
  const sent = await contentBytes(fleet);
  assert.ok(sent > 0 && sent < 1024 * 1024, `control channel content bytes: ${sent}`);

  // Warm: all unchanged, nothing distributed, nothing rewritten, not notified.
  const stamps = new Map(HOSTS.map((h) => [h, stamp(agentFile(fleet, h, 'opt/big.bin'))]));
  const warm = await pushJson(fleet, [push]);
  assert.deepEqual(warm.summary.hosts, { unchanged: 3 });
  assert.equal(warm.summary.files.unchanged, 6);
  assert.equal(logged(fleet, 'push distributing a large file'), 1, 'a warm push distributed the file again');
  assert.equal(await contentBytes(fleet), sent);
  for (const r of warm.results) {
    assert.equal(r.notified, undefined, `${r.host} was notified with nothing changed`);
    assert.equal(r.transfer, undefined, `${r.host} fetched bytes on a warm push`);
    assert.equal(stamp(agentFile(fleet, r.host, 'opt/big.bin')), stamps.get(r.host));
  }

  // A new version: --check reports it on every host by MD5, moves and writes nothing.
  const big2 = randomBytes(BIG);
  writeFileSync(join(proj, 'files', 'big.bin'), big2);
  const check = await pushJson(fleet, [push, '--check']);
  assert.deepEqual(check.summary.hosts, { 'would change': 3 });
  for (const r of check.results) {
    assert.deepEqual(
      r.files?.map((f) => [f.state, f.oldMd5, f.newMd5]),
      [
        ['would-change', bigMd5, md5(big2)],
        ['unchanged', r.files?.[1]?.newMd5, r.files?.[1]?.newMd5],
      ],
    );
    assert.equal(r.transfer, undefined);
    assert.equal(md5(readFileSync(agentFile(fleet, r.host, 'opt/big.bin'))), bigMd5);
    assertNoLeftovers(fleet, r.host, 'opt');
  }
  assert.equal(logged(fleet, 'push distributing a large file'), 1, '--check distributed the file');

  // Applied: only the large file changes (old MD5 reported, old file kept as a backup), notified.
  const second = await pushJson(fleet, [push]);
  assert.deepEqual(second.summary.hosts, { changed: 3 });
  assert.equal(logged(fleet, 'push distributing a large file'), 2);
  for (const r of second.results) {
    assert.deepEqual(
      r.files?.map((f) => [f.state, f.oldMd5]),
      [
        ['changed', bigMd5],
        ['unchanged', r.files?.[1]?.newMd5],
      ],
    );
    assert.equal(r.notified, true);
    assert.equal(md5(readFileSync(agentFile(fleet, r.host, 'opt/big.bin'))), md5(big2));
    assertNoLeftovers(fleet, r.host, 'opt');
    const backups = join(fleet.dir, 'agents', r.host, 'backups');
    const kept = readdirSync(backups).flatMap((d) => readdirSync(join(backups, d)));
    assert.ok(
      kept.some((n) => n.endsWith(`-${bigMd5}`)),
      `${r.host} kept no backup of the old big.bin: ${kept}`,
    );
  }
});

test('a host without a peer server and a refused destination fail that file, named, and are not notified; a large template and a missing src are refused', async (t) => {
  const { fleet, proj, push, big } = await fleetWith(t, {
    peer: (h) => h !== 'db-01',
    // web-02 may write only under etc/: the large file's destination (opt/) is not allowed there.
    roots: (h, root) => (h === 'web-02' ? [join(root, 'etc')] : [root]),
  });
  const r = await pushJson(fleet, [push], 1);
  const by = byHost(r);

  assert.equal(by['web-01']?.outcome, 'changed');
  assert.equal(by['web-01']?.notified, true);
  assert.equal(md5(readFileSync(agentFile(fleet, 'web-01', 'opt/big.bin'))), md5(big));

  // db-01 runs no peer server: its large file fails with the reason, its template still goes in.
  const db = by['db-01'];
  assert.equal(db?.state, 'failed');
  assert.equal(db?.files?.[0]?.state, 'failed');
  assert.match(
    db?.files?.[0]?.error ?? '',
    /files\/big\.bin \(12582912 bytes\) goes peer to peer.*runs no peer server: start it with --peer-listen/,
  );
  assert.equal(db?.files?.[1]?.state, 'changed');
  assert.equal(db?.notified, undefined, 'a host whose large file failed was notified');
  assert.match(db?.error ?? '', /opt\/big\.bin: .*--peer-listen/);
  assert.throws(() => statSync(agentFile(fleet, 'db-01', 'opt/big.bin')));
  assertNoLeftovers(fleet, 'db-01', 'opt');

  // web-02 refuses the destination: nothing was distributed to it (the check saw the refusal).
  const web = by['web-02'];
  assert.equal(web?.files?.[0]?.code, 'PUSH_DEST_REFUSED');
  assert.match(web?.files?.[0]?.error ?? '', /outside the allowed roots/);
  assert.equal(web?.files?.[1]?.state, 'changed');
  assert.equal(web?.notified, undefined);
  assert.deepEqual(readdirSync(agentFile(fleet, 'web-02', 'opt')), []);
  const dist = fleet.coordinator
    .log()
    .split('\n')
    .find((l) => l.includes('"msg":"push distributing a large file"'));
  assert.match(dist ?? '', /"hosts":2/, 'the large file was distributed to a host that refuses it');

  // The human report names the host, the file and why.
  const human = await fleet.cli(['push', push]);
  assert.equal(human.code, 1);
  assert.match(human.stderr, /peer to peer from the coordinator's machine: files\/big\.bin \(12\.0 MiB\)/);
  assert.match(
    human.stdout,
    /db-01 \(1\): failed\n.*opt\/big\.bin: failed: could not fetch the content: .*--peer-listen/,
  );

  // A template above what the control channel carries is refused before anything is pushed.
  writeFileSync(
    join(proj, 'templates', 'huge.njk'),
    `{% for i in range(9000) %}${'x'.repeat(1000)}{% endfor %}`,
  );
  writeFileSync(
    join(proj, 'huge.yaml'),
    `targets: web-01\nfiles:\n  - template: templates/huge.njk\n    dest: ${agentFile(fleet, 'web-01', 'etc/huge')}\n`,
  );
  const huge = await fleet.cli(['push', join(proj, 'huge.yaml')]);
  assert.equal(huge.code, 1);
  assert.match(
    huge.stderr,
    /web-01: template templates\/huge\.njk renders to 9000000 bytes for web-01; .*only src: files go peer to peer/,
  );
  assert.throws(() => statSync(agentFile(fleet, 'web-01', 'etc/huge')));

  // A src that does not exist: named, nothing sent.
  writeFileSync(
    join(proj, 'missing.yaml'),
    `targets: all\nfiles:\n  - src: files/nope.bin\n    dest: ${agentFile(fleet, 'web-01', 'opt/nope')}\n`,
  );
  const missing = await fleet.cli(['push', join(proj, 'missing.yaml')]);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /missing\.yaml: src files\/nope\.bin: ENOENT/);

  // A push request above what the API takes (96 MiB as sent) is refused by the CLI before it
  // sends anything, naming the push file, its largest parts and the fix.
  mkdirSync(join(proj, 'many'));
  const entries: string[] = [];
  for (let i = 0; i < 13; i++) {
    writeFileSync(join(proj, 'many', `f${i}.bin`), Buffer.alloc(7.5 * 1024 * 1024, i));
    entries.push(`  - src: many/f${i}.bin\n    dest: ${agentFile(fleet, 'web-01', `opt/f${i}`)}\n`);
  }
  writeFileSync(join(proj, 'many.yaml'), `targets: web-01\nfiles:\n${entries.join('')}`);
  const runsBefore = logged(fleet, 'run created');
  const refusedBefore = logged(fleet, 'bad request: request body is larger than 96 MiB');
  const many = await fleet.cli(['push', join(proj, 'many.yaml')]);
  assert.notEqual(many.code, 0);
  assert.match(
    many.stderr,
    /many\.yaml: the push request would be 130\.\d MiB, more than the 96\.0 MiB the coordinator takes in one push \(largest as sent: src many\/f\d+\.bin 10\.0 MiB, .*\)\. Set dist_above lower/,
  );
  assert.equal(logged(fleet, 'run created'), runsBefore, 'the oversized push created a run');
  assert.equal(logged(fleet, 'bad request: request body is larger than 96 MiB'), refusedBefore);
  assert.deepEqual(
    readdirSync(agentFile(fleet, 'web-01', 'opt')).filter((n) => /^f\d+$/.test(n)),
    [],
  );
  // The same body sent straight to the API gets a 413 naming the limit (it is read whole first).
  const oversized = await apiOf(fleet)('POST', '/v1/pushes', {
    targets: ['web-01'],
    files: [{ src: 'a.bin', dest: agentFile(fleet, 'web-01', 'opt/a') }],
    sources: { 'a.bin': 'A'.repeat(97 * 1024 * 1024) },
  });
  assert.equal(oversized.status, 413, oversized.text);
  assert.match(oversized.text, /request body is larger than 96 MiB/);

  // Through the API, a src path that is not a file on the coordinator's machine is refused.
  const api = await apiOf(fleet)('POST', '/v1/pushes', {
    targets: ['all'],
    files: [{ src: join(proj, 'files', 'gone.bin'), dest: agentFile(fleet, 'web-01', 'opt/gone') }],
  });
  assert.equal(api.status, 400, api.text);
  assert.match(api.text, /INPUT_NOT_FOUND.*gone\.bin is not a file on the coordinator's machine/);

  // A plain file sent as raw text instead of base64 is refused, naming it; nothing is installed.
  for (const raw of ['hello world, not base64!\n', 'aGk']) {
    const notBase64 = await apiOf(fleet)('POST', '/v1/pushes', {
      targets: ['web-01'],
      files: [{ src: 'f', dest: agentFile(fleet, 'web-01', 'opt/raw.txt') }],
      sources: { f: raw },
    });
    assert.equal(notBase64.status, 400, notBase64.text);
    const body = JSON.parse(notBase64.text) as { code: string; field: string; message: string };
    assert.equal(body.code, 'API_BAD_REQUEST');
    assert.equal(body.field, 'sources.f');
    assert.match(body.message, /sources\["f"\] is not base64/);
  }
  assert.throws(() => statSync(agentFile(fleet, 'web-01', 'opt/raw.txt')));
});
