/**
 * The one-time join token an agent presents once: it carries where the
 * coordinator is, the SHA-256 fingerprint of its CA certificate (so the
 * agent trusts that CA and nothing else), the token's id and its secret.
 * Text form: `canopy-join-v1.<base64url JSON>`; only the coordinator can
 * check the secret (it stores a hash).
 */
const PREFIX = 'canopy-join-v1.';

export interface JoinToken {
  /** https://HOST:PORT of the coordinator. */
  url: string;
  /** SHA-256 of the CA certificate (DER), lowercase hex. */
  caFingerprint: string;
  id: string;
  secret: string;
}

export function encodeJoinToken(t: JoinToken): string {
  const body = JSON.stringify({ u: t.url, f: t.caFingerprint, i: t.id, s: t.secret });
  return PREFIX + Buffer.from(body).toString('base64url');
}

/** Returns the token, or a reason it is not one. */
export function decodeJoinToken(text: string): JoinToken | string {
  const s = text.trim();
  if (!s.startsWith(PREFIX))
    return `a join token starts with "${PREFIX}"; create one with: canopy token create`;
  let o: unknown;
  try {
    o = JSON.parse(Buffer.from(s.slice(PREFIX.length), 'base64url').toString('utf8'));
  } catch {
    return 'the join token is damaged (not base64url JSON); copy it again or create a new one';
  }
  const { u, f, i, s: secret } = (o ?? {}) as Record<string, unknown>;
  if (typeof u !== 'string' || !/^https:\/\/[^/\s]+$/.test(u))
    return 'the join token has no coordinator address';
  if (typeof f !== 'string' || !/^[0-9a-f]{64}$/.test(f)) return 'the join token has no CA fingerprint';
  if (typeof i !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(i) || typeof secret !== 'string' || !secret) {
    return 'the join token has no id or secret';
  }
  return { url: u, caFingerprint: f, id: i, secret };
}
