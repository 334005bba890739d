// The control plane end to end, with real processes on loopback: a
// coordinator, agents that join with tokens, runs through the CLI and the
// API's event stream, and the faults the issue names — kill -9 of the
// coordinator and of an agent mid-task, a dropped and a black-holed
// connection — each proven to run every command at most once.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  apiOf,
  cli,
  fileText,
  type RunJson,
  readJsonLines,
  startFleet,
  type TestFleet,
  waitFor,
} from './helpers/fleet.js';
import { tempTree } from './helpers/tree.js';

function byHost(r: RunJson): Record<string, RunJson['results'][number]> {
  return Object.fromEntries(r.results.map((x) => [x.host, x]));
}

/** Reads a run's server-sent events to the end. */
async function sse(fleet: TestFleet, runId: string): Promise<{ event: string; data: string; id?: string }[]> {
  const { text } = await apiOf(fleet)('GET', `/v1/runs/${runId}/events`);
  return text
    .split('\n\n')
    .filter((b) => b.trim() && !b.startsWith(':'))
    .map((b) => {
      const f = Object.fromEntries(
        b.split('\n').map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2)]),
      );
      return { event: f.event ?? '', data: f.data ?? '', ...(f.id ? { id: f.id } : {}) };
    });
}

const INVENTORY = `
groups:
  web: {kind: set, match: {role: web}}
hosts:
  web-01: {address: 127.0.0.11, labels: {role: web, idc: bj}}
  web-02: {address: 127.0.0.12, labels: {role: web, idc: sh}}
  db-01: {address: 127.0.0.13, labels: {role: db, idc: bj}}
`;

