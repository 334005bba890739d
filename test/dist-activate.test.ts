// `canopy dist --activate together` end to end, with a real coordinator and
// agents on loopback: every host stages the verified file beside its
// destination and the fleet switches only once all of them have it (old
// files backed up); one host that cannot stage means no host switches and
// every staged copy is removed; a staged copy changed on one host before the
// switch is caught by its check, and again no host switches.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import {
  type AgentOpts,
  apiOf,
  readJsonLines,
  startFleet,
  type TestFleet,
  waitFor,
} from './helpers/fleet.js';

const MiB = 1024 * 1024;
const OLD = 'the old build\n';

interface HostResult {
  host: string;
  state: string;
  error?: string;
  files?: { state: string; oldMd5: string | null; newMd5: string; code?: string; error?: string }[];
}

interface DistJson {
  md5: string;
  activation: { activated: boolean; switched: string[]; current: string[]; discarded: string[] };
  results: HostResult[];
}

const md5 = (b: Buffer | string) => createHash('md5').update(b).digest('hex');
const rootOf = (fleet: TestFleet, host: string) => join(fleet.dir, 'agents', host, 'root');
const destOf = (fleet: TestFleet, host: string) => join(rootOf(fleet, host), 'app.bin');

async function peerFleet(t: TestContext, agents: Record<string, AgentOpts>): Promise<TestFleet> {
  const fleet = await startFleet(t);
  for (const [name, o] of Object.entries(agents)) {
    await fleet.addAgent(name, {
      ...o,
      wait: false,
      extra: ['--peer-listen', '127.0.0.1:0', ...(o.extra ?? [])],
    });
  }
  const names = Object.keys(agents);
  await fleet.waitPeers(names);
  return fleet;
}

function sourceFile(fleet: TestFleet, size: number) {
  const data = randomBytes(size);
  const path = join(fleet.dir, `build-${size}.bin`);
  writeFileSync(path, data);
  return { path, data, md5: md5(data) };
}

/** Files canopy left beside a destination: staged copies and install temps. */
function leftovers(fleet: TestFleet, host: string): string[] {
  return readdirSync(rootOf(fleet, host)).filter((n) => n.includes('.canopy-'));
}

/** The `time` of each agent log line matching `match`, by task id. */
function logTimes(fleet: TestFleet, host: string, msg: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const l of readJsonLines(fleet.agents.get(host)?.log() ?? '')) {
    if (l.msg === msg) out.set(String(l.task), Date.parse(String(l.time)));
  }
  return out;
}

