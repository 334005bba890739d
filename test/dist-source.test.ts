// `canopy dist --source HOST` end to end, with a real coordinator and agents
// on loopback: a file that exists only on agent a1 reaches a2..a4 through
// the peer tree rooted at a1 (every MD5 right, the coordinator's own source
// uploading nothing); a1 named among the targets counts as holding it; an
// unknown agent, a path a1 does not have and one outside its roots are
// refused, naming the host and the path. A1 killed with SIGKILL mid-way and
// restarted serves its blob again from its recorded seed (every host
// finishes); if its file changed while it was down, it serves nothing and
// the distribution fails on every host naming a1 and the path, with nothing
// installed anywhere.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { apiOf, startFleet, type TestAgent, type TestFleet, waitFor } from './helpers/fleet.js';

const MiB = 1024 * 1024;

interface DistJson {
  md5: string;
  sourceBytes: number;
  activation?: { activated: boolean; current: string[] };
  results: {
    host: string;
    state: string;
    error?: string;
    files?: { dest: string; state: string }[];
    transfer?: { fetchedBytes: number; fromPeers: Record<string, number> };
  }[];
}

const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');
const rootOf = (fleet: TestFleet, host: string) => join(fleet.dir, 'agents', host, 'root');

/** Every host's result is ok and its app.bin has the MD5 of `data`. */
function assertInstalled(fleet: TestFleet, results: DistJson['results'], data: Buffer): void {
  for (const r of results) {
    assert.equal(r.state, 'ok', `${r.host}: ${r.error}`);
    assert.equal(
      md5(readFileSync(join(rootOf(fleet, r.host), 'app.bin'))),
      md5(data),
      `${r.host}: wrong MD5`,
    );
  }
}

test('--source a1: a file only a1 has reaches a2..a4 from a1, the coordinator serving nothing', async (t) => {
  const names = ['a1', 'a2', 'a3', 'a4'];
  const fleet = await startFleet(t);
  const agents: Record<string, TestAgent> = {};
  for (const name of names)
    agents[name] = await fleet.addAgent(name, { wait: false, extra: ['--peer-listen', '127.0.0.1:0'] });
  await fleet.waitPeers(names);
  const data = randomBytes(8 * MiB + 12345);
  const src = join(rootOf(fleet, 'a1'), 'build.bin');
  writeFileSync(src, data);
  const dest = join(fleet.dir, 'agents', '{host}', 'root', 'app.bin');
  const r = await fleet.cli([
    'dist',
    src,
    '--source',
    'a1',
    '--dest',
    dest,
    '--targets',
    'a2',
    '--targets',
    'a3',
    '--targets',
    'a4',
    '--json',
  ]);
  assert.equal(r.code, 0, `${r.stderr}\n${r.stdout.slice(0, 3000)}`);
  const j = JSON.parse(r.stdout) as DistJson;
  assert.equal(j.md5, md5(data));
  assert.equal(j.sourceBytes, 0, "the coordinator's source uploaded bytes");
  assert.deepEqual(j.results.map((x) => x.host).sort(), ['a2', 'a3', 'a4']);
  let fromA1 = 0;
  for (const res of j.results) {
    assert.equal(res.state, 'ok', `${res.host}: ${res.error}`);
    assert.equal(
      md5(readFileSync(join(rootOf(fleet, res.host), 'app.bin'))),
      md5(data),
      `${res.host}: wrong MD5`,
    );
    assert.equal(
      res.transfer?.fromPeers['canopy-source'] ?? 0,
      0,
      `${res.host} fetched from the coordinator`,
    );
    fromA1 += res.transfer?.fromPeers.a1 ?? 0;
  }
  assert.ok(fromA1 >= data.length, `only ${fromA1} bytes came from a1`);
  assert.equal(existsSync(join(rootOf(fleet, 'a1'), 'app.bin')), false, 'a1 is no target');
  // The distribution ended, so a1's seed ends now (record removed), not at its serve deadline,
  // and the relays stop serving the blob.
  const seeds = join(fleet.dir, 'agents', 'a1', 'seeds');
  await waitFor('a1 to end its seed', () => readdirSync(seeds).length === 0);
  await waitFor(
    "a1's log to say so",
    () => /"msg":"dist\.source\.ended"/.test(agents.a1?.log() ?? '') || undefined,
  );
  for (const h of ['a2', 'a3', 'a4'])
    await waitFor(
      `${h} to stop serving`,
      () => /"msg":"dist\.ended"/.test(agents[h]?.log() ?? '') || undefined,
    );

  // a1 among the targets (all) counts as holding the file; with --activate together the others switch.
  const again = await fleet.cli([
    'dist',
    src,
    '--source',
    'a1',
    '--dest',
    join(fleet.dir, 'agents', '{host}', 'root', 'app2.bin'),
    '--targets',
    'all',
    '--activate',
    'together',
    '--json',
  ]);
  assert.equal(again.code, 0, `${again.stderr}\n${again.stdout.slice(0, 3000)}`);
  const k = JSON.parse(again.stdout) as DistJson;
  assert.equal(k.activation?.activated, true);
  assert.deepEqual(k.activation?.current, ['a1']);
  const a1 = k.results.find((x) => x.host === 'a1');
  assert.deepEqual(
    a1?.files?.map((f) => [f.dest, f.state]),
    [[src, 'unchanged']],
  );
  assert.equal(existsSync(join(rootOf(fleet, 'a1'), 'app2.bin')), false);
  for (const h of ['a2', 'a3', 'a4']) {
    assert.equal(md5(readFileSync(join(rootOf(fleet, h), 'app2.bin'))), md5(data), `${h}: wrong MD5`);
  }
  assert.equal(k.sourceBytes, 0);
  assert.deepEqual(readdirSync(rootOf(fleet, 'a1')).sort(), ['build.bin']);
});

