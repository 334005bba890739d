/**
 * canopy's CA issuing certificates: the self-signed CA, the coordinator's server certificate,
 * and agent certificates from CSRs.
 *
 * Every certificate is ECDSA P-256 signed with SHA-256, has a random 16-byte serial, starts 60 s
 * in the past (clock skew between hosts) and never outlives the CA that signs it. Leaf
 * certificates are CA:false and carry only the names and key usages given here.
 */

import { randomBytes } from 'node:crypto';
import { verifiedCsrKey } from './csr.js';
import { type CertAndKey, type Issuer, loadIssuer } from './issuer.js';
import { ECDSA_P256, generateKeyPair, privateKeyPem } from './keys.js';
import {
  agentSan,
  COORDINATOR_SAN,
  checkAgentName,
  checkCommonName,
  checkDnsName,
  checkDuration,
  checkIp,
} from './names.js';
import { x509 } from './x509.js';

const DAY_MS = 86_400_000;
const CLOCK_SKEW_MS = 60_000;
// The CA only signs end-entity certificates, so pathLen 0 forbids intermediates under it.
const CA_PATH_LENGTH = 0;

/**
 * A random positive 16-byte serial, lowercase hex. The top bit is cleared (positive) and the
 * next set, so the DER integer is always exactly 16 bytes and Node prints it the same way.
 */
function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = ((bytes[0] ?? 0) & 0x7f) | 0x40;
  return bytes.toString('hex');
}

/**
 * The parsed CA for signing agent CSRs, kept for a minute: parsing and importing the CA key was
 * most of a join's CPU. The validity check inside loadIssuer runs again when the entry expires.
 */
const ISSUER_CACHE_MS = 60_000;
let issuerCache: { certPem: string; keyPem: string; at: number; issuer: Promise<Issuer> } | undefined;

function cachedIssuer(ca: CertAndKey, now: number): Promise<Issuer> {
  const c = issuerCache;
  if (c && c.certPem === ca.certPem && c.keyPem === ca.keyPem && now - c.at < ISSUER_CACHE_MS)
    return c.issuer;
  const issuer = loadIssuer(ca, new Date(now));
  issuerCache = { certPem: ca.certPem, keyPem: ca.keyPem, at: now, issuer };
  issuer.catch(() => {
    if (issuerCache?.issuer === issuer) issuerCache = undefined;
  });
  return issuer;
}

function pem(cert: x509.X509Certificate): string {
  return `${cert.toString('pem')}\n`;
}

/** Self-signed CA: basicConstraints CA:true (critical), keyUsage keyCertSign + cRLSign. */
export async function createCa(opts: { commonName: string; days?: number }): Promise<CertAndKey> {
  const days = opts.days ?? 3650;
  checkCommonName(opts.commonName);
  checkDuration('days', days * DAY_MS);
  const now = Date.now();
  const keys = await generateKeyPair();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: [{ CN: [opts.commonName] }],
    keys,
    serialNumber: randomSerial(),
    notBefore: new Date(now - CLOCK_SKEW_MS),
    notAfter: new Date(now + days * DAY_MS),
    signingAlgorithm: ECDSA_P256,
    extensions: [
      new x509.BasicConstraintsExtension(true, CA_PATH_LENGTH, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: pem(cert), keyPem: privateKeyPem(keys.privateKey) };
}

interface LeafParams {
  commonName: string;
  publicKey: x509.PublicKeyType;
  sans: x509.JsonGeneralNames;
  extendedKeyUsages: x509.ExtendedKeyUsage[];
  now: number;
  lifetimeMs: number;
}

async function issueLeaf(issuer: Issuer, p: LeafParams): Promise<x509.X509Certificate> {
  const notAfter = Math.min(p.now + p.lifetimeMs, issuer.cert.notAfter.getTime());
  return x509.X509CertificateGenerator.create({
    subject: [{ CN: [p.commonName] }],
    issuer: issuer.cert.subjectName,
    publicKey: p.publicKey,
    signingKey: issuer.key,
    serialNumber: randomSerial(),
    notBefore: new Date(p.now - CLOCK_SKEW_MS),
    notAfter: new Date(notAfter),
    signingAlgorithm: ECDSA_P256,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(p.extendedKeyUsages),
      new x509.SubjectAlternativeNameExtension(p.sans),
      await x509.SubjectKeyIdentifierExtension.create(p.publicKey),
      issuer.authorityKeyId,
    ],
  });
}

/**
 * The coordinator's TLS server certificate and a fresh key, signed by `ca`: SAN DNS names (always
 * including COORDINATOR_SAN, duplicates dropped) and IP addresses, EKU serverAuth only, keyUsage
 * digitalSignature. Throws PKI_BAD_OPTION for a bad name, address or `days`; PKI_BAD_CA for a bad CA.
 */
export async function issueServerCert(
  ca: CertAndKey,
  opts: { commonName: string; dnsNames?: string[]; ips?: string[]; days?: number },
): Promise<CertAndKey> {
  const days = opts.days ?? 825;
  const dnsNames = [...new Set([COORDINATOR_SAN, ...(opts.dnsNames ?? [])])];
  const ips = [...new Set(opts.ips ?? [])];
  checkCommonName(opts.commonName);
  dnsNames.forEach(checkDnsName);
  ips.forEach(checkIp);
  checkDuration('days', days * DAY_MS);
  const now = Date.now();
  const issuer = await loadIssuer(ca, new Date(now));
  const keys = await generateKeyPair();
  const cert = await issueLeaf(issuer, {
    commonName: opts.commonName,
    publicKey: keys.publicKey,
    sans: [
      ...dnsNames.map((value) => ({ type: 'dns' as const, value })),
      ...ips.map((value) => ({ type: 'ip' as const, value })),
    ],
    extendedKeyUsages: [x509.ExtendedKeyUsage.serverAuth],
    now,
    lifetimeMs: days * DAY_MS,
  });
  return { certPem: pem(cert), keyPem: privateKeyPem(keys.privateKey) };
}

/**
 * CA side of enrolment: checks the CSR (PKI_BAD_CSR unless a PKCS#10 PEM for a P-256 key whose
 * signature verifies), then certifies its key as agent `opts.name`, whatever subject the CSR
 * asked for: CN=name, SAN DNS agentSan(name), EKU clientAuth + serverAuth (agents also serve
 * peers), keyUsage digitalSignature, valid for `opts.ttlMs` (capped at the CA's own expiry).
 * `serial` is lowercase hex; `notAfter` is as written in the certificate (whole seconds).
 */
export async function signCsr(
  ca: CertAndKey,
  csrPem: string,
  opts: { name: string; ttlMs: number },
): Promise<{ certPem: string; serial: string; notAfter: Date }> {
  checkAgentName(opts.name);
  checkDuration('ttlMs', opts.ttlMs);
  const publicKey = await verifiedCsrKey(csrPem, opts.name);
  const now = Date.now();
  const issuer = await cachedIssuer(ca, now);
  const cert = await issueLeaf(issuer, {
    commonName: opts.name,
    publicKey,
    sans: [{ type: 'dns', value: agentSan(opts.name) }],
    extendedKeyUsages: [x509.ExtendedKeyUsage.clientAuth, x509.ExtendedKeyUsage.serverAuth],
    now,
    lifetimeMs: opts.ttlMs,
  });
  return { certPem: pem(cert), serial: cert.serialNumber, notAfter: cert.notAfter };
}
