/**
 * Peer identity for TLS: which canopy name a peer's certificate was issued for.
 *
 * canopy dials peers by address (often an IP) but trusts them by name: the chain check proves
 * the certificate comes from canopy's CA, and checkSan then requires the one DNS SAN the caller
 * expects (the coordinator's, or `<name>.agent.canopy`), whatever host was dialled.
 */

import type { PeerCertificate } from 'node:tls';
import { CanopyError } from '../errors/index.js';

interface AltName {
  type: string;
  value: string;
}

/**
 * Node's `subjectaltname` ("DNS:a, DNS:b, IP Address:1.2.3.4") as a list. Node writes a value
 * holding a separator or quote as a JSON string (`DNS:"a, DNS:b"`), which is read back as one
 * name, so a crafted name cannot pose as two.
 */
export function parseSubjectAltName(text: string): AltName[] {
  const names: AltName[] = [];
  let i = 0;
  while (i < text.length) {
    const colon = text.indexOf(':', i);
    if (colon < 0) break;
    const type = text.slice(i, colon);
    let end: number;
    let value: string;
    if (text[colon + 1] === '"') {
      end = closingQuote(text, colon + 2) + 1;
      value = jsonString(text.slice(colon + 1, end));
    } else {
      end = text.indexOf(', ', colon + 1);
      if (end < 0) end = text.length;
      value = text.slice(colon + 1, end);
    }
    names.push({ type, value });
    const next = text.indexOf(', ', end);
    i = next < 0 ? text.length : next + 2;
  }
  return names;
}

function closingQuote(text: string, from: number): number {
  let k = from;
  while (k < text.length && text[k] !== '"') k += text[k] === '\\' ? 2 : 1;
  return k;
}

function jsonString(quoted: string): string {
  try {
    const v: unknown = JSON.parse(quoted);
    return typeof v === 'string' ? v : quoted;
  } catch {
    return quoted;
  }
}

/**
 * A `checkServerIdentity` for Node's `tls`: accepts the peer only if its certificate has the DNS
 * SAN `expectedSan` (case-insensitive), and otherwise returns a PKI_WRONG_PEER error naming the
 * expected SAN and the ones found. The dialled `host` is ignored, except in that message.
 */
export function checkSan(expectedSan: string): (host: string, cert: PeerCertificate) => Error | undefined {
  const wanted = expectedSan.toLowerCase();
  return (host, cert) => {
    const found = cert.subjectaltname ?? '';
    const dns = parseSubjectAltName(found).filter((n) => n.type === 'DNS');
    if (dns.some((n) => n.value.toLowerCase() === wanted)) return undefined;
    return new CanopyError(
      'PKI_WRONG_PEER',
      `TLS peer ${host} is not ${expectedSan}: its certificate names ${found || 'no subjectAltName'}; ` +
        `check that this address reaches the intended canopy peer`,
      { host, expected: expectedSan, found },
    );
  };
}
