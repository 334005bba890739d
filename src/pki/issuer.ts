/**
 * The CA as a signer: its PEM certificate and key checked and loaded for one issuance.
 *
 * Nothing is signed with a CA that fails these checks, so an operator who swaps `ca.key`, or
 * points canopy at a leaf certificate, learns it from PKI_BAD_CA before any agent is enrolled.
 * Holds nothing between calls.
 */

import {
  createPrivateKey,
  createPublicKey,
  type KeyObject,
  type webcrypto,
  X509Certificate,
} from 'node:crypto';
import { CanopyError } from '../errors/index.js';
import { isP256, signingKey } from './keys.js';
import { x509 } from './x509.js';

/** A certificate and its private key, both PEM (the key PKCS#8), as Node's `tls` takes them. */
export interface CertAndKey {
  certPem: string;
  keyPem: string;
}

/** A CA ready to sign: its parsed certificate, signing key and key identifier. */
export interface Issuer {
  cert: x509.X509Certificate;
  key: webcrypto.CryptoKey;
  authorityKeyId: x509.AuthorityKeyIdentifierExtension;
}

function badCa(problem: string, cause?: unknown): CanopyError {
  return new CanopyError(
    'PKI_BAD_CA',
    `the CA cannot issue certificates: ${problem}; restore the CA's certificate and key from backup, ` +
      'or create a new CA (every agent must then enrol again)',
    { cause },
  );
}

function parseCaCert(certPem: string): X509Certificate {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch (err) {
    throw badCa('its certificate is not an X.509 PEM', err);
  }
  if (!cert.ca)
    throw badCa(`certificate ${JSON.stringify(cert.subject)} is not a CA (basicConstraints CA:false)`);
  return cert;
}

function parseCaKey(keyPem: string, cert: X509Certificate): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw badCa('its key is not a PEM private key', err);
  }
  if (!isP256(key)) throw badCa('its key is not an ECDSA P-256 key');
  const spki = (k: KeyObject) => k.export({ type: 'spki', format: 'der' });
  if (!spki(createPublicKey(key)).equals(spki(cert.publicKey))) {
    throw badCa('its key does not belong to its certificate');
  }
  return key;
}

/** Checks `ca` (a P-256 CA certificate, its key, valid at `now`) and loads it for signing. */
export async function loadIssuer(ca: CertAndKey, now: Date): Promise<Issuer> {
  const nodeCert = parseCaCert(ca.certPem);
  const key = parseCaKey(ca.keyPem, nodeCert);
  const cert = new x509.X509Certificate(ca.certPem);
  if (now < cert.notBefore || now > cert.notAfter) {
    throw badCa(
      `it is valid from ${cert.notBefore.toISOString()} to ${cert.notAfter.toISOString()}, ` +
        `not now (${now.toISOString()})`,
    );
  }
  // The AKI must repeat the CA's own SKI byte for byte, or OpenSSL will not match issuer to cert.
  const ski = cert.getExtension(x509.SubjectKeyIdentifierExtension);
  const authorityKeyId = ski
    ? new x509.AuthorityKeyIdentifierExtension(ski.keyId)
    : await x509.AuthorityKeyIdentifierExtension.create(cert.publicKey);
  return { cert, key: await signingKey(key), authorityKeyId };
}
