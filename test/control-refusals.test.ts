// What the control plane refuses, with real processes on loopback: API calls
// without the admin token, agent connections with certificates the
// coordinator did not issue (or revoked), join tokens that are used, expired,
// for another name or pinned to another CA, tasks outside an agent's
// allowlists, shell injection through arguments and variables, malformed API
// bodies and invalid protocol messages. Each refusal is checked for its HTTP
// status or error code and for the coordinator (or agent) log line that names
// who was refused and why; the coordinator keeps running through all of it.
import assert from 'node:assert/strict';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, type TestContext, test } from 'node:test';
import WebSocket from 'ws';
import { COORDINATOR_SAN, checkSan, createCa, createKeyAndCsr, signCsr } from '../src/pki/index.js';
import {
  type CliRun,
  cli,
  clientConfig,
  type RunJson,
  readJsonLines,
  startFleet,
  type TestAgent,
  type TestFleet,
  waitFor,
} from './helpers/fleet.js';

type Json = Record<string, unknown>;

interface AgentRow {
  name: string;
  online: boolean;
  revoked: boolean;
}

const INVENTORY = `
hosts:
  gone-01: {address: 127.0.0.1}
`;

/** A TestContext for a suite-level fleet: its cleanups run in the suite's `after`. */
function suiteContext(): { t: TestContext; cleanup: () => Promise<void> } {
  const fns: (() => unknown)[] = [];
  const t = { after: (fn: () => unknown) => fns.push(fn) } as unknown as TestContext;
  return {
    t,
    cleanup: async () => {
      for (const fn of fns.reverse()) await fn();
    },
  };
}

interface Reply {
  status: number;
  body: Json;
  text: string;
}

