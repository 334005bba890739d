/**
 * PKCS#10 certificate signing requests: made by an agent for its fresh key, checked by the CA.
 *
 * A CSR arrives from the network, so the CA trusts nothing in it but the public key, and that
 * only after the request's self-signature proves the sender holds the private key. The subject
 * and any extensions it asks for are never read.
 */

import { createPublicKey } from 'node:crypto';
import { CanopyError } from '../errors/index.js';
import { ECDSA_P256, generateKeyPair, isP256, privateKeyPem } from './keys.js';
import { checkAgentName } from './names.js';
import { x509 } from './x509.js';

const PEM_HEADER = '-----BEGIN CERTIFICATE REQUEST-----';
// A P-256 CSR is under 1 KiB of PEM; refuse to parse anything far larger.
const MAX_CSR_CHARS = 16_384;

/** Agent side: a fresh P-256 key (PKCS#8 PEM) and a PKCS#10 CSR (PEM) for CN=`name`. */
export async function createKeyAndCsr(name: string): Promise<{ keyPem: string; csrPem: string }> {
  checkAgentName(name);
  const keys = await generateKeyPair();
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [name] }],
    keys,
    signingAlgorithm: ECDSA_P256,
  });
  return { keyPem: privateKeyPem(keys.privateKey), csrPem: `${csr.toString('pem')}\n` };
}

function badCsr(name: string, problem: string, cause?: unknown): CanopyError {
  return new CanopyError(
    'PKI_BAD_CSR',
    `certificate request for agent ${JSON.stringify(name)} refused: ${problem}; ` +
      'the agent must generate a new key and CSR and enrol again',
    { cause, host: name },
  );
}

function parseCsr(csrPem: string, name: string): x509.Pkcs10CertificateRequest {
  if (typeof csrPem !== 'string' || !csrPem.includes(PEM_HEADER)) {
    throw badCsr(name, `it is not a PEM "CERTIFICATE REQUEST"`);
  }
  if (csrPem.length > MAX_CSR_CHARS) {
    throw badCsr(name, `it is ${csrPem.length} characters long, more than ${MAX_CSR_CHARS}`);
  }
  try {
    return new x509.Pkcs10CertificateRequest(csrPem);
  } catch (err) {
    throw badCsr(name, 'it is not a valid PKCS#10 request', err);
  }
}

/**
 * CA side: the public key of `csrPem` once the request is shown to be a PKCS#10 PEM for a P-256
 * key, signed by that key. Throws PKI_BAD_CSR otherwise; `name` only labels the error.
 */
export async function verifiedCsrKey(csrPem: string, name: string): Promise<x509.PublicKey> {
  const csr = parseCsr(csrPem, name);
  let p256: boolean;
  try {
    p256 = isP256(createPublicKey({ key: Buffer.from(csr.publicKey.rawData), format: 'der', type: 'spki' }));
  } catch (err) {
    throw badCsr(name, 'its public key cannot be read', err);
  }
  if (!p256) throw badCsr(name, 'its key is not an ECDSA P-256 key');
  let verified: boolean;
  try {
    verified = await csr.verify();
  } catch (err) {
    throw badCsr(name, 'its signature cannot be checked', err);
  }
  if (!verified) throw badCsr(name, 'its signature does not verify with its own public key');
  return csr.publicKey;
}
