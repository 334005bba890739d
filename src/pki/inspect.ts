/**
 * Reading certificates: fingerprint, the fields canopy acts on, and whether a CA issued one.
 *
 * Synchronous and side-effect free; it never signs. Everything comes from OpenSSL through
 * node:crypto (no @peculiar/x509 here, so reading certificates stays cheap for the agent), so a
 * certificate is judged by the same code as in a TLS handshake.
 */

import { createHash, X509Certificate } from 'node:crypto';
import { CanopyError } from '../errors/index.js';

/** What canopy reads from a certificate. `serial` is lowercase hex, `fingerprint` as fingerprint(). */
export interface CertInfo {
  commonName: string;
  serial: string;
  notBefore: Date;
  notAfter: Date;
  fingerprint: string;
  dnsNames: string[];
  ips: string[];
  isCa: boolean;
}

interface ParsedCert {
  node: X509Certificate;
  notBefore: Date;
  notAfter: Date;
}

function parseCert(certPem: string, what = 'certificate'): ParsedCert {
  try {
    const node = new X509Certificate(certPem);
    return { node, notBefore: new Date(node.validFrom), notAfter: new Date(node.validTo) };
  } catch (err) {
    throw new CanopyError(
      'PKI_BAD_CERT',
      `${what} is not an X.509 certificate in PEM ("-----BEGIN CERTIFICATE-----"); check the file it came from`,
      { cause: err },
    );
  }
}

function sha256Hex(cert: X509Certificate): string {
  return createHash('sha256').update(cert.raw).digest('hex');
}

/** SHA-256 of the DER certificate, lowercase hex without colons. Throws PKI_BAD_CERT. */
export function fingerprint(certPem: string): string {
  return sha256Hex(parseCert(certPem).node);
}

/** The fields canopy acts on. Throws PKI_BAD_CERT if `certPem` is not a certificate PEM. */
export function certInfo(certPem: string): CertInfo {
  const { node, notBefore, notAfter } = parseCert(certPem);
  const sans = parseSans(node.subjectAltName ?? '');
  return {
    commonName: /^CN=(.*)$/m.exec(node.subject)?.[1] ?? '',
    serial: node.serialNumber.toLowerCase(),
    notBefore,
    notAfter,
    fingerprint: sha256Hex(node),
    dnsNames: sans.filter((n) => n.type === 'DNS').map((n) => n.value),
    ips: sans.filter((n) => n.type === 'IP Address').map((n) => canonicalIp(n.value)),
    isCa: node.ca,
  };
}

/**
 * A serial as canopy compares serials: lowercase hex without leading zeros (Node prints serials
 * uppercase, with a leading zero when the top bit of the first byte would be set).
 */
export function normalizeSerial(serial: string): string {
  return serial.toLowerCase().replace(/^0+(?=.)/, '');
}

/** Node's `subjectAltName` text: `DNS:a, IP Address:1.2.3.4`; a value with `,` or `"` is quoted JSON-style. */
function parseSans(text: string): { type: string; value: string }[] {
  const out: { type: string; value: string }[] = [];
  const re = /(DNS|IP Address|URI|email|othername):("(?:[^"\\]|\\.)*"|[^,]*)(?:, |$)/g;
  for (const m of text.matchAll(re)) {
    const raw = m[2] ?? '';
    out.push({ type: m[1] ?? '', value: raw.startsWith('"') ? (JSON.parse(raw) as string) : raw });
  }
  return out;
}

/** OpenSSL prints IPv6 uncompressed (0:0:0:0:0:0:0:1); canopy compares the short form (::1). */
function canonicalIp(ip: string): string {
  return ip.includes(':') ? new URL(`http://[${ip}]/`).hostname.slice(1, -1) : ip;
}

function validAt(cert: ParsedCert, now: Date): boolean {
  return cert.notBefore <= now && now <= cert.notAfter;
}

/**
 * True if `certPem` names `caPem` as issuer, is signed by its key, and both are valid at `now`
 * (as a TLS handshake would require). A `certPem` that does not parse is simply not issued
 * (false); a `caPem` that does not parse is a configuration error and throws PKI_BAD_CERT.
 */
export function verifyIssuedBy(certPem: string, caPem: string, now: Date = new Date()): boolean {
  const ca = parseCert(caPem, 'CA certificate');
  let cert: ParsedCert;
  try {
    cert = parseCert(certPem);
  } catch {
    return false;
  }
  return (
    cert.node.checkIssued(ca.node) &&
    cert.node.verify(ca.node.publicKey) &&
    validAt(cert, now) &&
    validAt(ca, now)
  );
}
