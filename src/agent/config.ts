/**
 * The agent's configuration: a YAML file (--config) and flags on top.
 * Unknown keys and bad values are errors naming the file and line.
 *
 *   name: web-01                 # defaults to the joined name, then the hostname
 *   roots: [/srv/app, /etc/app]  # the only directories it writes to or runs in
 *   run_as: [deploy]             # accounts it may run commands as (default: its own)
 *   labels: {role: web, idc: bj}
 *   heartbeat: 5s
 *   bind: 127.0.0.11             # source address for its connections
 *   coordinator: https://coord.example:7443   # overrides the address in the join token
 *   peer_listen: 198.18.1.11:7444  # serve chunks to other agents here (distribution relay)
 *   chunk_quota: 20G             # disk for the chunk store (default 10G)
 *   allow_setid: false           # install files with a setuid/setgid mode (default: refused)
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isAbsolute } from 'node:path';
import type * as Yaml from 'yaml';
import { CanopyError } from '../errors/index.js';

export interface AgentConfig {
  name?: string;
  roots: string[];
  runAs: string[];
  labels: Record<string, string>;
  heartbeatMs: number;
  bind?: string;
  coordinator?: string;
  reconnectMaxMs: number;
  /** `host:port` of the peer server (chunk relay); none when unset. */
  peerListen?: string;
  chunkQuotaBytes: number;
  /**
   * Whether files may be installed with a setuid or setgid mode. Off by default: a set-id file
   * owned by root runs as root, whatever run_as allows.
   */
  allowSetid: boolean;
}

export const DEFAULT_AGENT_CONFIG: AgentConfig = {
  roots: [],
  runAs: [],
  labels: {},
  heartbeatMs: 5000,
  reconnectMaxMs: 15_000,
  chunkQuotaBytes: 10 * 1024 ** 3,
  allowSetid: false,
};

const KEYS = [
  'name',
  'roots',
  'run_as',
  'labels',
  'heartbeat',
  'bind',
  'coordinator',
  'reconnect_max',
  'peer_listen',
  'chunk_quota',
  'allow_setid',
] as const;
/** A host (agent) name. */
export const NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$/;
/** An account name (run_as). */
export const ACCOUNT_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;
const LABEL_KEY_RE = /^[A-Za-z0-9_][A-Za-z0-9_./-]{0,62}$/;
const LABEL_VALUE_RE = /^[A-Za-z0-9_.:/@+-]{0,253}$/;

/** "10G", "512M", "64K", "1T" (powers of 1024) or a number of bytes. */
export function parseSize(text: string | number, what: string): number {
  if (typeof text === 'number' && Number.isInteger(text) && text > 0) return text;
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT])?i?B?$/i.exec(String(text).trim());
  const unit = { K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[(m?.[2] ?? '').toUpperCase()] ?? 1;
  const n = m ? Math.floor(Number(m[1]) * unit) : Number.NaN;
  if (!(n > 0)) throw new CanopyError('USAGE', `${what}: "${text}" is not a size (use e.g. 512M, 10G)`);
  return n;
}

/** "5s", "500ms", "2m", or a number of seconds. */
export function parseDuration(text: string | number, what: string): number {
  if (typeof text === 'number' && Number.isFinite(text) && text > 0) return Math.round(text * 1000);
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(String(text).trim());
  const n = m ? Number(m[1]) : Number.NaN;
  if (!m || !(n > 0)) {
    throw new CanopyError('USAGE', `${what}: "${text}" is not a duration (use e.g. 500ms, 5s, 2m, 1h, 7d)`);
  }
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] ?? 's'] ?? 1000;
  return Math.round(n * unit);
}

export function checkAgentConfig(c: AgentConfig, where: (key: string) => string): void {
  const bad = (key: string, msg: string) => {
    throw new CanopyError('AGENT_CONFIG', `${where(key)}: ${msg}`);
  };
  if (c.name !== undefined && !NAME_RE.test(c.name)) bad('name', `"${c.name}" is not a valid host name`);
  for (const r of c.roots) if (!isAbsolute(r)) bad('roots', `root "${r}" must be an absolute path`);
  for (const a of c.runAs) if (!ACCOUNT_RE.test(a)) bad('run_as', `"${a}" is not an account name`);
  for (const [k, v] of Object.entries(c.labels)) {
    if (!LABEL_KEY_RE.test(k)) bad('labels', `label key "${k}" is not valid`);
    if (!LABEL_VALUE_RE.test(v)) bad('labels', `label ${k} has an invalid value "${v}"`);
  }
  if (c.coordinator !== undefined && !/^https:\/\/[^/\s]+$/.test(c.coordinator)) {
    bad('coordinator', `"${c.coordinator}" is not https://HOST:PORT`);
  }
  if (c.heartbeatMs < 100) bad('heartbeat', 'must be at least 100ms');
  if (c.peerListen !== undefined && !parseHostPort(c.peerListen)) {
    bad(
      'peer_listen',
      `"${c.peerListen}" is not HOST:PORT (e.g. 198.18.1.11:7444, or 127.0.0.1:0 for any port)`,
    );
  }
}

