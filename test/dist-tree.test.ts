// Directory distribution end to end with real processes on loopback: a
// coordinator (the source) and 4 agents with peer servers; `canopy dist DIR`
// puts a tree (nested directories, an 8 MiB file, a symlink, modes) on every
// host with rsync over the peer channel, level by level down the planned
// tree; a second distribution of a changed tree moves only the delta.
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
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { readJsonLines, startFleet, waitFor } from './helpers/fleet.js';

const MiB = 1024 * 1024;

interface RsyncFigures {
  peer: string;
  files: number;
  bytesReceived: number;
  literalBytes: number;
  matchedBytes: number;
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
function snapshot(dir: string, rel = ''): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of readdirSync(join(dir, rel)).sort()) {
    const r = rel ? `${rel}/${name}` : name;
    const p = join(dir, r);
    const st = lstatSync(p);
    const mode = (st.mode & 0o7777).toString(8);
    if (st.isSymbolicLink()) out[r] = `link -> ${readlinkSync(p)}`;
    else if (st.isDirectory()) {
      out[r] = `dir ${mode}`;
      Object.assign(out, snapshot(dir, r));
    } else out[r] = `file ${mode} ${readFileSync(p).toString('base64')}`;
  }
  return out;
}

test('canopy dist DIR: a tree to 4 agents with rsync down the peer tree, then only the delta', async (t) => {
  const fleet = await startFleet(t);
  const names = ['node-01', 'node-02', 'node-03', 'node-04'];
  for (const name of names) {
    await fleet.addAgent(name, { wait: false, extra: ['--peer-listen', '127.0.0.1:0'] });
  }
  await fleet.waitOnline(names);
  await waitFor('every agent to announce its peer address', async () => {
    const l = await fleet.cliJson<{ agents: { facts: { peer?: string } | null }[] }>(['agents']);
    return l.agents.length === 4 && l.agents.every((a) => a.facts?.peer);
  });

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
  writeFileSync(join(src, 'etc', 'secret.key'), 'k3y\n');
  chmodSync(join(src, 'etc', 'secret.key'), 0o600);
  chmodSync(join(src, 'etc', 'conf.d'), 0o750);
  symlinkSync('etc/app.conf', join(src, 'current.conf'));
  const destOf = (host: string) => join(fleet.dir, 'agents', host, 'root', 'app');
  const dest = join(fleet.dir, 'agents', '{host}', 'root', 'app');

  const dist = async () => {
    const r = await fleet.cli(['dist', src, '--dest', dest, '--targets', 'all', '--json']);
    assert.equal(r.code, 0, `${r.stderr}\n${r.stdout.slice(0, 3000)}`);
    const j = JSON.parse(r.stdout) as DistJson;
    assert.equal(j.results.length, 4);
    for (const res of j.results) {
      assert.equal(res.state, 'ok', `${res.host}: ${res.error}`);
      assert.deepEqual(snapshot(destOf(res.host)), snapshot(src), `${res.host} has a different tree`);
      assert.ok(res.transfer?.rsync, `${res.host} reported no rsync figures`);
    }
    return j;
  };

  // First: everything is new.
  const first = await dist();
  assert.equal(first.size, 8 * MiB + 12 + 14 + 19 + 4);
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
