/**
 * Tests of src/pki through its index: certificates are judged by what Node's `tls` (OpenSSL)
 * does with them on loopback, and by node:crypto's X509Certificate, not by re-reading our own
 * encoder's output.
 */

import assert from 'node:assert/strict';
import { webcrypto, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo, Socket } from 'node:net';
import { type TestContext, test } from 'node:test';
import tls from 'node:tls';
import { isCanopyError } from '../errors/index.js';
import {
  agentSan,
  type CertAndKey,
  COORDINATOR_SAN,
  certInfo,
  checkSan,
  createCa,
  createKeyAndCsr,
  fingerprint,
  issueServerCert,
  signCsr,
  verifyIssuedBy,
} from './index.js';
import { x509 } from './x509.js';

const HOUR = 3_600_000;
const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

async function agentCert(ca: CertAndKey, name: string, ttlMs = HOUR): Promise<CertAndKey> {
  const { keyPem, csrPem } = await createKeyAndCsr(name);
  const { certPem } = await signCsr(ca, csrPem, { name, ttlMs });
  return { certPem, keyPem };
}

const ca = await createCa({ commonName: 'canopy test CA' });
const otherCa = await createCa({ commonName: 'canopy test CA' }); // same name, different key
const coordinator = await issueServerCert(ca, {
  commonName: COORDINATOR_SAN,
  dnsNames: ['localhost'],
  ips: ['127.0.0.1', '::1'],
});
const web01 = await agentCert(ca, 'web01');

// --- TLS helpers: a server that requires a client certificate of `ca`, on 127.0.0.1 port 0.

async function listen(t: TestContext, identity: CertAndKey): Promise<{ server: tls.Server; port: number }> {
  const server = tls.createServer({
    key: identity.keyPem,
    cert: identity.certPem,
    ca: [ca.certPem],
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.3',
  });
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { server, port: (server.address() as AddressInfo).port };
}

function dial(t: TestContext, port: number, identity: CertAndKey, expectedSan: string): tls.TLSSocket {
  const socket = tls.connect({
    host: '127.0.0.1',
    port,
    key: identity.keyPem,
    cert: identity.certPem,
    ca: [ca.certPem],
    checkServerIdentity: checkSan(expectedSan),
    minVersion: 'TLSv1.3',
  });
  t.after(() => socket.destroy());
  return socket;
}

// --- TLS

test('an agent certificate and the server certificate complete a mutual TLS 1.3 handshake', async (t) => {
  const { server, port } = await listen(t, coordinator);
  const accepted = once(server, 'secureConnection') as Promise<[tls.TLSSocket]>;
  const client = dial(t, port, web01, COORDINATOR_SAN);
  await once(client, 'secureConnect');
  const [serverSide] = await accepted;

  assert.equal(client.getProtocol(), 'TLSv1.3');
  assert.equal(client.authorized, true);
  assert.equal(serverSide.authorized, true);
  assert.equal(serverSide.getPeerCertificate().subject.CN, 'web01');
  assert.equal(serverSide.getPeerCertificate().subjectaltname, `DNS:${agentSan('web01')}`);
  serverSide.write('ping');
  const [data] = (await once(client, 'data')) as [Buffer];
  assert.equal(data.toString(), 'ping');
});