test('--activate together: every host stages, then all switch; old files backed up, MD5s right', async (t) => {
  const names = ['a1', 'a2', 'a3', 'a4'];
  const fleet = await peerFleet(t, Object.fromEntries(names.map((n) => [n, {}])));
  const src = sourceFile(fleet, 3 * MiB);
  for (const h of ['a1', 'a2', 'a3']) writeFileSync(destOf(fleet, h), OLD);
  writeFileSync(destOf(fleet, 'a4'), src.data); // already current: needs no switch
  const dest = join(fleet.dir, 'agents', '{host}', 'root', 'app.bin');
  /** canopy dist of the source to every host's app.bin, with `extra` flags. */
  const distAll = (...extra: string[]) =>
    fleet.cli(['dist', src.path, '--dest', dest, '--targets', 'all', ...extra]);
  const r = await distAll('--activate', 'together', '--json');
  assert.equal(r.code, 0, `${r.stderr}\n${r.stdout.slice(0, 3000)}`);
  const j = JSON.parse(r.stdout) as DistJson;
  assert.equal(j.activation.activated, true);
  assert.deepEqual(j.activation.switched.sort(), ['a1', 'a2', 'a3']);
  assert.deepEqual(j.activation.current, ['a4']);
  for (const res of j.results) {
    assert.equal(res.state, 'ok', `${res.host}: ${res.error}`);
    assert.equal(md5(readFileSync(destOf(fleet, res.host))), src.md5, `${res.host} has a wrong file`);
    assert.deepEqual(leftovers(fleet, res.host), [], `${res.host} kept a staged copy or temp`);
    if (res.host === 'a4') {
      assert.equal(res.files?.[0]?.state, 'unchanged');
      continue;
    }
    assert.equal(res.files?.[0]?.state, 'changed');
    assert.equal(res.files?.[0]?.oldMd5, md5(OLD));
    // The old file is in the agent's backups (DATA/backups/<sha256 of dest>/<seq>-<md5>).
    const home = join(
      fleet.dir,
      'agents',
      res.host,
      'backups',
      createHash('sha256').update(destOf(fleet, res.host)).digest('hex').slice(0, 32),
    );
    const backup = readdirSync(home).find((n) => n.endsWith(`-${md5(OLD)}`));
    assert.ok(backup, `${res.host}: no backup of the old file in ${home}`);
    assert.equal(readFileSync(join(home, backup), 'utf8'), OLD);
  }
  // No host switched before every host had staged: each switch started after the last stage ended.
  const staged = names.flatMap((h) =>
    [...logTimes(fleet, h, 'task finished')].filter(([id]) => id.split(':').length === 2),
  );
  const switches = names.flatMap((h) =>
    [...logTimes(fleet, h, 'running activation step')].filter(([id]) => id.endsWith(':activate')),
  );
  assert.equal(staged.length, 4);
  assert.equal(switches.length, 3);
  const lastStaged = Math.max(...staged.map(([, at]) => at));
  for (const [id, at] of switches) assert.ok(at >= lastStaged, `${id} switched before every host had staged`);

  // Again: every host already has it; the verdict says so and exits 0.
  const again = await distAll('--activate', 'together');
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /activated together on 4 of 4 hosts \(4 already had it\)/);

  // Same content, a new --mode: the hosts have the bytes, but the mode still switches, together.
  const modeOf = (h: string) => statSync(destOf(fleet, h)).mode & 0o7777;
  const tightened = await distAll('--activate', 'together', '--mode', '0600', '--json');
  assert.equal(tightened.code, 0, tightened.stderr);
  const tj = JSON.parse(tightened.stdout) as DistJson;
  assert.deepEqual(tj.activation.switched.sort(), names);
  for (const h of names) {
    assert.equal(modeOf(h), 0o600, `${h}: --mode 0600 was not applied to the current file`);
    assert.equal(md5(readFileSync(destOf(fleet, h))), src.md5);
    assert.deepEqual(leftovers(fleet, h), [], `${h} kept a staged copy or temp`);
  }
  // Without --activate, the mode is set in place and reported as a change without content.
  const withMode = async (mode: string) => {
    const r = await distAll('--mode', mode, '--json');
    assert.equal(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as DistJson).results;
  };
  for (const res of await withMode('0640')) {
    assert.equal(res.files?.[0]?.state, 'changed', `${res.host}: ${JSON.stringify(res.files)}`);
    assert.equal(modeOf(res.host), 0o640, `${res.host}: --mode 0640 was not applied`);
  }
  for (const res of await withMode('0640')) assert.equal(res.files?.[0]?.state, 'unchanged');
});

test('--activate together: a host that cannot stage means no host switches; staged copies removed; it is named', async (t) => {
  // b3's allowlist does not cover the destination: it refuses at once, the others stage.
  const elsewhere = mkdtempSync(join(tmpdir(), 'canopy-b3-root-'));
  t.after(() => rmSync(elsewhere, { recursive: true, force: true }));
  const fleet = await peerFleet(t, { b1: {}, b2: {}, b3: { roots: [elsewhere] } });
  const src = sourceFile(fleet, 2 * MiB);
  for (const h of ['b1', 'b2']) writeFileSync(destOf(fleet, h), OLD);
  const dest = join(fleet.dir, 'agents', '{host}', 'root', 'app.bin');
  const r = await fleet.cli(['dist', src.path, '--dest', dest, '--targets', 'all', '--activate', 'together']);
  assert.equal(r.code, 1, `${r.stderr}\n${r.stdout}`);
  assert.match(
    r.stdout,
    /NOT activated: 1 of 3 hosts lack the file \(b3: destination "[^"]*b3\/root\/app\.bin" is outside the allowed roots.*\); staged copies removed; nothing changed$/m,
  );
  assert.match(r.stdout, /b1 {2}discarded/);
  assert.match(r.stdout, /b2 {2}discarded/);
  assert.match(r.stdout, /b3 {2}failed/);
  for (const h of ['b1', 'b2']) {
    assert.equal(readFileSync(destOf(fleet, h), 'utf8'), OLD, `${h}'s file changed`);
    assert.deepEqual(leftovers(fleet, h), [], `${h} kept a staged copy or temp`);
    // It did stage (then discarded): the step ran on this host.
    const steps = [...logTimes(fleet, h, 'running activation step').keys()];
    assert.deepEqual(
      steps.map((id) => id.split(':')[2]),
      ['discard'],
      `${h} ran ${steps.join(', ')}`,
    );
  }
  assert.equal(existsSync(destOf(fleet, 'b3')), false);
});

