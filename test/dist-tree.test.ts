// Directory distribution end to end with real processes on loopback: a
// coordinator (the source) and 4 agents with peer servers; `canopy dist DIR`
// puts a tree (nested directories, an 8 MiB file, a symlink, modes) on every
// host with rsync over the peer channel, level by level down the planned
// tree; a second distribution of a changed tree moves only the delta. With
// --rate-limit, the fleet's progress (SSE and GET /v1/dists/:id) shows hosts
// midway through their pulls, and every serving rsync ran with the cap.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { apiOf, readJsonLines, startFleet, type TestFleet } from './helpers/fleet.js';

const MiB = 1024 * 1024;

interface RsyncFigures {
  peer: string;
  files: number;
  bytesReceived: number;
  literalBytes: number;
  matchedBytes: number;
  bwlimitKiB?: number;
}
interface DistJson {
  size: number;
  results: {
    host: string;
    state: string;
    error?: string;
    transfer?: { fetchedBytes: number; fromPeers: Record<string, number>; rsync?: RsyncFigures };
  }[];
}

/** Every entry under `dir`: kind, mode, and content or link target. */
function snapshot(dir: string, rel = '', fileMask = 0o7777): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of readdirSync(join(dir, rel)).sort()) {
    const r = rel ? `${rel}/${name}` : name;
    const p = join(dir, r);
    const st = lstatSync(p);
    const mode = (st.mode & 0o7777).toString(8);
    if (st.isSymbolicLink()) out[r] = `link -> ${readlinkSync(p)}`;
    else if (st.isDirectory()) {
      out[r] = `dir ${mode}`;
      Object.assign(out, snapshot(dir, r, fileMask));
    } else out[r] = `file ${(st.mode & fileMask).toString(8)} ${readFileSync(p).toString('base64')}`;
  }
  return out;
}

/** A fleet of agents with peer servers, each announcing its peer address. */
async function peerFleet(t: Parameters<typeof startFleet>[0], names: string[]): Promise<TestFleet> {
  const fleet = await startFleet(t);
  for (const name of names) {
    await fleet.addAgent(name, { wait: false, extra: ['--peer-listen', '127.0.0.1:0'] });
  }
  await fleet.waitPeers(names);
  return fleet;
}