/** Reads a config file over the defaults. */
export function loadAgentConfig(path: string): AgentConfig {
  // yaml is CommonJS and large: required only when a config file is read (see agent.ts on memory).
  const { isMap, LineCounter, parseDocument } = createRequire(import.meta.url)('yaml') as typeof Yaml;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new CanopyError('INPUT_NOT_FOUND', `agent config ${path}: ${(err as Error).message}`, { path });
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const e = doc.errors[0];
    const pos = e?.linePos?.[0];
    throw new CanopyError('AGENT_CONFIG', `${path}:${pos?.line ?? 1}: ${e?.message.split('\n')[0]}`, {
      file: path,
      line: pos?.line,
    });
  }
  const lineOf = (key: string): number => {
    if (!isMap(doc.contents)) return 1;
    for (const item of doc.contents.items) {
      const k = item.key as { value?: unknown; range?: [number, number, number] };
      if (k.value === key && k.range) return lines.linePos(k.range[0]).line;
    }
    return 1;
  };
  const raw = (doc.toJS() ?? {}) as Record<string, unknown>;
  if (typeof raw !== 'object' || Array.isArray(raw)) {
    throw new CanopyError(
      'AGENT_CONFIG',
      `${path}:1: the agent config must be a mapping of ${KEYS.join(', ')}`,
    );
  }
  const where = (key: string) => `${path}:${lineOf(key)}: ${key}`;
  for (const key of Object.keys(raw)) {
    if (!(KEYS as readonly string[]).includes(key)) {
      throw new CanopyError('AGENT_CONFIG', `${where(key)}: unknown key (known: ${KEYS.join(', ')})`, {
        file: path,
        line: lineOf(key),
      });
    }
  }
  const list = (key: string): string[] => {
    const v = raw[key];
    if (v === undefined) return [];
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) {
      throw new CanopyError('AGENT_CONFIG', `${where(key)}: must be a list of strings`);
    }
    return v as string[];
  };
  const str = (key: string): string | undefined => {
    const v = raw[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'string') throw new CanopyError('AGENT_CONFIG', `${where(key)}: must be a string`);
    return v;
  };
  const labels = raw.labels ?? {};
  if (typeof labels !== 'object' || labels === null || Array.isArray(labels)) {
    throw new CanopyError('AGENT_CONFIG', `${where('labels')}: must be a mapping of label: value`);
  }
  const config: AgentConfig = {
    ...DEFAULT_AGENT_CONFIG,
    roots: list('roots'),
    runAs: list('run_as'),
    labels: Object.fromEntries(Object.entries(labels).map(([k, v]) => [k, String(v)])),
  };
  const name = str('name');
  if (name !== undefined) config.name = name;
  const bind = str('bind');
  if (bind !== undefined) config.bind = bind;
  const coordinator = str('coordinator');
  if (coordinator !== undefined) config.coordinator = coordinator;
  if (raw.heartbeat !== undefined)
    config.heartbeatMs = parseDuration(raw.heartbeat as string, where('heartbeat'));
  if (raw.reconnect_max !== undefined)
    config.reconnectMaxMs = parseDuration(raw.reconnect_max as string, where('reconnect_max'));
  const peerListen = str('peer_listen');
  if (peerListen !== undefined) config.peerListen = peerListen;
  if (raw.chunk_quota !== undefined)
    config.chunkQuotaBytes = parseSize(raw.chunk_quota as string, where('chunk_quota'));
  if (raw.allow_setid !== undefined) {
    if (typeof raw.allow_setid !== 'boolean') {
      throw new CanopyError('AGENT_CONFIG', `${where('allow_setid')}: must be true or false`);
    }
    config.allowSetid = raw.allow_setid;
  }
  checkAgentConfig(config, where);
  return config;
}

/** `host:port` (IPv6 in brackets), or undefined when malformed. */
export function parseHostPort(text: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9_.-]+)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || !(port >= 0 && port <= 65535)) return undefined;
  return { host: m[1] ?? m[2] ?? '', port };
}
