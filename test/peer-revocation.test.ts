// What agents' running peer servers learn after they started, with a real
// coordinator and agent processes on loopback: a revocation (the coordinator
// tells every online agent the revoked serials, at hello and when it
// happens; the peer server refuses the revoked agent's new connections and
// hangs up its open ones) and a certificate renewal (the peer server then
// presents the renewed certificate, and distributions run agent to agent
// after the first certificates expired).
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import tls from 'node:tls';
import { isCanopyError } from '../src/errors/index.js';
import { agentSan, certInfo, normalizeSerial } from '../src/pki/index.js';
import { PEER_ALPN, PeerClient } from '../src/transfer/index.js';
import { startFleet, type TestFleet, waitFor } from './helpers/fleet.js';

interface AgentsJson {
  agents: { name: string; online: boolean; facts: { peer?: string } | null }[];
}

interface Identity {
  certPem: string;
  keyPem: string;
  caPem: string;
}

function identityOf(fleet: TestFleet, name: string): Identity {
  return JSON.parse(readFileSync(join(fleet.dir, 'agents', name, 'identity.json'), 'utf8'));
}

function serialOf(certPem: string): string {
  return normalizeSerial(certInfo(certPem).serial);
}

/** The peer address `name` announces; with `not`, wait until it announces another (after a restart). */
async function peerAddress(
  fleet: TestFleet,
  name: string,
  not?: string,
): Promise<{ host: string; port: number; address: string }> {
  const address = await waitFor(`${name} to announce its peer address`, async () => {
    const list = await fleet.cliJson<AgentsJson>(['agents']);
    const a = list.agents.find((x) => x.name === name);
    const peer = a?.online ? a.facts?.peer : undefined;
    return peer !== not ? peer : undefined;
  });
  const m = /^(.+):(\d+)$/.exec(address);
  assert.ok(m, address);
  return { host: m[1] ?? '', port: Number(m[2]), address };
}

function dial(where: { host: string; port: number }, peer: string, as: Identity): Promise<PeerClient> {
  return PeerClient.connect({
    host: where.host,
    port: where.port,
    peer,
    identity: { certPem: as.certPem, keyPem: as.keyPem },
    caPem: as.caPem,
    stallTimeoutMs: 10_000,
  });
}

const BLOB = 'ab'.repeat(32);
const DIGEST = 'cd'.repeat(32);

/** A new connection and one fetch on it (either may be refused), then closed. */
async function dialAndFetch(
  where: { host: string; port: number },
  peer: string,
  as: Identity,
): Promise<void> {
  const c = await dial(where, peer, as);
  try {
    await c.fetch(BLOB, 0, DIGEST);
  } finally {
    await c.close();
  }
}

/** A fetch no distribution allows: TRANSFER_PEER_FORBIDDEN proves the connection is admitted and live. */
async function assertAdmitted(client: PeerClient, who: string): Promise<void> {
  await assert.rejects(client.fetch(BLOB, 0, DIGEST), (err: unknown) => {
    assert.ok(isCanopyError(err), String(err));
    assert.equal(err.code, 'TRANSFER_PEER_FORBIDDEN', `${who}: ${err.message}`);
    return true;
  });
  assert.equal(client.closed, false, `${who}'s connection closed`);
}

function assertRevoked(serial: string) {
  return (err: unknown) => {
    assert.ok(isCanopyError(err), String(err));
    assert.equal(err.code, 'AGENT_REVOKED', err.message);
    assert.match(err.message, /refuses agent x-01/);
    assert.match(err.message, new RegExp(`serial ${serial}`));
    return true;
  };
}

function count(text: string, what: string): number {
  return text.split('\n').filter((l) => l.includes(what)).length;
}

