/**
 * canopy's small certificate authority (ECDSA P-256, ecdsa-with-SHA256), the only surface of
 * src/pki. The coordinator creates the CA, its own server certificate and agent certificates;
 * agents create their key and CSR. Everything is PEM, ready for Node's `tls`.
 */

export { checkSan } from './check-san.js';

export { type CertInfo, certInfo, fingerprint, normalizeSerial, verifyIssuedBy } from './inspect.js';

export type { CertAndKey } from './issuer.js';
export { agentSan, COORDINATOR_SAN } from './names.js';

// The builders load @peculiar/x509 (and its dependency tree) only when first called: an agent
// that is not joining or renewing never pays for it in memory (its budget is 60 MB).
type IssueModule = typeof import('./issue.js');
type CsrModule = typeof import('./csr.js');

/** A self-signed CA; see issue.ts. */
export async function createCa(
  ...args: Parameters<IssueModule['createCa']>
): ReturnType<IssueModule['createCa']> {
  return (await import('./issue.js')).createCa(...args);
}

/** The coordinator's TLS server certificate; see issue.ts. */
export async function issueServerCert(
  ...args: Parameters<IssueModule['issueServerCert']>
): ReturnType<IssueModule['issueServerCert']> {
  return (await import('./issue.js')).issueServerCert(...args);
}

/** An agent certificate from a verified CSR; see issue.ts. */
export async function signCsr(
  ...args: Parameters<IssueModule['signCsr']>
): ReturnType<IssueModule['signCsr']> {
  return (await import('./issue.js')).signCsr(...args);
}

/** A fresh P-256 key and a CSR for it, made on the agent; see csr.ts. */
export async function createKeyAndCsr(
  ...args: Parameters<CsrModule['createKeyAndCsr']>
): ReturnType<CsrModule['createKeyAndCsr']> {
  return (await import('./csr.js')).createKeyAndCsr(...args);
}
