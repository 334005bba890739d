// The run manager driving an --activate together distribution, with a fake
// courier and a real store in a temp dir: a stage answer is held (no result,
// no switch) until every host staged; re-sent answers and acks of an earlier
// step change nothing; a restarted coordinator resumes the current step from
// the store, and one restarted after the stage deadline discards.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { pino } from 'pino';
import { type DistSpec, type FileOutcome, NO_OUTPUT, type Task, type TaskResult } from '../protocol/index.js';
import { type AgentStatus, type Courier, RunManager } from './runs.js';
import { type DistRunSpec, Store } from './store.js';

const HOSTS = ['h1', 'h2'];
const MD5 = 'a'.repeat(32);
const log = pino({ level: 'silent' });

class FakeCourier implements Courier {
  readonly sent: Task[] = [];
  offline = new Set<string>();
  send(_agent: string, m: { type: string; task?: Task }): boolean {
    if (m.type === 'task' && m.task) this.sent.push(m.task);
    return true;
  }
  status(agent: string): AgentStatus {
    return this.offline.has(agent) ? 'offline' : 'online';
  }
  lastSeen(): number {
    return 0;
  }
  ids(): string[] {
    return this.sent.map((t) => t.id);
  }
}

const spec: DistRunSpec = {
  kind: 'dist',
  targets: ['all'],
  path: '/src/app.bin',
  dest: '/srv/app.bin',
  blob: 'b'.repeat(64),
  size: 3,
  chunkSize: 65536,
  stripes: 1,
  timeoutMs: 60_000,
  concurrency: 2,
  activate: 'together',
};

const plan = (host: string): DistSpec => ({
  blob: 'b'.repeat(64),
  manifest: { version: 1, size: 3, chunkSize: 65536, chunks: ['c'.repeat(64)], md5: MD5 },
  dest: `/srv/${host}/app.bin`,
  parents: [{ name: 'canopy-source', address: '127.0.0.1:1' }],
  fallbacks: [],
  serveForMs: 1,
  stallMs: 100,
  activate: 'together',
});

function answer(
  taskId: string,
  state: TaskResult['state'],
  file: FileOutcome['state'],
  error?: string,
): TaskResult {
  return {
    taskId,
    runId: taskId.split(':')[0] ?? '',
    state,
    ...NO_OUTPUT,
    startedAt: 1,
    endedAt: 2,
    durationMs: 1,
    ...(error ? { error } : {}),
    files: [{ dest: '/srv/app.bin', state: file, oldMd5: null, newMd5: MD5, content: false }],
    transfer: { fetchedBytes: 3, reusedChunks: 0, fromPeers: { 'canopy-source': 3 }, badPeers: [] },
  };
}