test('--source refusals name the host and the path: unknown agent, no such file, outside its roots', async (t) => {
  const fleet = await startFleet(t);
  await fleet.addAgent('s1', { extra: ['--peer-listen', '127.0.0.1:0'] });
  await waitFor('s1 to announce its peer address', async () => {
    const l = await fleet.cliJson<{ agents: { facts: { peer?: string } | null }[] }>(['agents']);
    return l.agents[0]?.facts?.peer;
  });
  const dest = join(fleet.dir, 'agents', '{host}', 'root', 'app.bin');
  const dist = (src: string, host: string) =>
    fleet.cli(['dist', src, '--source', host, '--dest', dest, '--targets', 'all']);
  const inRoot = join(rootOf(fleet, 's1'), 'nope.bin');
  const unknown = await dist(inRoot, 's9');
  assert.equal(unknown.code, 2, unknown.stderr);
  assert.match(
    unknown.stderr,
    /--source s9: no agent named "s9" has joined; --source names the agent that holds .*nope\.bin/,
  );
  const missing = await dist(inRoot, 's1');
  assert.equal(missing.code, 2, missing.stderr);
  assert.match(missing.stderr, /agent "s1" cannot serve \S*\/s1\/root\/nope\.bin: no such file on this host/);
  const outside = await dist('/etc/hostname', 's1');
  assert.equal(outside.code, 2, outside.stderr);
  assert.match(
    outside.stderr,
    /agent "s1" will not serve \/etc\/hostname: the source file "\/etc\/hostname" is outside the allowed roots/,
  );
  const relative = await dist('build.bin', 's1');
  assert.equal(relative.code, 2);
  assert.match(relative.stderr, /with --source s1, SRC is a path on that agent: give it as an absolute path/);
  assert.equal(existsSync(join(rootOf(fleet, 's1'), 'app.bin')), false);
});

interface DistView {
  run: { finishedAt?: number };
  results: DistJson['results'];
  sourceBytes: number;
  tree: { parents: Record<string, string[]>; bytes: Record<string, number> } | null;
}