test('join, heartbeat facts, a run on several agents, grouped output and the SSE stream', async (t) => {
  const inv = tempTree(t, { 'inventory.yaml': INVENTORY });
  const fleet = await startFleet(t, { inventory: join(inv, 'inventory.yaml') });
  await Promise.all([
    fleet.addAgent('web-01', { bind: '127.0.0.11', labels: { rack: 'r1' } }),
    fleet.addAgent('web-02', { bind: '127.0.0.12' }),
  ]);

  const { agents } = await fleet.cliJson<{
    agents: {
      name: string;
      online: boolean;
      connectedFrom: string;
      facts: { hostname: string; labels: Record<string, string> };
    }[];
  }>(['agents']);
  const web01 = agents.find((a) => a.name === 'web-01');
  assert.equal(web01?.online, true);
  assert.equal(
    web01?.connectedFrom.replace('::ffff:', ''),
    '127.0.0.11',
    'the agent dials from its --bind address',
  );
  assert.deepEqual(web01?.facts.labels, { rack: 'r1' });
  assert.ok(web01?.facts.hostname);

  // ?HOST is each host's own name; stdout and stderr both come back.
  const r = await fleet.cli(['run', 'web-01', 'web-02', '--json', '--', 'echo "I am ?HOST"; echo warn >&2']);
  assert.equal(r.code, 0, r.stderr);
  const run = JSON.parse(r.stdout) as RunJson;
  assert.equal(byHost(run)['web-01']?.stdout, 'I am web-01\n');
  assert.equal(byHost(run)['web-02']?.stdout, 'I am web-02\n');
  assert.equal(byHost(run)['web-02']?.stderr, 'warn\n');
  assert.deepEqual(run.summary.counts, { ok: 2 });

  // The event stream replays one result per host, then `done`.
  const events = await sse(fleet, run.run);
  assert.deepEqual(
    events.map((e) => e.event),
    ['result', 'result', 'done'],
  );
  assert.deepEqual(events.map((e) => e.id).slice(0, 2), ['1', '2']);

  // A group target with a host that has no agent: grouped output, tally, exit 1.
  const text = await fleet.cli(['run', 'role=web', 'db-01', '--', 'echo same']);
  assert.equal(text.code, 1);
  assert.match(text.stdout, /^web-\[01-02\] \(2\): ok\n {4}same$/m);
  assert.match(text.stdout, /^2 ok, 1 unreachable, 3 total$/m);
  assert.match(text.stdout, /^unreachable: db-01$/m);

  // Exit code and signal are reported; a timeout kills the process group.
  const mixed = await fleet.cli([
    'run',
    'web-01',
    'web-02',
    '--json',
    '--timeout',
    '1s',
    '--kill-grace',
    '200ms',
    '--',
    'case ?HOST in web-01) exit 3;; *) sleep 30;; esac',
  ]);
  assert.equal(mixed.code, 1);
  const m = byHost(JSON.parse(mixed.stdout) as RunJson);
  assert.equal(m['web-01']?.state, 'failed');
  assert.equal(m['web-01']?.exitCode, 3);
  assert.equal(m['web-02']?.state, 'timeout');

  // Output over the cap is cut and marked.
  const big = await fleet.cli([
    'run',
    'web-01',
    '--json',
    '--max-output',
    '100',
    '--',
    'head -c 5000 /dev/zero | tr "\\0" x',
  ]);
  const b = (JSON.parse(big.stdout) as { results: { stdout: string; stdoutTruncated: boolean }[] })
    .results[0];
  assert.equal(b?.stdout.length, 100);
  assert.equal(b?.stdoutTruncated, true);

  // Binary output escapes to ~6 bytes a byte of JSON: 4 MiB of it is more than a control message
  // carries. The agent cuts the result to fit, marked, so the coordinator takes it. (A generous timeout:
  // on a loaded machine this takes a while, and a timeout is not what is tested.)
  const binary = await fleet.cli([
    ...['run', 'web-01', '--json', '--timeout', '3m', '--max-output', '4M'],
    ...['--', 'head -c 5000000 /dev/zero'],
  ]);
  assert.equal(binary.code, 0, `${binary.stderr}\n${binary.stdout.slice(0, 2000)}`);
  const bin = (
    JSON.parse(binary.stdout) as { results: { state: string; stdout: string; stdoutTruncated: boolean }[] }
  ).results[0];
  assert.equal(bin?.state, 'ok');
  assert.equal(bin?.stdoutTruncated, true);
  assert.ok((bin?.stdout.length ?? 0) > 1_000_000, `only ${bin?.stdout.length} characters kept`);
  // Never sent whole: no close for a message too big (1009), no payload refusal on the coordinator.
  // (A reconnect after a missed heartbeat may happen on a loaded machine: the test fleet's
  // heartbeat is short, and 15 MB of JSON takes the coordinator a while.)
  assert.doesNotMatch(fleet.agents.get('web-01')?.log() ?? '', /"code":1009/);
  assert.doesNotMatch(fleet.coordinator.log(), /Max payload size exceeded/);
  const tooMuch = await fleet.cli(['run', 'web-01', '--max-output', '9M', '--', 'true']);
  assert.equal(tooMuch.code, 2);
  assert.match(tooMuch.stderr, /--max-output 9M is more than 8M/);

  // Metrics count what happened.
  const metrics = (await apiOf(fleet)('GET', '/metrics')).text;
  assert.match(metrics, /^canopy_agents_connected 2$/m);
  assert.match(metrics, /^canopy_host_results_total\{state="ok",late="false"\} \d+$/m);
});

test('kill -9 of the coordinator mid-run: it restarts, the run completes, each command ran once', async (t) => {
  const fleet = await startFleet(t);
  const names = ['h1', 'h2'];
  const agents = await Promise.all(names.map((n) => fleet.addAgent(n)));
  const side = (i: number) => join(agents[i]?.dataDir ?? '', 'root', 'side');
  const running = cli(
    ['run', ...names, '--json', '--timeout', '30s', '--', 'echo start >> side; sleep 2; echo done >> side'],
    fleet.env,
  );
  await waitFor('both commands to start', () => names.every((_, i) => fileText(side(i)).includes('start')));
  await fleet.coordinator.kill('SIGKILL');
  await new Promise((r) => setTimeout(r, 500));
  fleet.coordinator.restart();
  const r = await running;
  assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
  const run = JSON.parse(r.stdout) as RunJson;
  assert.deepEqual(run.summary.counts, { ok: 2 });
  for (const i of [0, 1])
    assert.equal(fileText(side(i)), 'start\ndone\n', `host ${names[i]} ran its command exactly once`);
  assert.match(fleet.coordinator.log(), /resuming run/);
});