test('canopy dist DIR: a tree to 4 agents with rsync down the peer tree, then only the delta', async (t) => {
  const names = ['node-01', 'node-02', 'node-03', 'node-04'];
  const fleet = await peerFleet(t, names);

  const src = join(fleet.dir, 'tree');
  mkdirSync(join(src, 'etc', 'conf.d'), { recursive: true });
  mkdirSync(join(src, 'bin'));
  mkdirSync(join(src, 'data'));
  const big = randomBytes(8 * MiB);
  writeFileSync(join(src, 'data', 'model.bin'), big);
  writeFileSync(join(src, 'etc', 'app.conf'), 'workers = 4\n');
  writeFileSync(join(src, 'etc', 'conf.d', 'extra.conf'), 'debug = false\n');
  writeFileSync(join(src, 'bin', 'run.sh'), '#!/bin/sh\necho run\n');
  chmodSync(join(src, 'bin', 'run.sh'), 0o755);
  // A setuid file: the agents (no allow_setid) take it with the bit cleared.
  writeFileSync(join(src, 'bin', 'tool'), 'not really a tool\n');
  chmodSync(join(src, 'bin', 'tool'), 0o4755);
  // A setgid directory keeps its bit (only files lose theirs).
  chmodSync(join(src, 'data'), 0o2755);
  writeFileSync(join(src, 'etc', 'secret.key'), 'k3y\n');
  chmodSync(join(src, 'etc', 'secret.key'), 0o600);
  chmodSync(join(src, 'etc', 'conf.d'), 0o750);
  symlinkSync('etc/app.conf', join(src, 'current.conf'));
  const destOf = (host: string) => join(fleet.dir, 'agents', host, 'root', 'app');
  const dest = join(fleet.dir, 'agents', '{host}', 'root', 'app');

  // Each host has a file of its own in the destination: relays must not pass theirs on.
  for (const h of names) {
    mkdirSync(destOf(h), { recursive: true });
    writeFileSync(join(destOf(h), `${h}-private.key`), `${h}'s own key\n`);
  }
  const withoutOwn = (host: string) =>
    Object.fromEntries(Object.entries(snapshot(destOf(host))).filter(([k]) => k !== `${host}-private.key`));

  const dist = async () => {
    const r = await fleet.cli(['dist', src, '--dest', dest, '--targets', 'all', '--json']);
    assert.equal(r.code, 0, `${r.stderr}\n${r.stdout.slice(0, 3000)}`);
    const j = JSON.parse(r.stdout) as DistJson;
    assert.equal(j.results.length, 4);
    for (const res of j.results) {
      assert.equal(res.state, 'ok', `${res.host}: ${res.error}`);
      assert.deepEqual(withoutOwn(res.host), snapshot(src, '', 0o1777), `${res.host} has a different tree`);
      assert.deepEqual(
        readdirSync(destOf(res.host)).filter((n) => n.endsWith('-private.key')),
        [`${res.host}-private.key`],
        `${res.host} got another host's own file from its relay`,
      );
      assert.equal(statSync(join(destOf(res.host), 'bin', 'tool')).mode & 0o7777, 0o755);
      assert.ok(res.transfer?.rsync, `${res.host} reported no rsync figures`);
    }
    return j;
  };

  // First: everything is new.
  const first = await dist();
  assert.equal(first.size, 8 * MiB + 12 + 14 + 19 + 4 + 18);
  for (const res of first.results) {
    assert.ok((res.transfer?.rsync?.literalBytes ?? 0) >= 8 * MiB, `${res.host}: ${JSON.stringify(res)}`);
  }
  checkParents(first);

  // Second: 1 MiB changed inside the 8 MiB file, a file added, a file removed from the source.
  randomBytes(MiB).copy(big, 3 * MiB + 4321);
  writeFileSync(join(src, 'data', 'model.bin'), big);
  const later = new Date(Date.now() + 60_000);
  utimesSync(join(src, 'data', 'model.bin'), later, later);
  writeFileSync(join(src, 'etc', 'conf.d', 'new.conf'), 'added = true\n');
  rmSync(join(src, 'etc', 'secret.key'));
  // Without --delete the hosts keep files the tree no longer has (rsync's default): take it off
  // them too, so that the trees compare equal.
  for (const h of names) rmSync(join(destOf(h), 'etc', 'secret.key'));
  const second = await dist();
  for (const res of second.results) {
    const s = res.transfer?.rsync;
    assert.ok(s, res.host);
    assert.ok(s.literalBytes < 2 * MiB, `${res.host} got ${s.literalBytes} literal bytes: no delta`);
    assert.ok(s.matchedBytes > 6 * MiB, `${res.host} matched only ${s.matchedBytes} bytes`);
    assert.ok(s.bytesReceived < 3 * MiB, `${res.host} received ${s.bytesReceived} bytes`);
  }
  checkParents(second);

  /** Each host pulled from the parent the plan gave it (its log names it), and not all from the source. */
  function checkParents(j: DistJson): void {
    for (const res of j.results) {
      const agent = fleet.agents.get(res.host);
      const planned = readJsonLines(agent?.log() ?? '')
        .filter((l) => l.msg === 'running directory distribution task')
        .at(-1)?.parent;
      assert.equal(res.transfer?.rsync?.peer, planned, `${res.host} did not pull from its planned parent`);
    }
    const relayed = j.results.filter((r) => r.transfer?.rsync?.peer !== 'canopy-source');
    assert.ok(relayed.length > 0, 'every host pulled from the source: no relaying');
  }
});

/** The fleet's progress event (the fields checked here). */
interface FleetProgress {
  size: number;
  bytes: number;
  totalBytes: number;
  complete: number;
  slowest: { host: string; bytes: number }[];
  sourceBytes: number;
}

/** Server-sent events as they were read: name and parsed data. */
function parseSse(text: string): { event: string; data: unknown }[] {
  return text
    .split('\n\n')
    .filter((b) => b.trim() && !b.startsWith(':'))
    .map((b) => {
      const f = Object.fromEntries(
        b.split('\n').map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2)]),
      );
      return { event: f.event ?? '', data: f.data ? JSON.parse(f.data) : null };
    });
}

