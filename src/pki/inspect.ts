/**
 * Reading certificates: fingerprint, the fields canopy acts on, and whether a CA issued one.
 *
 * Synchronous and side-effect free; it never signs. Dates, names and SANs come from
 * @peculiar/x509's parse, the fingerprint, CA flag and signature checks from OpenSSL through
 * node:crypto, so a certificate is judged by the same code as in a TLS handshake.
 */

import { createHash, X509Certificate } from 'node:crypto';
import { CanopyError } from '../errors/index.js';
import { x509 } from './x509.js';

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
  parsed: x509.X509Certificate;
}

function parseCert(certPem: string, what = 'certificate'): ParsedCert {
  try {
    return { node: new X509Certificate(certPem), parsed: new x509.X509Certificate(certPem) };
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
  const { node, parsed } = parseCert(certPem);
  const sans = parsed.getExtension(x509.SubjectAlternativeNameExtension)?.names.items ?? [];
  return {
    commonName: parsed.subjectName.getField('CN')[0] ?? '',
    serial: node.serialNumber.toLowerCase(),
    notBefore: parsed.notBefore,
    notAfter: parsed.notAfter,
    fingerprint: sha256Hex(node),
    dnsNames: sans.filter((n) => n.type === 'dns').map((n) => n.value),
    ips: sans.filter((n) => n.type === 'ip').map((n) => n.value),
    isCa: node.ca,
  };
}

function validAt(cert: x509.X509Certificate, now: Date): boolean {
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
    validAt(cert.parsed, now) &&
    validAt(ca.parsed, now)
  );
}