test('kill -9 of an agent mid-task: on restart the task is reported interrupted and not run again', async (t) => {
  const fleet = await startFleet(t);
  const agent = await fleet.addAgent('h1');
  const side = join(agent.dataDir, 'root', 'side');
  const running = cli(
    ['run', 'h1', '--json', '--timeout', '30s', '--', 'echo start >> side; sleep 1; echo done >> side'],
    fleet.env,
  );
  await waitFor('the command to start', () => fileText(side).includes('start'));
  await agent.kill('SIGKILL');
  agent.restart();
  const r = await running;
  assert.equal(r.code, 1);
  const result = (JSON.parse(r.stdout) as RunJson).results[0];
  assert.equal(result?.state, 'interrupted');
  assert.match(result?.error ?? '', /not run again/);
  // The orphaned command finishes on its own; the agent never started it a second time.
  await waitFor('the orphan to finish', () => fileText(side).includes('done'), 10_000);
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(fileText(side), 'start\ndone\n');
  // And a new run on the restarted agent works.
  const again = await fleet.cli(['run', 'h1', '--', 'true']);
  assert.equal(again.code, 0, again.stdout + again.stderr);
});

/** A TCP relay between an agent and the coordinator that a test can cut or black-hole. */
class Relay {
  private readonly server: Server;
  private readonly pairs = new Set<[Socket, Socket]>();
  mode: 'forward' | 'blackhole' | 'down' = 'forward';
  port = 0;

  constructor(targetPort: number) {
    this.server = createServer((client) => {
      if (this.mode === 'down') {
        client.destroy();
        return;
      }
      const upstream = tcpConnect(targetPort, '127.0.0.1');
      const pair: [Socket, Socket] = [client, upstream];
      this.pairs.add(pair);
      const relay = (from: Socket, to: Socket) =>
        from.on('data', (d) => {
          if (this.mode === 'forward') to.write(d);
        });
      relay(client, upstream);
      relay(upstream, client);
      const end = () => {
        client.destroy();
        upstream.destroy();
        this.pairs.delete(pair);
      };
      client.on('close', end).on('error', end);
      upstream.on('close', end).on('error', end);
    });
  }

  listen(): Promise<void> {
    return new Promise((resolve) =>
      this.server.listen(0, '127.0.0.1', () => {
        const a = this.server.address();
        this.port = typeof a === 'object' && a ? a.port : 0;
        resolve();
      }),
    );
  }

  cut(): void {
    for (const [a, b] of this.pairs) {
      a.destroy();
      b.destroy();
    }
    this.pairs.clear();
  }

  close(): void {
    this.cut();
    this.server.close();
  }
}

test('a dropped connection: the result made while disconnected is kept and delivered after reconnecting', async (t) => {
  const fleet = await startFleet(t);
  const relay = new Relay(Number(new URL(fleet.url).port));
  await relay.listen();
  t.after(() => relay.close());
  const agent = await fleet.addAgent('h1', { extra: ['--coordinator', `https://127.0.0.1:${relay.port}`] });
  const side = join(agent.dataDir, 'root', 'side');
  const running = cli(
    ['run', 'h1', '--json', '--timeout', '30s', '--', 'echo start >> side; sleep 1; echo done >> side'],
    fleet.env,
  );
  await waitFor('the command to start', () => fileText(side).includes('start'));
  relay.mode = 'down';
  relay.cut();
  await waitFor('the command to finish while cut off', () => fileText(side).includes('done'));
  await new Promise((r) => setTimeout(r, 1000));
  relay.mode = 'forward';
  const r = await running;
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.equal((JSON.parse(r.stdout) as RunJson).results[0]?.state, 'ok');
  assert.equal(fileText(side), 'start\ndone\n');
  assert.match(agent.log(), /lost the connection to the coordinator/);
});

