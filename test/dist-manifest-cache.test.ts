// The coordinator's manifest cache end to end, with a real coordinator and
// two agents on loopback: `canopy dist` of an unchanged file a second time
// does not hash it again (the coordinator logs dist.manifest.reused, not
// dist.manifest.hashed), and a file changed in place with the same size and
// its mtime put back is hashed again (its ctime changed) and distributed with
// its new content.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, statSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { startFleet, waitFor } from './helpers/fleet.js';

interface DistJson {
  md5: string;
  results: { host: string; state: string; error?: string }[];
}

const md5Of = (data: Buffer) => createHash('md5').update(data).digest('hex');
const count = (log: string, msg: string) =>
  log.split('\n').filter((l) => l.includes(`"msg":"${msg}"`)).length;

test('a second canopy dist of an unchanged file reuses its manifest; a file changed in place (same size, mtime put back) is hashed again', async (t) => {
  const fleet = await startFleet(t);
  const src = join(fleet.dir, 'image.bin');
  writeFileSync(src, randomBytes(3 * 1024 * 1024));
  // Whole seconds: utimes can put this mtime back to the nanosecond.
  const stamp = new Date('2026-01-02T03:04:05Z');
  utimesSync(src, stamp, stamp);
  const names = ['mc1', 'mc2'];
  for (const name of names) {
    await fleet.addAgent(name, { wait: false, extra: ['--peer-listen', '127.0.0.1:0'] });
  }
  await fleet.waitPeers(names);
  // A file changed in the last 2 s is never cached (a write in the same clock tick would not show).
  await waitFor('the source file to be settled (changed over 2 s ago)', () => {
    return Date.now() - statSync(src).ctimeMs > 2_500;
  });
  const dest = join(fleet.dir, 'agents', '{host}', 'root', 'image.bin');
  const dist = async () => {
    const r = await fleet.cli(['dist', src, '--dest', dest, '--targets', 'all', '--json']);
    assert.equal(r.code, 0, `${r.stderr}\n${r.stdout.slice(0, 2000)}`);
    const j = JSON.parse(r.stdout) as DistJson;
    for (const res of j.results) assert.equal(res.state, 'ok', `${res.host}: ${res.error}`);
    return j;
  };

  const first = await dist();
  assert.equal(first.md5, md5Of(readFileSync(src)));
  assert.equal(count(fleet.coordinator.log(), 'dist.manifest.hashed'), 1);
  assert.equal(count(fleet.coordinator.log(), 'dist.manifest.reused'), 0);

  const second = await dist();
  assert.equal(second.md5, first.md5);
  assert.equal(
    count(fleet.coordinator.log(), 'dist.manifest.hashed'),
    1,
    'the unchanged file was hashed again',
  );
  assert.equal(count(fleet.coordinator.log(), 'dist.manifest.reused'), 1);

  // Changed in place: same size, same inode, mtime put back; only the ctime moves.
  const before = statSync(src, { bigint: true });
  const fd = openSync(src, 'r+');
  writeSync(fd, randomBytes(4096), 0, 4096, 1024 * 1024);
  closeSync(fd);
  utimesSync(src, stamp, stamp);
  await waitFor('the ctime to move (the kernel clock is coarse)', () => {
    utimesSync(src, stamp, stamp);
    return statSync(src, { bigint: true }).ctimeNs !== before.ctimeNs;
  });
  const after = statSync(src, { bigint: true });
  assert.equal(after.size, before.size);
  assert.equal(after.mtimeNs, before.mtimeNs);
  const changed = md5Of(readFileSync(src));
  assert.notEqual(changed, first.md5);

  const third = await dist();
  assert.equal(third.md5, changed, 'the changed file was distributed with its old manifest');
  assert.equal(count(fleet.coordinator.log(), 'dist.manifest.hashed'), 2);
  for (const host of names) {
    assert.equal(md5Of(readFileSync(join(fleet.dir, 'agents', host, 'root', 'image.bin'))), changed);
  }
});
