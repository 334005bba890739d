/**
 * The names canopy certificates carry, and the checks on what the CA is asked to write into one.
 *
 * Every name or duration reaches a certificate only through these checks, so a CSR or an option
 * can never smuggle a second SAN, a wildcard or a DN attribute into what the CA signs.
 */

import { isIP } from 'node:net';
import { CanopyError } from '../errors/index.js';

/** The DNS SAN of the coordinator's server certificate; agents accept no other name for it. */
export const COORDINATOR_SAN = 'coordinator.canopy';

const AGENT_SUFFIX = '.agent.canopy';

/** The DNS SAN of the agent named `name`: `${name}.agent.canopy`. */
export function agentSan(name: string): string {
  return `${name}${AGENT_SUFFIX}`;
}

// Host names as inventories allow them (letters, digits, `_`, `-`), split into DNS labels.
const LABEL_RE = /^[A-Za-z0-9_][A-Za-z0-9_-]{0,62}$/;
const MAX_DNS_NAME = 253;
// X.520 upper bound for a common name.
const MAX_COMMON_NAME = 64;

function isDnsName(name: string): boolean {
  return name.length <= MAX_DNS_NAME && name.split('.').every((label) => LABEL_RE.test(label));
}

/** Throws PKI_BAD_OPTION unless `name` can be an agent's name: its CN, and labels of its SAN. */
export function checkAgentName(name: string): void {
  if (name.length > MAX_COMMON_NAME || !isDnsName(agentSan(name))) {
    throw new CanopyError(
      'PKI_BAD_OPTION',
      `agent name ${JSON.stringify(name)} cannot be a certificate name: use dot-separated labels of ` +
        `letters, digits, "_" and "-" (at most 63 each, ${MAX_COMMON_NAME} characters in all)`,
      { host: name },
    );
  }
}

/** Throws PKI_BAD_OPTION unless `name` is a DNS name without wildcards. */
export function checkDnsName(name: string): void {
  if (!isDnsName(name)) {
    throw new CanopyError(
      'PKI_BAD_OPTION',
      `${JSON.stringify(name)} is not a DNS name: use dot-separated labels of letters, digits, "_" and "-"`,
      { name },
    );
  }
}

/** Throws PKI_BAD_OPTION unless `ip` is an IPv4 or IPv6 address. */
export function checkIp(ip: string): void {
  if (isIP(ip) === 0) {
    throw new CanopyError('PKI_BAD_OPTION', `${JSON.stringify(ip)} is not an IPv4 or IPv6 address`, { ip });
  }
}

/** Throws PKI_BAD_OPTION unless `cn` is a non-empty common name of at most 64 characters. */
export function checkCommonName(cn: string): void {
  if (cn.length === 0 || cn.length > MAX_COMMON_NAME) {
    throw new CanopyError(
      'PKI_BAD_OPTION',
      `common name ${JSON.stringify(cn)} must be 1 to ${MAX_COMMON_NAME} characters long`,
      { commonName: cn },
    );
  }
}

/** Throws PKI_BAD_OPTION unless `ms` is a positive, finite duration; `what` names the option. */
export function checkDuration(what: string, ms: number): void {
  if (!Number.isFinite(ms) || ms <= 0) {
    throw new CanopyError('PKI_BAD_OPTION', `${what} must be a positive duration, got ${ms}`, {
      option: what,
    });
  }
}