/** An HTTPS request to the API; `token: null` sends no Authorization header. */
function api(
  fleet: TestFleet,
  method: string,
  path: string,
  opts: { token?: string | null; body?: string; contentType?: string } = {},
): Promise<Reply> {
  const c = clientConfig(fleet);
  const token = opts.token === undefined ? c.token : opts.token;
  const headers: Record<string, string> = {};
  if (token !== null) headers.authorization = `Bearer ${token}`;
  if (opts.body !== undefined) {
    headers['content-type'] = opts.contentType ?? 'application/json';
    headers['content-length'] = String(Buffer.byteLength(opts.body));
  }
  return new Promise((resolve, reject) => {
    const req = request(
      `${c.url}${path}`,
      { method, headers, ca: c.ca, checkServerIdentity: checkSan(COORDINATOR_SAN) },
      (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (d: string) => {
          text += d;
        });
        res.on('end', () => {
          let body: Json = {};
          try {
            body = JSON.parse(text) as Json;
          } catch {
            // not JSON (metrics)
          }
          resolve({ status: res.statusCode ?? 0, body, text });
        });
      },
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** Waits for a coordinator (or agent) log line that matches. */
function logLine(proc: { log(): string }, what: string, match: (l: Json) => boolean): Promise<Json> {
  return waitFor(what, () => readJsonLines(proc.log()).find(match), 10_000);
}

const msgStarts = (prefix: string) => (l: Json) => String(l.msg ?? '').startsWith(prefix);
const plainIp = (ip: unknown) => String(ip).replace(/^::ffff:/, '');

type Opened =
  | { kind: 'open'; ws: WebSocket; messages: Json[] }
  | { kind: 'refused'; status: number; body: Json };

/** Opens the agents' WebSocket with the given client certificate (or none), trusting the real CA. */
function agentSocket(fleet: TestFleet, cred: { cert?: string; key?: string }): Promise<Opened> {
  const c = clientConfig(fleet);
  const ws = new WebSocket(`${c.url.replace(/^https:/, 'wss:')}/v1/agent`, {
    ca: c.ca,
    ...(cred.cert ? { cert: cred.cert, key: cred.key } : {}),
    minVersion: 'TLSv1.3',
    checkServerIdentity: checkSan(COORDINATOR_SAN),
    handshakeTimeout: 10_000,
  } as unknown as WebSocket.ClientOptions);
  const messages: Json[] = [];
  return new Promise((resolve, reject) => {
    ws.on('unexpected-response', (req, res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (d: string) => {
        text += d;
      });
      res.on('end', () => {
        req.destroy();
        let body: Json = {};
        try {
          body = JSON.parse(text) as Json;
        } catch {
          body = { text };
        }
        resolve({ kind: 'refused', status: res.statusCode ?? 0, body });
      });
    });
    ws.on('open', () => resolve({ kind: 'open', ws, messages }));
    ws.on('message', (data) => messages.push(JSON.parse(data.toString()) as Json));
    ws.on('error', reject);
  });
}

/** The refused upgrade's status and body; fails (and closes the socket) if the upgrade was accepted. */
function refusal(o: Opened): { status: number; body: Json } {
  if (o.kind !== 'refused') {
    o.ws.terminate();
    assert.fail('the coordinator accepted the connection');
  }
  return o;
}

/** The join token an agent of the helper was started with (its first process's --join argument). */
function tokenOf(agent: TestAgent): string {
  const args = agent.child.spawnargs;
  const token = args[args.indexOf('--join') + 1] ?? '';
  assert.ok(token.startsWith('canopy-join-v1.'), `agent ${agent.name} was started with a join token`);
  return token;
}

function editToken(token: string, edit: (o: Json) => void): string {
  const prefix = 'canopy-join-v1.';
  const o = JSON.parse(Buffer.from(token.slice(prefix.length), 'base64url').toString('utf8')) as Json;
  edit(o);
  return prefix + Buffer.from(JSON.stringify(o)).toString('base64url');
}

describe('control-plane refusals', () => {
  const ctx = suiteContext();
  let fleet: TestFleet;
  let web01: TestAgent;
  let probe: TestAgent;
  let gone: TestAgent;
  let scratch: string;

  before(async () => {
    scratch = mkdtempSync(join(tmpdir(), 'canopy-refusals-'));
    ctx.t.after(() => rmSync(scratch, { recursive: true, force: true }));
    writeFileSync(join(scratch, 'inventory.yaml'), INVENTORY);
    fleet = await startFleet(ctx.t, { inventory: join(scratch, 'inventory.yaml') });
    [web01, probe, gone] = (await Promise.all([
      fleet.addAgent('web-01'),
      fleet.addAgent('probe-01'),
      fleet.addAgent('gone-01'),
    ])) as [TestAgent, TestAgent, TestAgent];
  });

  after(() => ctx.cleanup());

  test('the API refuses requests without the admin token, logs who and why; /healthz is open', async () => {
    const none = await api(fleet, 'GET', '/v1/agents', { token: null });
    assert.equal(none.status, 401);
    await assert.equal(none.body.code, 'API_UNAUTHORIZED');
    assert.match(String(none.body.message), /no bearer token/);

    const admin = clientConfig(fleet).token;
    const sameLength = `${admin.slice(0, -1)}${admin.endsWith('x') ? 'y' : 'x'}`;
    for (const token of ['wrong', sameLength]) {
      const wrong = await api(fleet, 'POST', '/v1/runs', {
        token,
        body: JSON.stringify({ targets: ['web-01'], command: 'touch PWNED' }),
      });
      assert.equal(wrong.status, 401, `token ${token}`);
      assert.equal(wrong.body.code, 'API_UNAUTHORIZED');
      assert.match(String(wrong.body.message), /wrong bearer token/);
    }
    assert.equal(existsSync(join(web01.dataDir, 'root', 'PWNED')), false, 'nothing ran');
    const metrics = await api(fleet, 'GET', '/metrics', { token: null });
    assert.equal(metrics.status, 401, 'metrics need the token too');

    const noTokenLine = await logLine(
      fleet.coordinator,
      'the no-token refusal in the log',
      (l) => l.msg === 'refused API request' && l.why === 'no bearer token' && l.url === '/v1/agents',
    );
    assert.equal(plainIp(noTokenLine.ip), '127.0.0.1');
    assert.equal(noTokenLine.method, 'GET');
    const wrongLine = await logLine(
      fleet.coordinator,
      'the wrong-token refusal in the log',
      (l) => l.msg === 'refused API request' && l.why === 'wrong bearer token' && l.url === '/v1/runs',
    );
    assert.equal(plainIp(wrongLine.ip), '127.0.0.1');
    assert.equal(wrongLine.method, 'POST');
    assert.ok(!fleet.coordinator.log().includes(admin), 'the admin token never appears in the log');

    const health = await api(fleet, 'GET', '/healthz', { token: null });
    assert.equal(health.status, 200);
    assert.equal(health.body.ok, true);

    // The CLI with a wrong token: non-zero exit and a message saying why.
    const cli = await fleet.cli(['agents', '--token', 'canopy-admin-wrong']);
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr, /canopy: error: wrong bearer token.*\[API_UNAUTHORIZED\]/);
    const cliJson = await fleet.cli([
      'run',
      'web-01',
      '--token',
      'canopy-admin-wrong',
      '--json',
      '--',
      'true',
    ]);
    assert.notEqual(cliJson.code, 0);
    assert.equal((JSON.parse(cliJson.stdout) as { error: Json }).error.code, 'API_UNAUTHORIZED');

    const counted = await api(fleet, 'GET', '/metrics');
    const n = /^canopy_refusals_total\{reason="API_UNAUTHORIZED"\} (\d+)$/m.exec(counted.text);
    assert.ok(n && Number(n[1]) >= 6, `refusals are counted:\n${counted.text}`);
  });

  test('the CLI names a CA that is not the coordinator\'s, a URL that is not https and a bad config, not "cannot reach"', async () => {
    const c = clientConfig(fleet);
    const evil = join(fleet.dir, 'evil-ca.crt');
    writeFileSync(evil, (await createCa({ commonName: 'canopy CA' })).certPem);
    const notPem = join(fleet.dir, 'not-a-cert.txt');
    writeFileSync(notPem, 'hello\n');
    const nullConfig = join(fleet.dir, 'null.json');
    writeFileSync(nullConfig, 'null\n');
    const agents = (...flags: string[]) => fleet.cli(['agents', '--token', c.token, ...flags]);

    const wrongCa = await agents('--coordinator', c.url, '--ca', evil);
    assert.equal(wrongCa.code, 2, wrongCa.stderr);
    assert.match(
      wrongCa.stderr,
      new RegExp(`answered, but not as the coordinator --ca ${evil} trusts: .*use that coordinator's CA`),
    );
    assert.doesNotMatch(wrongCa.stderr, /cannot reach/);

    const http = await agents('--coordinator', c.url.replace('https:', 'http:'), '--ca', evil);
    assert.equal(http.code, 2);
    assert.match(http.stderr, /--coordinator: "http:\/\/[^"]+" is not an https:\/\/ URL/);
    const bare = await agents('--coordinator', c.url.replace('https://', ''), '--ca', evil, '--json');
    assert.equal(bare.code, 2);
    assert.doesNotMatch(bare.stderr, /internal error/);
    assert.equal((JSON.parse(bare.stdout) as { error: { code: string } }).error.code, 'CLIENT_CONFIG');

    const garbage = await agents('--coordinator', c.url, '--ca', notPem);
    assert.match(garbage.stderr, new RegExp(`--ca ${notPem}: not a PEM certificate`));

    const nothing = await cli(['agents'], { CANOPY_CONFIG: nullConfig, HOME: fleet.dir });
    assert.equal(nothing.code, 2);
    assert.match(nothing.stderr, /client config .*null\.json is not a JSON object of url, token and ca/);
  });

  test('agent connections with certificates the coordinator did not issue are refused and logged', async () => {
    const coordDir = join(fleet.dir, 'coordinator');
    const realCa = {
      certPem: readFileSync(join(coordDir, 'ca.crt'), 'utf8'),
      keyPem: readFileSync(join(coordDir, 'ca.key'), 'utf8'),
    };
    const evilCa = await createCa({ commonName: 'canopy CA' });
    const mint = async (ca: typeof realCa, name: string) => {
      const { keyPem, csrPem } = await createKeyAndCsr(name);
      const { certPem } = await signCsr(ca, csrPem, { name, ttlMs: 3_600_000 });
      return { cert: certPem, key: keyPem };
    };

    // Another CA's certificate for a name that did join.
    const foreign = refusal(await agentSocket(fleet, await mint(evilCa, 'web-01')));
    assert.equal(foreign.status, 401);
    assert.equal(foreign.body.code, 'AGENT_CERT_REFUSED');
    const foreignLine = await logLine(
      fleet.coordinator,
      'the foreign-CA refusal',
      (l) =>
        msgStarts('refused agent connection')(l) && l.who === 'web-01' && l.code === 'AGENT_CERT_REFUSED',
    );
    assert.match(String(foreignLine.msg), /not issued by this coordinator's CA/);
    assert.equal(plainIp(foreignLine.ip), '127.0.0.1');

    // No client certificate at all.
    const bare = refusal(await agentSocket(fleet, {}));
    assert.equal(bare.status, 401);
    assert.equal(bare.body.code, 'AGENT_CERT_REFUSED');
    const bareLine = await logLine(fleet.coordinator, 'the no-certificate refusal', (l) =>
      msgStarts('refused agent connection: no client certificate')(l),
    );
    assert.equal(bareLine.who, null);
    assert.equal(bareLine.code, 'AGENT_CERT_REFUSED');

    // The right CA, but a certificate the coordinator never issued to web-01 (e.g. from a leaked CA key).
    const unissued = refusal(await agentSocket(fleet, await mint(realCa, 'web-01')));
    assert.equal(unissued.status, 403);
    assert.equal(unissued.body.code, 'AGENT_CERT_REFUSED');
    assert.match(String(unissued.body.message), /was not issued to "web-01"/);

    // The right CA, for a name that never joined.
    const stranger = refusal(await agentSocket(fleet, await mint(realCa, 'stranger-01')));
    assert.equal(stranger.status, 403);
    assert.equal(stranger.body.code, 'AGENT_UNKNOWN');
    await logLine(
      fleet.coordinator,
      'the unknown-agent refusal',
      (l) =>
        msgStarts('refused agent connection')(l) && l.who === 'stranger-01' && l.code === 'AGENT_UNKNOWN',
    );

    // None of it touched the real web-01's session.
    const { agents } = await fleet.cliJson<{ agents: AgentRow[] }>(['agents']);
    assert.equal(agents.find((a) => a.name === 'web-01')?.online, true);
    assert.ok(
      !readJsonLines(fleet.coordinator.log()).some(
        (l) => l.agent === 'web-01' && l.msg === 'agent reconnected; closing its previous session',
      ),
    );
  });

  test('join tokens: used, expired, for another name, pinned to another CA, forged, or a bad name', async () => {
    const dataDir = (n: string) => join(scratch, 'joins', n);
    const join_ = (token: string, name: string) =>
      cli(['agent', '--join', token, '--data', dataDir(name), '--name', name], fleet.env);

    const token = async (body: Json) => {
      const r = await api(fleet, 'POST', '/v1/tokens', { body: JSON.stringify(body) });
      assert.equal(r.status, 201, r.text);
      return { token: String(r.body.token), id: String(r.body.id) };
    };
    const [expiring, forWeb01, toPin, toForge, forBadName] = await Promise.all([
      cli(['token', 'create', '--ttl', '1s'], fleet.env),
      token({ name: 'web-01' }),
      token({}),
      token({}),
      token({}),
    ]);
    assert.equal(expiring.code, 0, expiring.stderr);
    const pinned = editToken(toPin.token, (o) => {
      o.f = '0'.repeat(64);
    });
    const forged = editToken(toForge.token, (o) => {
      o.s = 'not-the-secret';
    });
    await new Promise((r) => setTimeout(r, 1500));

    const [used, expired, mismatch, ca, bad, damaged, badName, apiBadName] = await Promise.all([
      join_(tokenOf(web01), 'x'),
      join_(expiring.stdout.trim(), 'late-01'),
      join_(forWeb01.token, 'web-02'),
      join_(pinned, 'pinned-01'),
      join_(forged, 'forged-01'),
      join_('canopy-join-v1.!!!', 'damaged-01'),
      join_(forBadName.token, 'a;b'),
      fleet.cli(['token', 'create', '--name', 'a;b']),
    ]);
    const check = (r: CliRun, code: number, re: RegExp) => {
      assert.equal(r.code, code, `${r.stdout}\n${r.stderr}`);
      assert.match(r.stderr, re);
    };
    check(used, 1, /TOKEN_USED.*already used by agent "web-01"/);
    check(expired, 1, /TOKEN_EXPIRED.*expired at/);
    check(mismatch, 1, /TOKEN_NAME_MISMATCH.*created for "web-01", not "web-02"/);
    check(ca, 1, /token pins 0{64}.*nothing was sent/);
    check(bad, 1, /TOKEN_INVALID/);
    check(damaged, 1, /join token is damaged/);
    check(badName, 2, /--name: "a;b" is not a valid host name/);
    for (const n of ['x', 'late-01', 'web-02', 'pinned-01', 'forged-01', 'damaged-01', 'a;b']) {
      assert.equal(existsSync(join(dataDir(n), 'identity.json')), false, `${n} has no identity`);
    }

    // The coordinator logs each refused join with the address and the code.
    for (const code of ['TOKEN_USED', 'TOKEN_EXPIRED', 'TOKEN_NAME_MISMATCH', 'TOKEN_INVALID']) {
      const line = await logLine(
        fleet.coordinator,
        `the ${code} refusal`,
        (l) => l.code === code && l.url === '/v1/join',
      );
      assert.equal(plainIp(line.ip), '127.0.0.1');
    }
    // A CA mismatch is caught by the agent before it sends anything: nothing joined, and the
    // coordinator never saw that token (it is logged only when created).
    const { agents } = await fleet.cliJson<{ agents: AgentRow[] }>(['agents']);
    assert.deepEqual(agents.map((a) => a.name).sort(), ['gone-01', 'probe-01', 'web-01']);
    const lines = readJsonLines(fleet.coordinator.log());
    const joined = lines.filter((l) => l.msg === 'agent joined').map((l) => String(l.agent));
    assert.deepEqual(joined.sort(), ['gone-01', 'probe-01', 'web-01']);
    assert.ok(!lines.some((l) => l.msg !== 'join token created' && JSON.stringify(l).includes(toPin.id)));

    // A name with shell metacharacters is refused by the API too.
    assert.equal(apiBadName.code, 2);
    assert.match(apiBadName.stderr, /field "name"/);
    const joinApi = await api(fleet, 'POST', '/v1/join', {
      token: null,
      body: JSON.stringify({ tokenId: 'x', secret: 'y', name: 'a;b', csr: 'z' }),
    });
    assert.equal(joinApi.status, 400);
    assert.equal(joinApi.body.code, 'API_BAD_REQUEST');
    assert.equal(joinApi.body.field, 'name');
  });

  test('a revoked agent is disconnected, its reconnects are refused, and runs find it unreachable', async () => {
    // A name that would be another route in a URL is refused by the CLI, naming it.
    for (const bad of ['..', 'a/b']) {
      const b = await fleet.cli(['agents', 'revoke', bad]);
      assert.equal(b.code, 2, b.stderr);
      assert.match(b.stderr, new RegExp(`revoke: "${bad.replace('.', '\\.')}.*" is not an agent name`));
    }
    const r = await fleet.cli(['agents', 'revoke', 'gone-01']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /revoked gone-01/);
    const revokedLine = await logLine(fleet.coordinator, 'the revocation', (l) => l.msg === 'agent revoked');
    assert.equal(revokedLine.agent, 'gone-01');
    assert.equal(plainIp(revokedLine.by), '127.0.0.1');

    const refused = await logLine(
      fleet.coordinator,
      'a refused reconnect',
      (l) => msgStarts('refused agent connection')(l) && l.who === 'gone-01' && l.code === 'AGENT_REVOKED',
    );
    assert.match(String(refused.msg), /agent "gone-01" is revoked/);
    assert.equal(plainIp(refused.ip), '127.0.0.1');
    await logLine(gone, 'the agent to lose its session', msgStarts('lost the connection to the coordinator'));
    const told = await logLine(gone, 'the agent to learn it is revoked', (l) => l.code === 'AGENT_REVOKED');
    assert.match(String(told.msg), /the coordinator refused this agent: .*re-join with a new token/);

    const { agents } = await fleet.cliJson<{ agents: AgentRow[] }>(['agents']);
    const row = agents.find((a) => a.name === 'gone-01');
    assert.equal(row?.revoked, true);
    assert.equal(row?.online, false);

    const run = await fleet.cli(['run', 'gone-01', '--json', '--timeout', '5s', '--', 'touch REVIVED']);
    assert.equal(run.code, 1, run.stderr);
    const result = (JSON.parse(run.stdout) as RunJson).results[0];
    assert.equal(result?.state, 'unreachable');
    assert.match(result?.error ?? '', /revoked/);
    assert.equal(existsSync(join(gone.dataDir, 'root', 'REVIVED')), false);
    // It stays refused: still not online after more reconnect attempts.
    await waitFor('another refused reconnect', () =>
      readJsonLines(fleet.coordinator.log()).filter((l) => l.who === 'gone-01' && l.code === 'AGENT_REVOKED')
        .length >= 2
        ? true
        : undefined,
    );
    const again = await fleet.cliJson<{ agents: AgentRow[] }>(['agents']);
    assert.equal(again.agents.find((a) => a.name === 'gone-01')?.online, false);
  });

  test("tasks outside an agent's roots or run-as allowlist are refused, and nothing runs", async () => {
    const root = join(web01.dataDir, 'root');
    mkdirSync(join(root, 'sub'), { recursive: true });
    symlinkSync('/etc', join(root, 'escape'));
    const marker = join(root, 'RAN');
    const run = (opts: string[]) =>
      fleet.cli(['run', 'web-01', '--json', ...opts, '--', `touch ${marker}; pwd`]);
    const [etc, symlinked, dotdot, account, fine] = await Promise.all([
      run(['--cwd', '/etc']),
      run(['--cwd', join(root, 'escape')]),
      run(['--cwd', `${root}/sub/../..`]),
      run(['--run-as', 'nobody']),
      fleet.cli(['run', 'web-01', '--json', '--cwd', join(root, 'sub'), '--', 'pwd']),
    ]);
    const result = (r: CliRun) => {
      assert.equal(r.code, 1, `${r.stdout}\n${r.stderr}`);
      const x = (JSON.parse(r.stdout) as RunJson).results[0];
      assert.equal(x?.state, 'refused');
      assert.equal(x?.exitCode, null);
      return x?.error ?? '';
    };
    assert.match(result(etc), /working directory "\/etc" is outside the allowed roots/);
    assert.match(result(symlinked), /resolves to "\/etc", which is outside the allowed roots/);
    assert.match(result(dotdot), /is outside the allowed roots/);
    assert.match(result(account), /run-as account "nobody" is not allowed/);
    assert.equal(existsSync(marker), false, 'no refused command ran');
    assert.equal(fine.code, 0, fine.stdout + fine.stderr);
    assert.equal(
      (JSON.parse(fine.stdout) as RunJson).results[0]?.stdout,
      `${realpathSync(join(root, 'sub'))}\n`,
    );

    // Text output: exit 1, the host listed as refused with the reason.
    const text = await fleet.cli(['run', 'web-01', '--cwd', '/etc', '--', 'pwd']);
    assert.equal(text.code, 1);
    assert.match(text.stdout, /^refused: web-01$/m);
    assert.match(text.stdout, /outside the allowed roots/);

    const lines = readJsonLines(web01.log()).filter((l) => l.msg === 'refused a task from the coordinator');
    assert.ok(lines.some((l) => /"\/etc"/.test(String(l.reason))));
    assert.ok(lines.some((l) => /"nobody"/.test(String(l.reason))));
  });

  test('arguments, variables and ?HOST do not inject shell commands', async () => {
    const root = join(web01.dataDir, 'root');
    const argv = await fleet.cli([
      'run',
      'web-01',
      '--json',
      '--',
      'printf',
      '%s|',
      'a;touch INJECTED',
      '$(touch INJECTED3)',
      '`touch INJECTED4`',
      '?HOST',
    ]);
    assert.equal(argv.code, 0, argv.stderr);
    assert.equal(
      (JSON.parse(argv.stdout) as RunJson).results[0]?.stdout,
      'a;touch INJECTED|$(touch INJECTED3)|`touch INJECTED4`|web-01|',
    );

    const env = await fleet.cli([
      'run',
      'web-01',
      '--json',
      '--env',
      'X=$(touch INJECTED2)',
      '--env',
      'Y=`touch INJECTED5`; touch INJECTED6',
      '--',
      'echo "$X"; echo "$Y"; echo ?HOST',
    ]);
    assert.equal(env.code, 0, env.stderr);
    assert.equal(
      (JSON.parse(env.stdout) as RunJson).results[0]?.stdout,
      '$(touch INJECTED2)\n`touch INJECTED5`; touch INJECTED6\nweb-01\n',
    );
    for (const f of ['INJECTED', 'INJECTED2', 'INJECTED3', 'INJECTED4', 'INJECTED5', 'INJECTED6']) {
      assert.equal(existsSync(join(root, f)), false, `${f} was not created`);
    }

    // An environment variable name cannot smuggle anything either.
    const badEnv = await fleet.cli(['run', 'web-01', '--json', '--env', 'A;touch INJECTED7=1', '--', 'true']);
    assert.notEqual(badEnv.code, 0, badEnv.stdout);
    assert.equal(existsSync(join(root, 'INJECTED7')), false);
  });

  test('an environment variable name that is not a variable name is a 400 naming env', async () => {
    const r = await api(fleet, 'POST', '/v1/runs', {
      body: JSON.stringify({ targets: ['web-01'], command: 'true', env: { 'A;touch INJECTED8': '1' } }),
    });
    assert.equal(r.status, 400, `the API accepted an invalid env name: ${r.text}`);
    assert.equal(r.body.code, 'API_BAD_REQUEST');
    assert.match(String(r.body.field), /^env\b/);
  });

  test('bad bodies to POST /v1/runs are 400s naming the field; the coordinator keeps running', async () => {
    const post = (body: string, contentType?: string) =>
      api(fleet, 'POST', '/v1/runs', { body, ...(contentType ? { contentType } : {}) });
    const malformed = await post('{"targets": ["web-01"], "command": ');
    assert.equal(malformed.status, 400);
    assert.equal(malformed.body.code, 'API_BAD_REQUEST');
    assert.equal(malformed.body.field, 'body');

    const empty = await post('');
    assert.equal(empty.status, 400);
    assert.equal(empty.body.code, 'API_BAD_REQUEST');
    assert.equal(empty.body.field, 'body');

    const notObject = await post('[1, 2]');
    assert.equal(notObject.status, 400);
    assert.equal(notObject.body.field, 'body');

    const text = await post('targets=all', 'text/plain');
    assert.equal(text.status, 400);
    assert.equal(text.body.code, 'API_BAD_REQUEST');
    assert.equal(text.body.field, 'body');
    const form = await post('targets=all', 'application/x-www-form-urlencoded');
    assert.equal(form.status, 415);
    assert.equal(form.body.code, 'API_BAD_REQUEST');
    assert.match(String(form.body.message), /application\/json/);

    const proto = await post('{"targets": ["web-01"], "command": "true", "__proto__": {"x": 1}}');
    assert.equal(proto.status, 400);
    assert.equal(proto.body.code, 'API_BAD_REQUEST');

    const bogus = await post(JSON.stringify({ targets: ['all'], command: 'true', bogus: 1 }));
    assert.equal(bogus.status, 400);
    assert.equal(bogus.body.code, 'API_BAD_REQUEST');
    assert.equal(bogus.body.field, 'bogus');
    assert.match(String(bogus.body.message), /unknown field "bogus"/);

    const unknown = await post(JSON.stringify({ targets: ['web-01', 'nosuch-99'], command: 'true' }));
    assert.equal(unknown.status, 400);
    assert.equal(unknown.body.code, 'RUN_UNKNOWN_TARGET');
    assert.equal(unknown.body.field, 'targets.1');
    assert.match(String(unknown.body.message), /"nosuch-99" is not a host/);
    const unknown0 = await post(JSON.stringify({ targets: ['nosuch-99'], command: 'true' }));
    assert.equal(unknown0.body.field, 'targets.0');

    for (const timeout of [0, -5]) {
      const r = await post(JSON.stringify({ targets: ['web-01'], command: 'true', timeout }));
      assert.equal(r.status, 400, `timeout ${timeout}`);
      assert.equal(r.body.code, 'API_BAD_REQUEST');
      assert.equal(r.body.field, 'timeout');
      assert.match(String(r.body.message), /field "timeout"/);
    }

    const noCommand = await post(JSON.stringify({ targets: ['web-01'] }));
    assert.equal(noCommand.status, 400);
    assert.equal(noCommand.body.field, 'command');
    assert.match(String(noCommand.body.message), /field "command"/);
    const emptyArgv = await post(JSON.stringify({ targets: ['web-01'], command: [] }));
    assert.equal(emptyArgv.status, 400);
    assert.equal(emptyArgv.body.field, 'command');

    const relativeCwd = await post(JSON.stringify({ targets: ['web-01'], command: 'true', cwd: 'etc' }));
    assert.equal(relativeCwd.status, 400);
    assert.equal(relativeCwd.body.field, 'cwd');

    const huge = await post(JSON.stringify({ targets: ['web-01'], command: 'x'.repeat(2 * 1024 * 1024) }));
    assert.equal(huge.status, 413);
    assert.equal(huge.body.code, 'API_BAD_REQUEST');
    assert.match(String(huge.body.message), /larger than 1 MiB/);
    // Refused before it is read, the body is still taken in whole, so the
    // client gets the answer rather than a reset mid-send.
    const hugeForm = await post('x'.repeat(2 * 1024 * 1024), 'application/x-www-form-urlencoded');
    assert.equal(hugeForm.status, 415);
    assert.equal(hugeForm.body.code, 'API_BAD_REQUEST');

    // Schema failures are logged with the client's address and the field.
    for (const field of ['bogus', 'timeout', 'command']) {
      const line = await logLine(
        fleet.coordinator,
        `the bad request naming ${field}`,
        (l) => msgStarts('bad request:')(l) && l.field === field,
      );
      assert.equal(plainIp(line.ip), '127.0.0.1');
    }

    const health = await api(fleet, 'GET', '/healthz', { token: null });
    assert.equal(health.status, 200);
    assert.equal(fleet.coordinator.child.exitCode, null);
    assert.equal(fleet.coordinator.child.signalCode, null);
    assert.ok(!readJsonLines(fleet.coordinator.log()).some((l) => l.msg === 'API handler failed'));
    // And it still runs commands.
    const ok = await fleet.cli(['run', 'web-01', '--', 'true']);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  });

  test('invalid protocol messages from an agent are refused and logged; the coordinator stays up', async () => {
    // The real probe-01 stops, so its reconnects do not take the session over from this test.
    await probe.kill('SIGTERM');
    await logLine(
      fleet.coordinator,
      'probe-01 to disconnect',
      (l) => l.msg === 'agent disconnected' && l.agent === 'probe-01',
    );
    const id = JSON.parse(readFileSync(join(probe.dataDir, 'identity.json'), 'utf8')) as {
      certPem: string;
      keyPem: string;
    };
    const opened = await agentSocket(fleet, { cert: id.certPem, key: id.keyPem });
    assert.equal(opened.kind, 'open');
    if (opened.kind !== 'open') return;
    const { ws, messages } = opened;
    // A valid hello first (with a long heartbeat, so the session is not swept while the test runs).
    const facts = {
      hostname: 'probe',
      os: 'linux',
      kernel: '6',
      arch: 'x64',
      addresses: [],
      labels: {},
      version: '0',
      uptimeSec: 1,
      agentUptimeSec: 1,
      load: [],
      roots: [],
      runAs: [],
      heartbeatMs: 60_000,
    };
    ws.send(JSON.stringify({ v: 1, type: 'hello', facts, running: [] }));
    await waitFor('the welcome', () => messages.find((m) => m.type === 'welcome'));
    const refusals = () => messages.filter((m) => m.type === 'refuse');
    const result = {
      taskId: 'rnope:web-01',
      runId: 'rnope',
      state: 'ok',
      exitCode: 0,
      signal: null,
      stdout: 'forged',
      stderr: '',
      stdoutTruncated: false,
      stderrTruncated: false,
      stdoutBytes: 6,
      stderrBytes: 0,
      startedAt: 1,
      endedAt: 2,
      durationMs: 1,
    };
    const cases: [string | Buffer, RegExp][] = [
      ['not json', /^not JSON/],
      [JSON.stringify({ v: 99, type: 'pull' }), /protocol version 99/],
      [
        JSON.stringify({ v: 1, type: 'result', result: { ...result, state: undefined } }),
        /result message invalid at \/result/,
      ],
      [JSON.stringify({ v: 1, type: 'exec', command: 'id' }), /unknown agent message type "exec"/],
      [JSON.stringify([1, 2]), /not a JSON object/],
      [Buffer.from([1, 2, 3]), /binary frame/],
    ];
    for (const [i, [data, reason]] of cases.entries()) {
      ws.send(data);
      const reply = await waitFor(`refusal ${i + 1}`, () => refusals()[i]);
      assert.equal(reply.type, 'refuse');
      assert.equal(reply.v, 1);
      assert.equal(reply.code, 'PROTOCOL_INVALID');
      assert.match(String(reply.message), reason);
      await logLine(
        fleet.coordinator,
        `the log of refusal ${i + 1}`,
        (l) =>
          l.msg === 'refused an invalid message from an agent' &&
          l.agent === 'probe-01' &&
          reason.test(String(l.reason)),
      );
    }
    // A well-formed result for another host's task is refused too (no ack).
    ws.send(JSON.stringify({ v: 1, type: 'result', result }));
    const forged = await logLine(fleet.coordinator, 'the refused foreign result', (l) =>
      msgStarts('refused a result: agent "probe-01" may not report for host "web-01"')(l),
    );
    assert.equal(forged.agent, 'probe-01');
    assert.equal(ws.readyState, WebSocket.OPEN, 'the session survives invalid messages');
    assert.ok(!messages.some((m) => m.type === 'result-ack'));
    assert.equal(refusals().length, cases.length);
    ws.close();

    const health = await api(fleet, 'GET', '/healthz', { token: null });
    assert.equal(health.status, 200);
    assert.equal(fleet.coordinator.child.exitCode, null);
    const metrics = await api(fleet, 'GET', '/metrics');
    assert.match(metrics.text, /^canopy_messages_invalid_total (\d+)$/m);
    assert.ok(Number(/^canopy_messages_invalid_total (\d+)$/m.exec(metrics.text)?.[1]) >= cases.length);
  });
});
