/**
 * P-256 keys: generation, PKCS#8 PEM export, and the CA key's import for signing.
 *
 * Keys live as PKCS#8 PEM strings outside this file (what Node's `tls` takes) and as WebCrypto
 * keys only while a certificate or CSR is being signed. Only ECDSA P-256 is ever produced.
 */

import { KeyObject, webcrypto } from 'node:crypto';

/** The one key and signature algorithm of canopy: ECDSA on P-256 with SHA-256. */
export const ECDSA_P256 = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

/** Node's name for P-256, as `asymmetricKeyDetails.namedCurve` reports it. */
export const P256_NODE_NAME = 'prime256v1';

/** A fresh P-256 key pair; the private key is extractable so that it can be written as PEM. */
export async function generateKeyPair(): Promise<webcrypto.CryptoKeyPair> {
  return webcrypto.subtle.generateKey(ECDSA_P256, true, ['sign', 'verify']);
}

/** The private key as a PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----"). */
export function privateKeyPem(key: webcrypto.CryptoKey): string {
  return KeyObject.from(key).export({ type: 'pkcs8', format: 'pem' }).toString();
}

/** True if `key` is an EC key on P-256. */
export function isP256(key: KeyObject): boolean {
  return key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === P256_NODE_NAME;
}

/** A P-256 private key as a non-extractable WebCrypto signing key. */
export async function signingKey(key: KeyObject): Promise<webcrypto.CryptoKey> {
  const der = key.export({ type: 'pkcs8', format: 'der' });
  return webcrypto.subtle.importKey('pkcs8', der, ECDSA_P256, false, ['sign']);
}