async function world(t: TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'canopy-runs-'));
  const store = new Store(join(dir, 'db'));
  await store.open();
  const managers: RunManager[] = [];
  t.after(async () => {
    for (const m of managers) m.stop();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const manager = (courier: FakeCourier, now?: () => number) => {
    const m = new RunManager({ store, courier, logger: log, ...(now ? { now } : {}) });
    managers.push(m);
    return m;
  };
  return { store, manager };
}

test('a stage answer is held until every host staged; then verify, then activate; re-sent answers change nothing', async (t) => {
  const w = await world(t);
  const courier = new FakeCourier();
  const runs = w.manager(courier);
  const record = await runs.create(spec, HOSTS, { plans: new Map(HOSTS.map((h) => [h, plan(h)])) });
  const id = record.id;
  assert.deepEqual(courier.ids(), [`${id}:h1`, `${id}:h2`]);
  assert.equal(await runs.onResult('h1', answer(`${id}:h1`, 'ok', 'staged')), true);
  assert.equal(await runs.onResult('h1', answer(`${id}:h1`, 'ok', 'staged')), true);
  let got = await runs.get(id);
  assert.equal(got?.results.length, 0, 'a staged host has no final result yet');
  assert.equal(got?.summary.counts.staged, 1);
  assert.equal(courier.sent.length, 2, 'nothing goes out while h2 has not staged');
  assert.equal(runs.activationOf(id)?.step, 'stage');

  await runs.onResult('h2', answer(`${id}:h2`, 'ok', 'staged'));
  assert.deepEqual(courier.ids().slice(2), [`${id}:h1:verify`, `${id}:h2:verify`]);
  const verify = courier.sent[2];
  assert.equal(verify?.kind, 'activation');
  assert.deepEqual(verify?.kind === 'activation' && verify.spec, {
    step: 'verify',
    blob: 'b'.repeat(64),
    dest: '/srv/h1/app.bin',
    size: 3,
    md5: MD5,
  });
  // A stage answer re-sent now (the agent reconnected) is acked and ignored; so is its ack.
  assert.equal(await runs.onResult('h2', answer(`${id}:h2`, 'ok', 'staged')), true);
  runs.onAck('h2', `${id}:h2`);
  assert.equal((await runs.get(id))?.summary.counts.running, undefined);
  assert.equal(courier.sent.length, 4);

  await runs.onResult('h1', answer(`${id}:h1:verify`, 'ok', 'staged'));
  await runs.onResult('h2', answer(`${id}:h2:verify`, 'ok', 'staged'));
  assert.deepEqual(courier.ids().slice(4), [`${id}:h1:activate`, `${id}:h2:activate`]);
  await runs.onResult('h1', answer(`${id}:h1:activate`, 'ok', 'changed'));
  await runs.onResult('h1', answer(`${id}:h1:activate`, 'ok', 'changed'));
  await runs.onResult('h2', answer(`${id}:h2:activate`, 'ok', 'changed'));
  got = await runs.get(id);
  assert.equal(got?.summary.finished, true);
  assert.deepEqual(
    got?.results.map((r) => [r.host, r.state, r.files?.[0]?.state, r.transfer?.fetchedBytes]),
    [
      ['h1', 'ok', 'changed', 3],
      ['h2', 'ok', 'changed', 3],
    ],
  );
  assert.equal(courier.sent.length, 6);
  assert.deepEqual(await w.store.values(w.store.interim), [], 'interim records are dropped at the end');
});

test('a host that cannot stage: every other host discards, and the one that lacks the file is named', async (t) => {
  const w = await world(t);
  const courier = new FakeCourier();
  const runs = w.manager(courier);
  const { id } = await runs.create(spec, HOSTS, { plans: new Map(HOSTS.map((h) => [h, plan(h)])) });
  await runs.onResult(
    'h2',
    answer(`${id}:h2`, 'failed', 'failed', 'TRANSFER_QUOTA: the chunk store is full'),
  );
  assert.equal(courier.sent.length, 2, 'h1 has not staged yet: no step goes out');
  await runs.onResult('h1', answer(`${id}:h1`, 'ok', 'staged'));
  assert.deepEqual(courier.ids().slice(2), [`${id}:h1:discard`]);
  assert.deepEqual(runs.activationOf(id)?.lacking, [
    { host: 'h2', why: 'TRANSFER_QUOTA: the chunk store is full' },
  ]);
  await runs.onResult('h1', answer(`${id}:h1:discard`, 'ok', 'discarded'));
  const got = await runs.get(id);
  assert.equal(got?.summary.finished, true);
  const h1 = got?.results.find((r) => r.host === 'h1');
  assert.equal(h1?.state, 'failed');
  assert.equal(h1?.files?.[0]?.state, 'discarded');
  assert.match(h1?.error ?? '', /not activated: 1 host\(s\) lack the file \(h2: TRANSFER_QUOTA/);
});

test('a coordinator restarted between steps resumes the current step from the store', async (t) => {
  const w = await world(t);
  const first = new FakeCourier();
  const runs = w.manager(first);
  const { id } = await runs.create(spec, HOSTS, { plans: new Map(HOSTS.map((h) => [h, plan(h)])) });
  await runs.onResult('h1', answer(`${id}:h1`, 'ok', 'staged'));
  await runs.onResult('h2', answer(`${id}:h2`, 'ok', 'unchanged'));
  assert.deepEqual(first.ids().slice(2), [`${id}:h1:verify`], 'h2 already holds the file: no step for it');
  runs.stop();

  const second = new FakeCourier();
  const again = w.manager(second);
  await again.load();
  assert.deepEqual(
    again.queuedFor('h1').map((task) => task.id),
    [`${id}:h1:verify`],
  );
  assert.deepEqual(again.queuedFor('h2'), []);
  await again.onResult('h1', answer(`${id}:h1:verify`, 'ok', 'staged'));
  assert.deepEqual(second.ids(), [`${id}:h1:activate`]);
  await again.onResult('h1', answer(`${id}:h1:activate`, 'ok', 'changed'));
  const got = await again.get(id);
  assert.equal(got?.summary.finished, true);
  assert.deepEqual(got?.results.map((r) => [r.host, r.state, r.files?.[0]?.state]).sort(), [
    ['h1', 'ok', 'changed'],
    ['h2', 'ok', 'unchanged'],
  ]);
});

test('the stage deadline passing (seen by a restarted coordinator) makes silent hosts lack the file: discard', async (t) => {
  const w = await world(t);
  let clock = 1_000_000;
  const now = () => clock;
  const runs = w.manager(new FakeCourier(), now);
  const { id, stageDeadline, deadline } = await runs.create(spec, HOSTS, {
    plans: new Map(HOSTS.map((h) => [h, plan(h)])),
  });
  assert.ok(stageDeadline !== undefined && stageDeadline < deadline, 'later steps have time after the stage');
  await runs.onResult('h1', answer(`${id}:h1`, 'ok', 'staged'));
  runs.stop();
  clock = (stageDeadline ?? 0) + 1;
  const courier = new FakeCourier();
  const again = w.manager(courier, now);
  await again.load();
  // The deadline timer fires at once (its wait is 0). Wait for the discard task to go out, not only
  // for the step: the step is set before the two commits that precede the send (waiting for the
  // step alone made this test fail on a loaded machine).
  const view = await (async () => {
    for (let i = 0; i < 100; i++) {
      const v = again.activationOf(id);
      if (v?.step === 'discard' && courier.sent.length > 0) return v;
      await new Promise((r) => setTimeout(r, 10));
    }
    return again.activationOf(id);
  })();
  assert.equal(view?.step, 'discard');
  assert.match(view?.lacking[0]?.why ?? '', /^no answer by the deadline of the stage step/);
  assert.deepEqual(courier.ids(), [`${id}:h1:discard`]);
});

test('a deadline further away than a timer holds (7 d x 8 waves) does not fire at once; the run waits', async (t) => {
  const w = await world(t);
  const courier = new FakeCourier();
  const runs = w.manager(courier);
  const hosts = ['h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'h7', 'h8'];
  const week = 7 * 24 * 3600 * 1000;
  const record = await runs.create(
    { targets: ['all'], command: 'true', timeoutMs: week, concurrency: 1 },
    hosts,
  );
  assert.ok(record.deadline - Date.now() > 2 ** 31, 'the deadline is not beyond a timer');
  await new Promise((r) => setTimeout(r, 100));
  const got = await runs.get(record.id);
  assert.equal(got?.summary.finished, false, 'the run ended at once');
  assert.equal(got?.results.length, 0, `hosts were given up: ${JSON.stringify(got?.results)}`);
  assert.deepEqual(courier.ids(), [`${record.id}:h1`], 'one wave at a time');
});
