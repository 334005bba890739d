/** What an agent tells the coordinator about its host in every heartbeat. */
import { readFileSync } from 'node:fs';
import { arch, hostname, loadavg, networkInterfaces, release, uptime } from 'node:os';
import type { Facts } from '../protocol/index.js';
import type { AgentConfig } from './config.js';

let osName: string | undefined;

function prettyOs(): string {
  if (osName !== undefined) return osName;
  try {
    const m = /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(readFileSync('/etc/os-release', 'utf8'));
    osName = m?.[1] ?? process.platform;
  } catch {
    osName = process.platform;
  }
  return osName;
}

export function gatherFacts(
  config: AgentConfig,
  version: string,
  startedAt: number,
  now = Date.now(),
): Facts {
  const addresses: string[] = [];
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (!a.internal || a.address === config.bind) addresses.push(a.address);
  }
  if (config.bind && !addresses.includes(config.bind)) addresses.unshift(config.bind);
  return {
    hostname: hostname(),
    os: prettyOs(),
    kernel: release(),
    arch: arch(),
    addresses: addresses.slice(0, 64),
    labels: config.labels,
    version,
    uptimeSec: Math.round(uptime()),
    agentUptimeSec: Math.round((now - startedAt) / 1000),
    load: loadavg().map((l) => Math.round(l * 100) / 100),
    roots: config.roots,
    runAs: config.runAs,
    heartbeatMs: config.heartbeatMs,
  };
}