/** A port free now on 127.0.0.1: the --source agent must come back where the plans name it. */
async function freePort(): Promise<number> {
  const srv = createServer().listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address() as AddressInfo;
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

/**
 * a1 (on a fixed peer port, or with `anyPort` on port 0: another one after
 * a restart) holding build.bin, a2..a4 targets; a distribution from a1
 * capped at 1 MiB/s, and a1 killed with SIGKILL once a2 holds a quarter.
 */
async function killSourceMidway(t: TestContext, anyPort = false) {
  const fleet = await startFleet(t);
  const a1 = await fleet.addAgent('a1', {
    wait: false,
    extra: ['--peer-listen', `127.0.0.1:${anyPort ? 0 : await freePort()}`],
  });
  for (const name of ['a2', 'a3', 'a4'])
    await fleet.addAgent(name, { wait: false, extra: ['--peer-listen', '127.0.0.1:0'] });
  await fleet.waitPeers(['a1', 'a2', 'a3', 'a4']);
  const size = 8 * MiB;
  const data = randomBytes(size);
  const src = join(rootOf(fleet, 'a1'), 'build.bin');
  writeFileSync(src, data);
  const api = apiOf(fleet);
  const created = await api('POST', '/v1/dists', {
    path: src,
    source: 'a1',
    dest: join(fleet.dir, 'agents', '{host}', 'root', 'app.bin'),
    targets: ['a2', 'a3', 'a4'],
    rateLimit: MiB,
  });
  assert.equal(created.status, 201, created.text);
  const id = (JSON.parse(created.text) as { id: string }).id;
  const view = async () => {
    const r = await api('GET', `/v1/dists/${id}`);
    assert.equal(r.status, 200, r.text);
    return JSON.parse(r.text) as DistView;
  };
  await waitFor(
    'a2 to hold a quarter of the file',
    async () => ((await view()).tree?.bytes.a2 ?? 0) >= size / 4,
  );
  await a1.kill('SIGKILL');
  // Mid-way indeed: nobody holds it all (and under the cap, nobody could have since the check).
  const atKill = (await view()).tree?.bytes ?? {};
  for (const h of ['a2', 'a3', 'a4']) assert.ok((atKill[h] ?? 0) < size, `${h} had it all at the kill`);
  await waitFor('the coordinator to see a1 gone', async () => {
    const l = await fleet.cliJson<{ agents: { name: string; online: boolean }[] }>(['agents']);
    return l.agents.some((a) => a.name === 'a1' && !a.online);
  });
  const finished = () =>
    waitFor(
      'the distribution to finish',
      async () => {
        const v = await view();
        return v.run.finishedAt ? v : undefined;
      },
      180_000,
    );
  return { fleet, a1, src, data, finished };
}

test('--source a1 killed with SIGKILL mid-way and restarted: it serves its blob again and every host finishes', async (t) => {
  const { fleet, a1, data, finished } = await killSourceMidway(t);
  a1.restart();
  const done = await finished();
  assert.deepEqual(done.results.map((r) => r.host).sort(), ['a2', 'a3', 'a4']);
  assertInstalled(fleet, done.results, data);
  for (const r of done.results)
    assert.equal(r.transfer?.fromPeers['canopy-source'] ?? 0, 0, `${r.host} fetched from the coordinator`);
  // a2's only candidate is a1 (the root, never re-parented): all of it came from a1, before and after.
  assert.equal(done.results.find((r) => r.host === 'a2')?.transfer?.fromPeers.a1, data.length);
  assert.equal(done.sourceBytes, 0);
  assert.match(a1.log(), /"msg":"dist\.source\.restored"/);
  assert.doesNotMatch(a1.log(), /dist\.source\.changed/);
});

test('--source a1 on port 0, killed mid-way and restarted on another port: the hosts are told its new address and finish from it', async (t) => {
  const { fleet, a1, data, finished } = await killSourceMidway(t, true);
  const listening = () => [
    ...a1.log().matchAll(/"peer":"(127\.0\.0\.1:\d+)","msg":"peer server listening"/g),
  ];
  a1.restart();
  await waitFor('a1 to listen again', async () => listening().length === 2);
  const [before, after] = listening().map((m) => m[1]);
  assert.notEqual(after, before, 'a1 came back on the same port: the test shows nothing');
  const done = await finished();
  assertInstalled(fleet, done.results, data);
  // a2's only candidate is a1: it got the rest of the file from a1 at its new address.
  assert.equal(done.results.find((r) => r.host === 'a2')?.transfer?.fromPeers.a1, data.length);
  const moved = fleet.coordinator.log().match(/\{[^\n]*"msg":"dist\.peer_moved"[^\n]*/)?.[0];
  assert.ok(moved, 'the coordinator did not tell the hosts');
  assert.match(moved, new RegExp(`"agent":"a1","from":"${before}","to":"${after}"`));
  const a2 = fleet.agents.get('a2');
  assert.match(
    a2?.log() ?? '',
    new RegExp(`"peers":\\[\\{"name":"a1","address":"${after}"\\}\\],"msg":"peer addresses changed"`),
  );
});

test('--source a1 whose file changed while it was down: the distribution fails naming a1 and the path, nothing installed', async (t) => {
  const { fleet, a1, src, data, finished } = await killSourceMidway(t);
  // Same size, new bytes: only the file's identity (mtime, ctime) tells.
  writeFileSync(src, randomBytes(data.length));
  a1.restart();
  const done = await finished();
  assert.deepEqual(done.results.map((r) => r.host).sort(), ['a2', 'a3', 'a4']);
  for (const r of done.results) {
    t.diagnostic(`${r.host}: ${r.error}`);
    assert.equal(r.state, 'failed', `${r.host} did not fail`);
    assert.match(
      r.error ?? '',
      /agent "a1" no longer serves \S*\/a1\/root\/build\.bin \(blob [0-9a-f]{16}\)/,
    );
    assert.match(
      r.error ?? '',
      /the file changed since it was hashed \(found at the agent's restart\): it was modified/,
    );
    assert.deepEqual(readdirSync(rootOf(fleet, r.host)), [], `${r.host}: something was installed or left`);
  }
  assert.match(a1.log(), /"msg":"dist\.source\.changed"/);
  assert.deepEqual(readdirSync(rootOf(fleet, 'a1')), ['build.bin']);
});