test('an agent revoked while the fleet runs is refused by the peer servers, and its open connections are closed', async (t) => {
  const fleet = await startFleet(t);
  const relay = await fleet.addAgent('relay-01', { extra: ['--peer-listen', '127.0.0.1:0'] });
  await fleet.addAgent('x-01');
  await fleet.addAgent('y-01');
  const where = await peerAddress(fleet, 'relay-01');
  const x = identityOf(fleet, 'x-01');
  const y = identityOf(fleet, 'y-01');
  const xSerial = serialOf(x.certPem);

  // Before the revocation both are admitted; the connections stay open and idle.
  const xOpen = await dial(where, 'relay-01', x);
  t.after(() => xOpen.close());
  const yOpen = await dial(where, 'relay-01', y);
  t.after(() => yOpen.close());
  await assertAdmitted(xOpen, 'x-01');
  await assertAdmitted(yOpen, 'y-01');
  // The coordinator's source peer server (started by a first distribution) admits x-01 too.
  const file = join(fleet.dir, 'small.bin');
  writeFileSync(file, randomBytes(100_000));
  const d = await fleet.cli([
    'dist',
    file,
    '--dest',
    join(fleet.dir, 'agents', '{host}', 'root', 'd.bin'),
    '--targets',
    'relay-01',
  ]);
  assert.equal(d.code, 0, `${d.stderr}\n${d.stdout}`);
  const listening = /"peer":"(127\.0\.0\.1):(\d+)"[^\n]*distribution source listening/.exec(
    fleet.coordinator.log(),
  );
  assert.ok(listening, 'the coordinator never logged its source address');
  const source = { host: listening[1] ?? '', port: Number(listening[2]) };
  const xSource = await dial(source, 'canopy-source', x);
  t.after(() => xSource.close());
  await assertAdmitted(xSource, 'x-01 at the source');

  const r = await fleet.cli(['agents', 'revoke', 'x-01']);
  assert.equal(r.code, 0, r.stderr);
  // The source hangs up on x-01 as well, and refuses it from then on.
  await waitFor("the source to close x-01's open connection", () => xSource.closed);
  await assert.rejects(dialAndFetch(source, 'canopy-source', x), assertRevoked(xSerial));

  // x-01's open connection is closed by the relay, though it asks nothing (the idle timeout is 2 minutes).
  await waitFor("the relay to close x-01's open connection", () => xOpen.closed);
  await assert.rejects(xOpen.fetch(BLOB, 0, DIGEST), assertRevoked(xSerial));
  assert.match(relay.log(), /transfer\.peer\.revoked_closed/);
  // Written down for `canopy peer-rsh` (the rsync tunnel, a process of its own) and for a restart.
  const revokedJson = join(fleet.dir, 'agents', 'relay-01', 'revoked.json');
  await waitFor('the relay to write revoked.json', () => existsSync(revokedJson));
  assert.ok(
    (JSON.parse(readFileSync(revokedJson, 'utf8')) as { serials: string[] }).serials.includes(xSerial),
  );
  // A new connection from x-01 is refused; y-01's open connection and a new one are still served.
  await assert.rejects(dialAndFetch(where, 'relay-01', x), assertRevoked(xSerial));
  await assertAdmitted(yOpen, 'y-01');
  const yNew = await dial(where, 'relay-01', y);
  t.after(() => yNew.close());
  await assertAdmitted(yNew, 'y-01');

  // A relay started after the revocation, without its revoked.json, learns it at its hello: it
  // refuses x-01 as well.
  const learned = count(relay.log(), 'peer server took the revoked serials');
  assert.ok(learned >= 1, 'the relay never logged the revoked serials');
  await relay.kill();
  rmSync(revokedJson);
  relay.restart();
  const again = await peerAddress(fleet, 'relay-01', where.address);
  await waitFor(
    'the restarted relay to learn the revoked serials',
    () => count(relay.log(), 'peer server took the revoked serials') > learned,
  );
  await assert.rejects(dialAndFetch(again, 'relay-01', x), assertRevoked(xSerial));
  const yAgain = await dial(again, 'relay-01', y);
  t.after(() => yAgain.close());
  await assertAdmitted(yAgain, 'y-01');

  // With its revoked.json (written again at that hello) it knows them from its start.
  await waitFor('the relay to write revoked.json again', () => existsSync(revokedJson));
  await relay.kill();
  relay.restart();
  await peerAddress(fleet, 'relay-01', again.address);
  assert.equal(count(relay.log(), 'revoked serials loaded from revoked.json'), 1);
});