test('canopy dist DIR --rate-limit: progress moves while hosts pull, and every serving rsync ran with the cap', async (t) => {
  const names = ['lim-01', 'lim-02', 'lim-03'];
  const fleet = await peerFleet(t, names);
  const src = join(fleet.dir, 'tree');
  mkdirSync(join(src, 'data'), { recursive: true });
  writeFileSync(join(src, 'data', 'model.bin'), randomBytes(6 * MiB));
  writeFileSync(join(src, 'app.conf'), 'workers = 4\n');
  const size = 6 * MiB + 12;
  const destOf = (host: string) => join(fleet.dir, 'agents', host, 'root', 'app');
  const rate = 2 * MiB; // 2048 KiB/s: a host takes about 3 s, so its progress is seen midway
  const api = apiOf(fleet);

  const created = await api('POST', '/v1/dists', {
    path: src,
    dest: join(fleet.dir, 'agents', '{host}', 'root', 'app'),
    targets: ['all'],
    rateLimit: rate,
  });
  assert.equal(created.status, 201, created.text);
  const { id, blob: treeId } = JSON.parse(created.text) as { id: string; blob: string };
  // The event stream, read to its end (done), and GET /v1/dists/:id polled meanwhile.
  const events = api('GET', `/v1/dists/${id}/events`);
  const polled: Record<string, number>[] = [];
  let finished = false;
  void events.finally(() => {
    finished = true;
  });
  while (!finished) {
    const v = JSON.parse((await api('GET', `/v1/dists/${id}`)).text) as {
      tree: { bytes: Record<string, number> } | null;
    };
    if (v.tree) polled.push(v.tree.bytes);
    await new Promise((r) => setTimeout(r, 200));
  }
  const stream = parseSse((await events).text);
  assert.equal(stream.at(-1)?.event, 'done', 'the stream ended before the distribution');

  // Every host has the tree, pulled with rsync's --bwlimit at the cap.
  const view = JSON.parse((await api('GET', `/v1/dists/${id}`)).text) as {
    results: DistJson['results'];
    sourceBytes: number;
  };
  assert.equal(view.results.length, 3);
  for (const res of view.results) {
    assert.equal(res.state, 'ok', `${res.host}: ${res.error}`);
    assert.deepEqual(snapshot(destOf(res.host)), snapshot(src), `${res.host} has a different tree`);
    assert.equal(res.transfer?.rsync?.bwlimitKiB, 2048, `${res.host}: ${JSON.stringify(res.transfer)}`);
  }
  // The coordinator's source counts what it served with rsync.
  assert.ok(view.sourceBytes >= size, `the source uploaded ${view.sourceBytes} bytes`);

  // The serving side of every pull (the coordinator's source or a parent agent) ran rsync with the cap.
  const logs = [
    { who: 'coordinator', log: fleet.coordinator.log() },
    ...names.map((n) => ({ who: n, log: fleet.agents.get(n)?.log() ?? '' })),
  ];
  const started = logs.flatMap(({ who, log }) =>
    readJsonLines(log)
      .filter((l) => l.msg === 'transfer.peer.rsync_started' && l.tree === treeId)
      .map((l) => ({ who, argv: l.argv as string[] })),
  );
  assert.ok(started.length >= 3, `${started.length} rsync pulls served: ${JSON.stringify(started)}`);
  for (const s of started) {
    assert.ok(s.argv.includes('--bwlimit=2048'), `${s.who} served rsync ${s.argv.join(' ')}`);
  }
  // An agent serving the tree to its children capped its peer server's upload too.
  const servers = new Set(started.map((s) => s.who).filter((w) => w !== 'coordinator'));
  assert.ok(servers.size > 0, 'no agent served the tree: no relaying');
  for (const who of servers) {
    const caps = readJsonLines(fleet.agents.get(who)?.log() ?? '').filter((l) => l.msg === 'peer upload cap');
    assert.ok(
      caps.some((l) => l.bytesPerSecond === rate),
      `${who} served the tree without an upload cap: ${JSON.stringify(caps)}`,
    );
  }

  // Progress: the fleet's bytes only grow, and hosts were seen midway through their pulls.
  const progress = stream.filter((e) => e.event === 'progress').map((e) => e.data as FleetProgress);
  for (let i = 1; i < progress.length; i++) {
    assert.ok(
      (progress[i]?.bytes ?? 0) >= (progress[i - 1]?.bytes ?? 0),
      `fleet bytes went back: ${progress.map((p) => p.bytes).join(', ')}`,
    );
  }
  assert.ok(progress.every((p) => p.size === size && p.totalBytes === 3 * size));
  const midway = progress.filter((p) => p.slowest.some((s) => s.bytes > 0 && s.bytes < size));
  assert.ok(
    midway.length >= 2,
    `progress events with a host midway: ${JSON.stringify(progress.map((p) => p.slowest))}`,
  );
  assert.ok(
    new Set(midway.map((p) => p.bytes)).size >= 2,
    `the midway events did not move: ${midway.map((p) => p.bytes).join(', ')}`,
  );
  const seenMidway = polled.flatMap((b) => Object.values(b)).filter((n) => n > 0 && n < size);
  assert.ok(seenMidway.length > 0, `GET /v1/dists/${id} never showed a host midway`);
});
