// The agents' peer channel (the chunk relay of distributions), with real
// agent processes: an agent started with --peer-listen announces its peer
// address in its facts, and its peer server admits only agents of the fleet
// (mutual TLS with the control channel's certificates), serves only blobs of
// a distribution it takes part in, and refuses a certificate of another CA.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { createCa, createKeyAndCsr, signCsr } from '../src/pki/index.js';
import { PeerClient } from '../src/transfer/index.js';
import { startFleet, type TestFleet, waitFor } from './helpers/fleet.js';

interface AgentsJson {
  agents: { name: string; online: boolean; facts: { peer?: string } | null }[];
}

function identityOf(fleet: TestFleet, name: string): { certPem: string; keyPem: string; caPem: string } {
  return JSON.parse(readFileSync(join(fleet.dir, 'agents', name, 'identity.json'), 'utf8'));
}

async function peerAddress(fleet: TestFleet, name: string): Promise<{ host: string; port: number }> {
  const address = await waitFor(`${name} to announce its peer address`, async () => {
    const list = await fleet.cliJson<AgentsJson>(['agents']);
    return list.agents.find((a) => a.name === name)?.facts?.peer;
  });
  const m = /^(.+):(\d+)$/.exec(address);
  assert.ok(m, address);
  return { host: m[1] ?? '', port: Number(m[2]) };
}

test('an agent with --peer-listen serves only fleet agents, and only blobs it distributes', async (t) => {
  const fleet = await startFleet(t);
  await fleet.addAgent('relay-01', { extra: ['--peer-listen', '127.0.0.1:0', '--chunk-quota', '64M'] });
  await fleet.addAgent('leaf-01');
  const where = await peerAddress(fleet, 'relay-01');
  const leaf = identityOf(fleet, 'leaf-01');
  const blob = 'ab'.repeat(32);
  const digest = 'cd'.repeat(32);

  // A fleet agent connects, but asks for a blob no distribution names: refused, named.
  const client = await PeerClient.connect({
    ...where,
    peer: 'relay-01',
    identity: { certPem: leaf.certPem, keyPem: leaf.keyPem },
    caPem: leaf.caPem,
    stallTimeoutMs: 5000,
  });
  t.after(() => client.close());
  await assert.rejects(client.fetch(blob, 0, digest), (err: Error) => {
    assert.match(err.message, new RegExp(blob.slice(0, 12)));
    return true;
  });

  // A certificate for the same name from another CA: refused by the peer's TLS.
  const foreignCa = await createCa({ commonName: 'not the fleet' });
  const { keyPem, csrPem } = await createKeyAndCsr('leaf-01');
  const foreign = await signCsr(foreignCa, csrPem, { name: 'leaf-01', ttlMs: 3_600_000 });
  await assert.rejects(
    (async () => {
      const c = await PeerClient.connect({
        ...where,
        peer: 'relay-01',
        identity: { certPem: foreign.certPem, keyPem },
        caPem: leaf.caPem,
        stallTimeoutMs: 5000,
      });
      try {
        await c.fetch(blob, 0, digest);
      } finally {
        await c.close();
      }
    })(),
  );
  const relayLog = fleet.agents.get('relay-01')?.log() ?? '';
  await waitFor('the refusal in the relay log', () =>
    (fleet.agents.get('relay-01')?.log() ?? '').includes('transfer.peer.tls_refused'),
  );
  assert.ok(relayLog.includes('peer server listening'));

  // The client refuses a server that is not the agent it expects.
  await assert.rejects(
    PeerClient.connect({
      ...where,
      peer: 'someone-else',
      identity: { certPem: leaf.certPem, keyPem: leaf.keyPem },
      caPem: leaf.caPem,
      stallTimeoutMs: 5000,
    }),
    /someone-else/,
  );
});
