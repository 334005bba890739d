/**
 * The coordinator's secrets on disk, created on first start: its CA
 * (ECDSA P-256), its TLS server certificate, and the admin API token.
 * Every file holding a secret is written with mode 0600 (atomically: a
 * crash never leaves a half-written key).
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import {
  type CertAndKey,
  COORDINATOR_SAN,
  certInfo,
  createCa,
  fingerprint,
  issueServerCert,
} from '../pki/index.js';
import { writeSynced } from '../transfer/index.js';

export interface CoordinatorIdentity {
  ca: CertAndKey;
  server: CertAndKey;
  adminToken: string;
  caFingerprint: string;
  /** Files created by this start (empty on later starts). */
  created: string[];
  adminTokenPath: string;
}

export async function writeFileAtomic(path: string, data: string, mode = 0o600): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeSynced(tmp, data, 'w', mode);
  await chmod(tmp, mode);
  await rename(tmp, path);
}

/** Loads the identity under DIR, creating what is missing. */
export async function loadOrCreateIdentity(
  dir: string,
  opts: { hostnames: string[]; ips: string[] },
): Promise<CoordinatorIdentity> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const created: string[] = [];
  const paths = {
    caCert: join(dir, 'ca.crt'),
    caKey: join(dir, 'ca.key'),
    cert: join(dir, 'server.crt'),
    key: join(dir, 'server.key'),
    token: join(dir, 'admin.token'),
  };
  let ca: CertAndKey;
  if (existsSync(paths.caCert) && existsSync(paths.caKey)) {
    ca = { certPem: await readFile(paths.caCert, 'utf8'), keyPem: await readFile(paths.caKey, 'utf8') };
  } else {
    ca = await createCa({ commonName: 'canopy CA' });
    await writeFileAtomic(paths.caKey, ca.keyPem);
    await writeFileAtomic(paths.caCert, ca.certPem, 0o644);
    created.push(paths.caKey, paths.caCert);
  }
  let server: CertAndKey | undefined;
  if (existsSync(paths.cert) && existsSync(paths.key)) {
    server = { certPem: await readFile(paths.cert, 'utf8'), keyPem: await readFile(paths.key, 'utf8') };
    const info = certInfo(server.certPem);
    const wanted = [...opts.hostnames, COORDINATOR_SAN];
    const stale =
      info.notAfter.getTime() - Date.now() < 30 * 86_400_000 ||
      !wanted.every((n) => info.dnsNames.includes(n)) ||
      !opts.ips.every((ip) => info.ips.includes(ip));
    if (stale) server = undefined;
  }
  if (!server) {
    server = await issueServerCert(ca, {
      commonName: COORDINATOR_SAN,
      dnsNames: [...new Set([COORDINATOR_SAN, 'localhost', ...opts.hostnames])],
      ips: [...new Set(['127.0.0.1', ...opts.ips])],
    });
    await writeFileAtomic(paths.key, server.keyPem);
    await writeFileAtomic(paths.cert, server.certPem, 0o644);
    created.push(paths.key, paths.cert);
  }
  let adminToken: string;
  if (existsSync(paths.token)) {
    adminToken = (await readFile(paths.token, 'utf8')).trim();
  } else {
    adminToken = `canopy-admin-${randomBytes(32).toString('base64url')}`;
    await writeFileAtomic(paths.token, `${adminToken}\n`);
    created.push(paths.token);
  }
  return {
    ca,
    server,
    adminToken,
    caFingerprint: fingerprint(ca.certPem),
    created,
    adminTokenPath: paths.token,
  };
}
