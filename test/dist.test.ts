// Distribution end to end with real processes on loopback: a coordinator
// (the source) and 8 agents with peer servers in two IDCs; `canopy dist`
// puts a 64 MiB file on all of them through the planned peer tree, every
// MD5 right, the source uploading far less than one copy per host.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { startFleet } from './helpers/fleet.js';

interface DistJson {
  size: number;
  md5: string;
  sourceCopies: number;
  results: {
    host: string;
    state: string;
    error?: string;
    transfer?: { fetchedBytes: number; fromPeers: Record<string, number>; badPeers: string[] };
  }[];
}

test('canopy dist: a 64 MiB file to 8 agents through the peer tree, every MD5 right', async (t) => {
  const fleet = await startFleet(t);
  const names = Array.from({ length: 8 }, (_, i) => `node-0${i + 1}`);
  for (const [i, name] of names.entries()) {
    await fleet.addAgent(name, {
      wait: false,
      labels: { idc: i < 4 ? 'bj' : 'sh', rack: `r${i % 2}` },
      extra: ['--peer-listen', '127.0.0.1:0'],
    });
  }
  await fleet.waitPeers(names);
  const data = randomBytes(64 * 1024 * 1024);
  const src = join(fleet.dir, 'image.bin');
  writeFileSync(src, data);
  const md5 = createHash('md5').update(data).digest('hex');
  const dest = join(fleet.dir, 'agents', '{host}', 'root', 'image.bin');
  const r = await fleet.cli(['dist', src, '--dest', dest, '--targets', 'all', '--mode', '0640', '--json']);
  assert.equal(r.code, 0, `${r.stderr}\n${r.stdout.slice(0, 3000)}`);
  const j = JSON.parse(r.stdout) as DistJson;
  assert.equal(j.md5, md5);
  assert.equal(j.results.length, 8);
  for (const res of j.results) {
    assert.equal(res.state, 'ok', `${res.host}: ${res.error}`);
    const got = readFileSync(join(fleet.dir, 'agents', res.host, 'root', 'image.bin'));
    assert.equal(createHash('md5').update(got).digest('hex'), md5, `${res.host} has a wrong file`);
    assert.equal(res.transfer?.fetchedBytes, data.length);
  }
  // Relayed: most bytes came from other agents, not from the source.
  const fromAgents = j.results.reduce(
    (n, x) =>
      n +
      Object.entries(x.transfer?.fromPeers ?? {}).reduce(
        (m, [k, v]) => m + (k === 'canopy-source' ? 0 : v),
        0,
      ),
    0,
  );
  assert.ok(fromAgents > 4 * data.length, `only ${fromAgents} bytes came from agents`);
  assert.ok(j.sourceCopies < 4, `the source uploaded ${j.sourceCopies} copies`);
  // Unknown source file: a clear error naming it, nothing started.
  const missing = await fleet.cli(['dist', join(fleet.dir, 'nope.bin'), '--dest', dest, '--targets', 'all']);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /nope\.bin is not a file on the coordinator's machine/);
});