test('a push lost in a black-holed connection is delivered from the queue after the agent reconnects', async (t) => {
  const fleet = await startFleet(t);
  const relay = new Relay(Number(new URL(fleet.url).port));
  await relay.listen();
  t.after(() => relay.close());
  // A 2 s heartbeat: the coordinator must still count h1 online (3 beats) when the run is created.
  const agent = await fleet.addAgent('h1', {
    heartbeat: '2s',
    extra: ['--coordinator', `https://127.0.0.1:${relay.port}`],
  });
  const side = join(agent.dataDir, 'root', 'side');
  // Bytes vanish both ways, but the sockets stay open: the coordinator still thinks h1 is online.
  relay.mode = 'blackhole';
  const running = cli(['run', 'h1', '--json', '--timeout', '30s', '--', 'echo ran >> side'], fleet.env);
  await new Promise((r) => setTimeout(r, 700));
  assert.equal(fileText(side), '', 'the push went into the black hole');
  relay.cut();
  relay.mode = 'forward';
  const r = await running;
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.equal(fileText(side), 'ran\n');
});

test('certificates are renewed before they expire, and the renewed one is used after a restart', async (t) => {
  const fleet = await startFleet(t, { extra: ['--cert-ttl', '6s'] });
  const agent = await fleet.addAgent('h1');
  const identity = () =>
    JSON.parse(readFileSync(join(agent.dataDir, 'identity.json'), 'utf8')) as { certPem: string };
  const first = identity().certPem;
  await waitFor('a renewal', () => /agent certificate renewed/.test(agent.log()), 15_000);
  assert.notEqual(identity().certPem, first);
  // Past the first certificate's expiry, a fresh start connects with the renewed one.
  await new Promise((r) => setTimeout(r, 3000));
  await agent.kill();
  agent.restart();
  await waitFor(
    'h1 to run a command',
    async () => (await fleet.cli(['run', 'h1', '--', 'true'])).code === 0,
    20_000,
  );
  assert.ok(readJsonLines(fleet.coordinator.log()).some((l) => l.msg === 'agent certificate renewed'));
});

test('the inventory reloads on change; a broken edit keeps the last good one and logs file and line', async (t) => {
  const inv = tempTree(t, { 'inventory.yaml': INVENTORY });
  const path = join(inv, 'inventory.yaml');
  const fleet = await startFleet(t, { inventory: path });
  writeFileSync(path, `${INVENTORY}  new-01: {address: 127.0.0.20\n`);
  const failed = await waitFor('the reload error', () =>
    readJsonLines(fleet.coordinator.log()).find((l) => String(l.msg).startsWith('inventory reload failed')),
  );
  assert.equal(failed.file, path);
  assert.equal(typeof failed.line, 'number');
  // The last good inventory still answers.
  const still = await fleet.cli(['run', 'db-01', '--json', '--', 'true']);
  assert.equal((JSON.parse(still.stdout) as RunJson).results[0]?.state, 'unreachable');
  const unknown = await fleet.cli(['run', 'new-01', '--', 'true']);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /"new-01" is not a host/);

  writeFileSync(path, `${INVENTORY}  new-01: {address: 127.0.0.20}\n`);
  await waitFor('the reload', () => /inventory reloaded/.test(fleet.coordinator.log()));
  const now = await fleet.cli(['run', 'new-01', '--json', '--', 'true']);
  assert.equal((JSON.parse(now.stdout) as RunJson).results[0]?.host, 'new-01');
});