/** The serial of the certificate a TLS client sees at `where` (the client shows `as`'s certificate). */
async function presentedSerial(
  where: { host: string; port: number },
  peer: string,
  as: Identity,
): Promise<string> {
  const socket = tls.connect({
    host: where.host,
    port: where.port,
    key: as.keyPem,
    cert: as.certPem,
    ca: [as.caPem],
    servername: agentSan(peer),
    ALPNProtocols: [PEER_ALPN],
    minVersion: 'TLSv1.3',
  });
  try {
    await once(socket, 'secureConnect');
    const cert = socket.getPeerX509Certificate();
    assert.ok(cert, `${peer} presented no certificate`);
    return normalizeSerial(cert.serialNumber);
  } finally {
    socket.destroy();
  }
}

interface DistJson {
  md5: string;
  results: {
    host: string;
    state: string;
    error?: string;
    transfer?: { fromPeers: Record<string, number> };
  }[];
}

test('after a renewal the peer server presents the new certificate, and a distribution runs agent to agent once the first ones expired', async (t) => {
  // Certificates live 9 s: agents renew after 6 s, and the first ones expire during the test.
  const fleet = await startFleet(t, { extra: ['--cert-ttl', '9s'] });
  const names = ['a-01', 'a-02', 'a-03'];
  for (const name of names)
    await fleet.addAgent(name, { wait: false, extra: ['--peer-listen', '127.0.0.1:0'] });
  await fleet.waitOnline(names);
  const first = new Map(names.map((n) => [n, identityOf(fleet, n).certPem]));
  const where = await peerAddress(fleet, 'a-01');
  const a2 = () => identityOf(fleet, 'a-02');

  const a1 = fleet.agents.get('a-01');
  await waitFor(
    'a-01 to renew its certificate',
    () => /agent certificate renewed/.test(a1?.log() ?? ''),
    30_000,
  );
  // The agent swaps the peer server's certificate before it saves the file: what the file holds
  // (before or after the handshake, should another renewal fall in between) is what is presented.
  const before = serialOf(identityOf(fleet, 'a-01').certPem);
  const presented = await presentedSerial(where, 'a-01', a2());
  const after = serialOf(identityOf(fleet, 'a-01').certPem);
  assert.notEqual(presented, serialOf(first.get('a-01') ?? ''), 'a-01 still presents its first certificate');
  assert.ok(
    [before, after].includes(presented),
    `a-01 presents ${presented}, its file holds ${before}/${after}`,
  );

  // Past every first certificate's expiry, a peer server or client still using one fails its handshakes.
  const expiry = Math.max(...[...first.values()].map((pem) => certInfo(pem).notAfter.getTime()));
  await waitFor('the first certificates to expire', () => Date.now() > expiry + 1000, 30_000);
  for (const n of names) assert.notEqual(identityOf(fleet, n).certPem, first.get(n), `${n} never renewed`);

  const data = randomBytes(2 * 1024 * 1024);
  const src = join(fleet.dir, 'payload.bin');
  writeFileSync(src, data);
  const md5 = createHash('md5').update(data).digest('hex');
  const dest = join(fleet.dir, 'agents', '{host}', 'root', 'payload.bin');
  const r = await fleet.cli([
    'dist',
    src,
    '--dest',
    dest,
    '--targets',
    'all',
    '--chunk-size',
    '65536',
    '--json',
  ]);
  assert.equal(r.code, 0, `${r.stderr}\n${r.stdout.slice(0, 3000)}`);
  const j = JSON.parse(r.stdout) as DistJson;
  assert.equal(j.results.length, 3);
  for (const res of j.results) {
    assert.equal(res.state, 'ok', `${res.host}: ${res.error}`);
    const got = readFileSync(join(fleet.dir, 'agents', res.host, 'root', 'payload.bin'));
    assert.equal(createHash('md5').update(got).digest('hex'), md5, `${res.host} has a wrong file`);
  }
  // A chain: the hosts below the first fetched from agents, over TLS with renewed certificates both ways.
  const fromAgents = j.results.flatMap((res) =>
    Object.entries(res.transfer?.fromPeers ?? {}).filter(
      ([peer, bytes]) => peer !== 'canopy-source' && bytes > 0,
    ),
  );
  assert.ok(fromAgents.length > 0, `every byte came from the source: ${JSON.stringify(j.results)}`);
});
