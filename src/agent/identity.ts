/**
 * The agent's identity on disk (DATA/identity.json, mode 0600): its name,
 * the coordinator's address, the pinned CA, its certificate and the private
 * key that never leaves the host. Joining creates it from a one-time token.
 */

import { mkdir, readFile } from 'node:fs/promises';
import { request } from 'node:https';
import { join } from 'node:path';
import { CanopyError } from '../errors/index.js';
import {
  COORDINATOR_SAN,
  certInfo,
  checkSan,
  createKeyAndCsr,
  fingerprint,
  normalizeSerial,
  verifyIssuedBy,
} from '../pki/index.js';
import { decodeJoinToken } from '../protocol/index.js';
import { replaceSynced } from '../transfer/index.js';

export interface AgentIdentity {
  name: string;
  url: string;
  caPem: string;
  certPem: string;
  keyPem: string;
}

export function identityPath(dataDir: string): string {
  return join(dataDir, 'identity.json');
}

export async function saveIdentity(dataDir: string, id: AgentIdentity): Promise<void> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  // A fresh temp file each time, so it is created with mode 0600 (the key is in it).
  await replaceSynced(identityPath(dataDir), `${JSON.stringify(id, null, 2)}\n`);
}

export async function loadIdentity(dataDir: string): Promise<AgentIdentity | undefined> {
  let text: string;
  try {
    text = await readFile(identityPath(dataDir), 'utf8');
  } catch {
    return undefined;
  }
  const id = JSON.parse(text) as AgentIdentity;
  if (!id.name || !id.url || !id.caPem || !id.certPem || !id.keyPem) {
    throw new CanopyError(
      'AGENT_CONFIG',
      `${identityPath(dataDir)} is incomplete; remove it and join again with a new token`,
    );
  }
  return id;
}

/**
 * DATA/revoked.json: the certificate serials the coordinator last said are
 * revoked (its whole set each time). The agent writes it whenever it is told,
 * and reads it at start (a restarted agent refuses revoked peers before it
 * reaches the coordinator); `canopy peer-rsh`, a process of its own, reads it
 * to refuse a revoked server.
 */
export function revokedPath(dataDir: string): string {
  return join(dataDir, 'revoked.json');
}

export async function saveRevoked(dataDir: string, serials: Iterable<string>): Promise<void> {
  await replaceSynced(revokedPath(dataDir), `${JSON.stringify({ serials: [...serials] })}\n`);
}

/** The serials in DATA/revoked.json (normalized); none when there is no such file. */
export async function loadRevoked(dataDir: string): Promise<Set<string>> {
  const path = revokedPath(dataDir);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new Set();
    throw err;
  }
  let serials: unknown;
  try {
    serials = (JSON.parse(text) as { serials?: unknown }).serials;
  } catch {
    serials = undefined;
  }
  if (
    !Array.isArray(serials) ||
    !serials.every((x) => typeof x === 'string' && /^[0-9a-fA-F]{1,64}$/.test(x))
  ) {
    throw new CanopyError(
      'AGENT_CONFIG',
      `${path} is not a list of revoked certificate serials ({"serials": ["4f1c..."]}): remove it; ` +
        'the agent writes it again when it next reaches the coordinator',
      { path },
    );
  }
  return new Set(serials.map((x: string) => normalizeSerial(x)));
}

interface HttpsOptions {
  ca?: string;
  insecure?: boolean;
  localAddress?: string;
  body?: unknown;
  method?: string;
  timeoutMs?: number;
}

/** A JSON request to the coordinator; resolves with status and parsed body. */
export function httpsJson(url: string, opts: HttpsOptions): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const payload = opts.body === undefined ? undefined : JSON.stringify(opts.body);
    const req = request(
      url,
      {
        method: opts.method ?? (payload ? 'POST' : 'GET'),
        headers: payload
          ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }
          : {},
        minVersion: 'TLSv1.3',
        ...(opts.insecure
          ? { rejectUnauthorized: false }
          : { ca: opts.ca, checkServerIdentity: checkSan(COORDINATOR_SAN) }),
        ...(opts.localAddress ? { localAddress: opts.localAddress } : {}),
        timeout: opts.timeoutMs ?? 15_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown = text;
          try {
            body = JSON.parse(text);
          } catch {
            // not JSON: keep the text
          }
          resolve({ status: res.statusCode ?? 0, body });
        });
      },
    );
    req.on('timeout', () =>
      req.destroy(new Error(`no answer from ${url} within ${opts.timeoutMs ?? 15_000} ms`)),
    );
    req.on('error', reject);
    req.end(payload);
  });
}

/**
 * Joins with a one-time token: fetch the coordinator's CA, check it against
 * the fingerprint the token pins, generate a key here, send a CSR, and keep
 * the certificate that comes back. Throws JOIN_* errors an operator can act on.
 */
export async function joinCoordinator(
  tokenText: string,
  name: string,
  opts: { localAddress?: string; url?: string } = {},
): Promise<AgentIdentity> {
  const token = decodeJoinToken(tokenText);
  if (typeof token === 'string') throw new CanopyError('JOIN_FAILED', token);
  const url = opts.url ?? token.url;
  const net = opts.localAddress ? { localAddress: opts.localAddress } : {};
  let caPem: string;
  try {
    const res = await httpsJson(`${url}/v1/ca`, { insecure: true, ...net });
    caPem = String((res.body as { ca?: unknown }).ca ?? '');
  } catch (err) {
    throw new CanopyError(
      'JOIN_FAILED',
      `cannot reach the coordinator at ${url}: ${(err as Error).message}`,
      { cause: err },
    );
  }
  const got = caPem ? fingerprint(caPem) : '(none)';
  if (got !== token.caFingerprint) {
    throw new CanopyError(
      'JOIN_CA_MISMATCH',
      `the server at ${url} presented CA ${got}, but the token pins ${token.caFingerprint}: it is not the coordinator that issued this token (or the token is for another coordinator); nothing was sent`,
    );
  }
  const { keyPem, csrPem } = await createKeyAndCsr(name);
  const res = await httpsJson(`${url}/v1/join`, {
    ca: caPem,
    ...net,
    body: { tokenId: token.id, secret: token.secret, name, csr: csrPem },
  });
  if (res.status !== 200) {
    const b = res.body as { code?: string; message?: string };
    throw new CanopyError(
      'JOIN_FAILED',
      `the coordinator refused the join (${b.code ?? res.status}): ${b.message ?? JSON.stringify(res.body)}`,
    );
  }
  const certPem = String((res.body as { cert?: unknown }).cert ?? '');
  if (!verifyIssuedBy(certPem, caPem) || certInfo(certPem).commonName !== name) {
    throw new CanopyError(
      'JOIN_FAILED',
      `the certificate the coordinator returned is not a valid certificate for "${name}" from the pinned CA`,
    );
  }
  return { name, url, caPem, certPem, keyPem };
}