test('--activate together: a staged copy changed on one host before the switch is refused there, and no host switches', async (t) => {
  const fleet = await peerFleet(t, { c1: {}, c2: {} });
  const size = 6 * MiB;
  const src = sourceFile(fleet, size);
  for (const h of ['c1', 'c2']) writeFileSync(destOf(fleet, h), OLD);
  const api = apiOf(fleet);
  const created = await api('POST', '/v1/dists', {
    path: src.path,
    dest: join(fleet.dir, 'agents', '{host}', 'root', 'app.bin'),
    targets: ['all'],
    activate: 'together',
    // At most 1 MiB/s each: the file takes 6 s to reach a host, time enough to hold one back.
    rateLimit: MiB,
  });
  assert.equal(created.status, 201, created.text);
  const { id, blob } = JSON.parse(created.text) as { id: string; blob: string };
  const view = async () => {
    const v = await api('GET', `/v1/dists/${id}`);
    assert.equal(v.status, 200, v.text);
    return JSON.parse(v.text) as {
      summary: { finished: boolean };
      results: HostResult[];
      tree: { parents: Record<string, string[]> } | null;
      activation: { step: string } | null;
    };
  };
  // Hold the host that fetches from the other (the chain's tail) so it cannot stage yet.
  const parents = (await view()).tree?.parents ?? {};
  const held = Object.keys(parents).find((h) => parents[h]?.[0] !== 'canopy-source') ?? 'c2';
  const other = held === 'c1' ? 'c2' : 'c1';
  const heldAgent = fleet.agents.get(held);
  assert.ok(heldAgent);
  heldAgent.child.kill('SIGSTOP');
  t.after(() => heldAgent.child.kill('SIGCONT'));
  const staged = join(rootOf(fleet, other), `.app.bin.canopy-staged-${blob.slice(0, 16)}`);
  await waitFor(`${other} to stage the file`, () => existsSync(staged), 60_000);
  assert.equal((await view()).activation?.step, 'stage', 'the run moved on while a host had not staged');
  const bytes = readFileSync(staged);
  bytes[size / 2] = (bytes[size / 2] ?? 0) ^ 0xff;
  writeFileSync(staged, bytes);
  heldAgent.child.kill('SIGCONT');
  const done = await waitFor(
    'the distribution to finish',
    async () => {
      const v = await view();
      return v.summary.finished ? v : undefined;
    },
    90_000,
  );
  const byHost = new Map(done.results.map((r) => [r.host, r]));
  const culprit = byHost.get(other);
  assert.equal(culprit?.state, 'failed');
  assert.equal(culprit?.files?.[0]?.code, 'TRANSFER_DIGEST_MISMATCH');
  assert.match(
    culprit?.error ?? '',
    new RegExp(
      `canopy-staged-${blob.slice(0, 16)} of .* has MD5 ${md5(bytes)}, the manifest says ${src.md5}`,
    ),
  );
  assert.equal(byHost.get(held)?.files?.[0]?.state, 'discarded', JSON.stringify(byHost.get(held)));
  assert.match(
    byHost.get(held)?.error ?? '',
    new RegExp(`not activated: 1 host\\(s\\) lack the file \\(${other}: `),
  );
  for (const h of ['c1', 'c2']) {
    assert.equal(readFileSync(destOf(fleet, h), 'utf8'), OLD, `${h}'s file changed`);
    assert.deepEqual(leftovers(fleet, h), [], `${h} kept a staged copy or temp`);
  }
});