test('the server refuses a client certificate from another CA', async (t) => {
  const { server, port } = await listen(t, coordinator);
  let secured = 0;
  server.on('secureConnection', () => secured++);
  const refused = once(server, 'tlsClientError') as Promise<[Error, tls.TLSSocket]>;
  // otherCa has the same name as ca: only the signature tells them apart.
  const stranger = await agentCert(otherCa, 'web01');
  const client = dial(t, port, stranger, COORDINATOR_SAN);
  client.on('error', () => {}); // the server hangs up; its own verdict is what is asserted
  const [, serverSide] = await refused;
  await once(client, 'close');
  assert.equal(serverSide.authorized, false);
  assert.equal(serverSide.authorizationError, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE');
  assert.equal(secured, 0);
});

test('the server refuses the coordinator certificate as a client certificate (EKU serverAuth only)', async (t) => {
  const { server, port } = await listen(t, coordinator);
  let secured = 0;
  server.on('secureConnection', () => secured++);
  const refused = once(server, 'tlsClientError') as Promise<[Error, tls.TLSSocket]>;
  const client = dial(t, port, coordinator, COORDINATOR_SAN);
  client.on('error', () => {});
  const [, serverSide] = await refused;
  await once(client, 'close');
  assert.equal(serverSide.authorizationError, 'INVALID_PURPOSE');
  assert.equal(secured, 0);
});

test('checkSan refuses an agent certificate where the coordinator is expected', async (t) => {
  const { port } = await listen(t, web01);
  const client = dial(t, port, await agentCert(ca, 'web02'), COORDINATOR_SAN);
  const [err] = (await once(client, 'error')) as [Error];
  assert.ok(isCanopyError(err, 'PKI_WRONG_PEER'), String(err));
  assert.match(err.message, /coordinator\.canopy/);
  assert.match(err.message, /DNS:web01\.agent\.canopy/);
});

test('an agent reaches a peer agent by its agent SAN', async (t) => {
  const { server, port } = await listen(t, web01);
  const accepted = once(server, 'secureConnection');
  const client = dial(t, port, await agentCert(ca, 'web02'), agentSan('web01'));
  await once(client, 'secureConnect');
  await accepted;
  assert.equal(client.authorized, true);
});

// --- checkSan on its own

function peer(subjectaltname: string | undefined): tls.PeerCertificate {
  return { subjectaltname } as tls.PeerCertificate;
}

test('checkSan accepts the expected DNS SAN among others, ignoring case', () => {
  const check = checkSan(COORDINATOR_SAN);
  assert.equal(
    check('10.0.0.1', peer('DNS:localhost, DNS:Coordinator.Canopy, IP Address:10.0.0.1')),
    undefined,
  );
});

test('checkSan names what it expected and what it found', () => {
  const err = checkSan(COORDINATOR_SAN)('10.0.0.1', peer('DNS:web01.agent.canopy'));
  assert.ok(isCanopyError(err, 'PKI_WRONG_PEER'));
  assert.deepEqual(err.subject, {
    host: '10.0.0.1',
    expected: COORDINATOR_SAN,
    found: 'DNS:web01.agent.canopy',
  });
  assert.ok(isCanopyError(checkSan(COORDINATOR_SAN)('h', peer(undefined)), 'PKI_WRONG_PEER'));
});

test('checkSan does not take an IP address or a quoted name for the DNS SAN', () => {
  const check = checkSan(COORDINATOR_SAN);
  // Node quotes a name containing ", " so that it cannot pose as a second entry.
  assert.ok(isCanopyError(check('h', peer('DNS:"x, DNS:coordinator.canopy"')), 'PKI_WRONG_PEER'));
  assert.ok(isCanopyError(check('h', peer('IP Address:coordinator.canopy')), 'PKI_WRONG_PEER'));
  assert.ok(isCanopyError(check('h', peer('DNS:coordinator.canopy.evil')), 'PKI_WRONG_PEER'));
});

// --- what is written into certificates

test('the CA is a critical CA:true certificate for keyCertSign and cRLSign', () => {
  const cert = new x509.X509Certificate(ca.certPem);
  const bc = cert.getExtension(x509.BasicConstraintsExtension);
  const ku = cert.getExtension(x509.KeyUsagesExtension);
  assert.equal(bc?.ca, true);
  assert.equal(bc?.critical, true);
  assert.equal(ku?.usages, x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
  assert.equal(certInfo(ca.certPem).isCa, true);
  assert.equal(certInfo(ca.certPem).commonName, 'canopy test CA');
  assert.equal(new X509Certificate(ca.certPem).verify(new X509Certificate(ca.certPem).publicKey), true);
});

test('createCa validity defaults to 3650 days and follows days', async () => {
  const info = certInfo(ca.certPem);
  const days = (info.notAfter.getTime() - info.notBefore.getTime()) / 86_400_000;
  assert.ok(Math.abs(days - 3650) < 0.01, `${days}`);
  const short = certInfo((await createCa({ commonName: 'short', days: 2 })).certPem);
  assert.ok(Math.abs((short.notAfter.getTime() - Date.now()) / 86_400_000 - 2) < 0.01);
});

test('the server certificate has the coordinator SAN, the given names and addresses, serverAuth only', () => {
  const info = certInfo(coordinator.certPem);
  assert.deepEqual(info.dnsNames, [COORDINATOR_SAN, 'localhost']);
  assert.deepEqual(info.ips, ['127.0.0.1', '::1']);
  assert.equal(info.isCa, false);
  assert.deepEqual(new X509Certificate(coordinator.certPem).keyUsage, [SERVER_AUTH]);
  const days = (info.notAfter.getTime() - Date.now()) / 86_400_000;
  assert.ok(Math.abs(days - 825) < 0.01, `${days}`);
});

test('an agent certificate is for clientAuth and serverAuth, digitalSignature, CA:false', () => {
  const cert = new x509.X509Certificate(web01.certPem);
  assert.deepEqual(new X509Certificate(web01.certPem).keyUsage?.sort(), [SERVER_AUTH, CLIENT_AUTH]);
  assert.equal(cert.getExtension(x509.KeyUsagesExtension)?.usages, x509.KeyUsageFlags.digitalSignature);
  assert.equal(cert.getExtension(x509.BasicConstraintsExtension)?.ca, false);
  assert.deepEqual(cert.signatureAlgorithm, { name: 'ECDSA', hash: { name: 'SHA-256' } });
});

test('keys are PKCS#8 PEM', async () => {
  const { keyPem } = await createKeyAndCsr('web03');
  for (const pem of [ca.keyPem, coordinator.keyPem, keyPem]) {
    assert.match(pem, /^-----BEGIN PRIVATE KEY-----\n[\s\S]+\n-----END PRIVATE KEY-----\n$/);
  }
});

test('signCsr ignores the subject the CSR asks for', async () => {
  const { csrPem } = await createKeyAndCsr('coordinator');
  const { certPem } = await signCsr(ca, csrPem, { name: 'web01', ttlMs: HOUR });
  const info = certInfo(certPem);
  assert.equal(info.commonName, 'web01');
  assert.deepEqual(info.dnsNames, ['web01.agent.canopy']);
  assert.deepEqual(info.ips, []);
});

test('signCsr writes notBefore 60 s back and notAfter ttlMs ahead, and returns serial and notAfter', async () => {
  const { csrPem } = await createKeyAndCsr('web01');
  const before = Date.now();
  const issued = await signCsr(ca, csrPem, { name: 'web01', ttlMs: 5 * HOUR });
  const after = Date.now();
  const info = certInfo(issued.certPem);
  // X.509 times have whole seconds: allow the truncation.
  assert.ok(
    info.notAfter.getTime() > before + 5 * HOUR - 1000 && info.notAfter.getTime() <= after + 5 * HOUR,
  );
  assert.ok(info.notBefore.getTime() > before - 61_000 && info.notBefore.getTime() <= after - 60_000);
  assert.equal(issued.notAfter.getTime(), info.notAfter.getTime());
  assert.equal(issued.serial, info.serial);
  assert.match(issued.serial, /^[4-7][0-9a-f]{31}$/);
  assert.equal(issued.serial, new X509Certificate(issued.certPem).serialNumber.toLowerCase());
});

test('serials differ between certificates', async () => {
  const serials = new Set([ca, otherCa, coordinator, web01].map((c) => certInfo(c.certPem).serial));
  assert.equal(serials.size, 4);
});

test('a certificate never outlives its CA', async () => {
  const shortCa = await createCa({ commonName: 'short-lived CA', days: 1 });
  const { csrPem } = await createKeyAndCsr('web01');
  const issued = await signCsr(shortCa, csrPem, { name: 'web01', ttlMs: 30 * 24 * HOUR });
  assert.equal(issued.notAfter.getTime(), certInfo(shortCa.certPem).notAfter.getTime());
});

// --- CSR checks

function tamperDer(pem: string, edit: (der: Buffer) => void): string {
  const der = Buffer.from(pem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64');
  edit(der);
  return `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
}

async function assertBadCsr(csrPem: string, pattern: RegExp): Promise<void> {
  await assert.rejects(signCsr(ca, csrPem, { name: 'web01', ttlMs: HOUR }), (err) => {
    assert.ok(isCanopyError(err, 'PKI_BAD_CSR'), String(err));
    assert.match(err.message, pattern);
    return true;
  });
}

test('a CSR with a changed signature is refused', async () => {
  const { csrPem } = await createKeyAndCsr('web01');
  const last = (der: Buffer) => der.writeUInt8(der.readUInt8(der.length - 1) ^ 0x01, der.length - 1);
  await assertBadCsr(tamperDer(csrPem, last), /signature/);
});

test('a CSR whose subject was changed after signing is refused', async () => {
  const { csrPem } = await createKeyAndCsr('web01');
  const rename = (der: Buffer) => {
    const at = der.indexOf('web01');
    assert.ok(at > 0);
    der.write('web02', at);
  };
  await assertBadCsr(tamperDer(csrPem, rename), /signature/);
});

test('garbage, a certificate and a truncated CSR are refused as CSRs', async () => {
  const { csrPem } = await createKeyAndCsr('web01');
  await assertBadCsr('hello', /not a PEM/);
  await assertBadCsr(web01.certPem, /not a PEM/);
  await assertBadCsr(
    tamperDer(csrPem.slice(0, 200), () => {}),
    /PKCS#10|signature|key/,
  );
  await assertBadCsr(
    '-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n',
    /PKCS#10/,
  );
});

test('a CSR for a P-384 key is refused', async () => {
  const alg = { name: 'ECDSA', namedCurve: 'P-384', hash: 'SHA-384' };
  const keys = await webcrypto.subtle.generateKey(alg, false, ['sign', 'verify']);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: ['web01'] }],
    keys,
    signingAlgorithm: alg,
  });
  await assertBadCsr(csr.toString('pem'), /P-256/);
});

// --- options and CA checks

test('bad names, addresses and durations are refused with PKI_BAD_OPTION', async () => {
  const { csrPem } = await createKeyAndCsr('web01');
  const bad = (err: unknown) => isCanopyError(err, 'PKI_BAD_OPTION');
  await assert.rejects(signCsr(ca, csrPem, { name: 'web01, DNS:coordinator.canopy', ttlMs: HOUR }), bad);
  await assert.rejects(signCsr(ca, csrPem, { name: '', ttlMs: HOUR }), bad);
  await assert.rejects(signCsr(ca, csrPem, { name: 'web01', ttlMs: 0 }), bad);
  await assert.rejects(issueServerCert(ca, { commonName: 'c', dnsNames: ['*.canopy'] }), bad);
  await assert.rejects(issueServerCert(ca, { commonName: 'c', ips: ['300.1.1.1'] }), bad);
  await assert.rejects(createKeyAndCsr('a/b'), bad);
});

test('signing with a key of another CA, or with a leaf certificate, is refused with PKI_BAD_CA', async () => {
  const { csrPem } = await createKeyAndCsr('web01');
  const badCa = (pattern: RegExp) => (err: unknown) => {
    assert.ok(isCanopyError(err, 'PKI_BAD_CA'), String(err));
    assert.match(err.message, pattern);
    return true;
  };
  const mixed = { certPem: ca.certPem, keyPem: otherCa.keyPem };
  await assert.rejects(signCsr(mixed, csrPem, { name: 'web01', ttlMs: HOUR }), badCa(/does not belong/));
  await assert.rejects(signCsr(web01, csrPem, { name: 'web01', ttlMs: HOUR }), badCa(/not a CA/));
});

// --- fingerprint, certInfo, verifyIssuedBy

test('fingerprint is the SHA-256 of the DER, lowercase hex without colons', () => {
  for (const { certPem } of [ca, coordinator, web01]) {
    const expected = new X509Certificate(certPem).fingerprint256.replaceAll(':', '').toLowerCase();
    assert.equal(fingerprint(certPem), expected);
    assert.equal(certInfo(certPem).fingerprint, expected);
  }
  assert.notEqual(fingerprint(ca.certPem), fingerprint(otherCa.certPem));
});

test('fingerprint and certInfo refuse a non-certificate with PKI_BAD_CERT', () => {
  assert.throws(
    () => fingerprint('nope'),
    (err) => isCanopyError(err, 'PKI_BAD_CERT'),
  );
  assert.throws(
    () => certInfo(web01.keyPem),
    (err) => isCanopyError(err, 'PKI_BAD_CERT'),
  );
});

test('verifyIssuedBy accepts a current certificate of the CA only', () => {
  assert.equal(verifyIssuedBy(web01.certPem, ca.certPem), true);
  assert.equal(verifyIssuedBy(coordinator.certPem, ca.certPem), true);
  assert.equal(verifyIssuedBy(web01.certPem, otherCa.certPem), false);
  assert.equal(verifyIssuedBy('not a certificate', ca.certPem), false);
  assert.throws(
    () => verifyIssuedBy(web01.certPem, 'not a CA'),
    (err) => isCanopyError(err, 'PKI_BAD_CERT'),
  );
});

test('verifyIssuedBy refuses an expired or not yet valid certificate', async () => {
  // 30 s, not less: notAfter is truncated to whole seconds.
  const brief = await agentCert(ca, 'web01', 30_000);
  assert.equal(verifyIssuedBy(brief.certPem, ca.certPem), true);
  assert.equal(verifyIssuedBy(brief.certPem, ca.certPem, new Date(Date.now() + 31_000)), false);
  assert.equal(verifyIssuedBy(brief.certPem, ca.certPem, new Date(Date.now() - 5 * 60_000)), false);
});
