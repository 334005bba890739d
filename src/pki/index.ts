/**
 * canopy's small certificate authority (ECDSA P-256, ecdsa-with-SHA256), the only surface of
 * src/pki. The coordinator creates the CA, its own server certificate and agent certificates;
 * agents create their key and CSR. Everything is PEM, ready for Node's `tls`.
 */

export { checkSan } from './check-san.js';
export { createKeyAndCsr } from './csr.js';
export { type CertInfo, certInfo, fingerprint, verifyIssuedBy } from './inspect.js';
export { createCa, issueServerCert, signCsr } from './issue.js';
export type { CertAndKey } from './issuer.js';
export { agentSan, COORDINATOR_SAN } from './names.js';
