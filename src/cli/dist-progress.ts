/**
 * What `canopy dist` prints while a distribution runs and when it ends: one
 * progress line for the fleet (bytes, rate, ETA, hosts complete per IDC,
 * the slowest hosts) and the closing report (wall time, the ratio to the
 * single-link bound S/B when the link rate is known, the copies the source
 * uploaded, per-host times), and for `--activate together` what became of
 * each host (activated, already current, discarded, failed) and the one-line
 * verdict. Pure functions of the coordinator's numbers, so they are
 * unit-tested without a fleet.
 */
import type { DistProgress, HostResult } from '../coordinator/index.js';
import { CanopyError } from '../errors/index.js';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function bytes(n: number): string {
  let v = n;
  let u = 0;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${UNITS[u]}`;
}

export function seconds(s: number): string {
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}

/** One line: `[#####.....]  52%  8.0 GiB / 16.0 GiB  98.1 MiB/s  ETA 1m22s  idc-a 3/8 idc-b 0/8  slowest: h7 12%` */
export function progressLine(p: DistProgress, width = 20): string {
  const frac = p.totalBytes > 0 ? Math.min(1, p.bytes / p.totalBytes) : 1;
  const filled = Math.round(frac * width);
  const parts = [
    `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`,
    `${String(Math.floor(frac * 100)).padStart(3)}%`,
    `${bytes(p.bytes)} / ${bytes(p.totalBytes)}`,
    `${bytes(p.rate)}/s`,
    `ETA ${p.etaSeconds === null ? '?' : seconds(p.etaSeconds)}`,
  ];
  const idcs = Object.entries(p.idcs).sort(([a], [b]) => a.localeCompare(b));
  parts.push(
    idcs.length === 1 && idcs[0]?.[0] === ''
      ? `${p.complete}/${p.hosts} hosts`
      : idcs.map(([idc, r]) => `${idc || '(no idc)'} ${r.complete}/${r.hosts}`).join(' '),
  );
  if (p.slowest.length > 0 && p.complete < p.hosts) {
    const pct = (b: number) => `${Math.floor((b * 100) / Math.max(1, p.size))}%`;
    parts.push(`slowest: ${p.slowest.map((s) => `${s.host} ${pct(s.bytes)}`).join(', ')}`);
  }
  if (p.failedPeers.length > 0) parts.push(`re-parented around: ${p.failedPeers.join(' ')}`);
  if (p.activation) parts.push(stepText(p.activation));
  return parts.join('  ');
}

/** `staged 5/8`, `verifying the staged copies on 8 hosts`, `NOT activating: ... (h3 lacks the file)`. */
function stepText(a: NonNullable<DistProgress['activation']>): string {
  const switching = a.staged;
  const lacking = a.lacking.map((l) => l.host);
  const why = lacking.length
    ? ` (${lacking.slice(0, 3).join(', ')}${lacking.length > 3 ? ', ...' : ''} ${lacking.length === 1 ? 'lacks' : 'lack'} the file)`
    : '';
  switch (a.step) {
    case 'stage':
      return `staged ${a.staged + a.current}/${a.hosts}${why}`;
    case 'verify':
      return `verifying the staged copies on ${switching} hosts`;
    case 'activate':
      return `activating on ${switching} hosts`;
    case 'discard':
      return `NOT activating: discarding the staged copies${why}`;
    case 'done':
      return 'done';
  }
}

/** What became of one host of an --activate together distribution. */
export type HostOutcome = 'activated' | 'current' | 'discarded' | 'failed';

export function hostOutcome(r: Pick<HostResult, 'state' | 'files'>): HostOutcome {
  const file = r.files?.[0];
  if (r.state === 'ok') return file?.state === 'unchanged' ? 'current' : 'activated';
  return file?.state === 'discarded' ? 'discarded' : 'failed';
}

export interface ActivationSummary {
  /** Every host holds the new file (switched now, or already had it). */
  activated: boolean;
  hosts: number;
  switched: string[];
  current: string[];
  discarded: string[];
  /** Hosts that lack the file or failed a step, and why (first line). */
  failed: { host: string; why: string }[];
  /** Hosts that were not activated because of others, and whose staged copy could not be removed. */
  notRemoved: { host: string; why: string }[];
}

/** Sorts an --activate together distribution's results into what became of each host. */
export function activationSummary(results: readonly HostResult[], hosts: number): ActivationSummary {
  const s: ActivationSummary = {
    activated: false,
    hosts,
    switched: [],
    current: [],
    discarded: [],
    failed: [],
    notRemoved: [],
  };
  for (const r of results) {
    const why = (r.error ?? r.state).split('\n')[0] ?? r.state;
    const o = hostOutcome(r);
    if (o === 'activated') s.switched.push(r.host);
    else if (o === 'current') s.current.push(r.host);
    else if (o === 'discarded') s.discarded.push(r.host);
    else if (r.files?.[0]?.code === 'DIST_NOT_ACTIVATED') s.notRemoved.push({ host: r.host, why });
    else s.failed.push({ host: r.host, why });
  }
  s.activated = s.switched.length + s.current.length === hosts && hosts > 0;
  return s;
}

/** The verdict: `activated together on 8 of 8 hosts`, or `NOT activated: 2 of 8 hosts lack the file (...)`. */
export function activationLines(s: ActivationSummary): string[] {
  const have = s.switched.length + s.current.length;
  const already = s.current.length ? ` (${s.current.length} already had it)` : '';
  if (s.activated) return [`activated together on ${have} of ${s.hosts} hosts${already}`];
  const list = (xs: { host: string; why: string }[]) =>
    xs
      .slice(0, 5)
      .map((x) => `${x.host}: ${clip(x.why)}`)
      .join(', ') + (xs.length > 5 ? `, and ${xs.length - 5} more` : '');
  if (s.switched.length > 0) {
    return [
      `activated on ${have} of ${s.hosts} hosts, NOT on ${s.hosts - have} (${list(s.failed.concat(s.notRemoved))}): ` +
        'the fleet runs a mix of old and new; fix those hosts and run the distribution again',
    ];
  }
  const removed =
    s.notRemoved.length === 0
      ? 'staged copies removed'
      : `staged copies removed on ${s.discarded.length} hosts, NOT on ${list(s.notRemoved)}`;
  return [
    `NOT activated: ${s.failed.length} of ${s.hosts} hosts lack the file (${list(s.failed)}); ` +
      `${removed}; nothing changed${already}`,
  ];
}

function clip(text: string, max = 200): string {
  return text.length > max ? `${text.slice(0, max - 3)}...` : text;
}

export interface Report {
  hosts: number;
  ok: number;
  size: number;
  wallSeconds: number;
  sourceBytes: number;
  /** Bytes per second of each host's link, when given. */
  linkRate?: number;
}

/** The closing summary line(s). */
export function reportLines(r: Report): string[] {
  const copies = r.size > 0 ? r.sourceBytes / r.size : 0;
  const lines = [
    `${r.ok} of ${r.hosts} hosts have the file (${bytes(r.size)}) in ${seconds(r.wallSeconds)}; ` +
      `the source uploaded ${copies.toFixed(2)} copies (${bytes(r.sourceBytes)})`,
  ];
  if (r.linkRate) {
    const bound = r.size / r.linkRate;
    lines.push(
      `single-link bound S/B = ${seconds(bound)} at ${bytes(r.linkRate)}/s: ` +
        `${(r.wallSeconds / bound).toFixed(2)}x the bound`,
    );
  }
  return lines;
}

/**
 * A rate: "40MB/s" (decimal), "32MiB/s" (binary), "25Mbit/s" or "100Mbps"
 * (bits), or a number of bytes per second. Returns bytes per second.
 */
export function parseRate(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b|bit|bps|b\/s|bit\/s)?(\/s)?$/i.exec(text.trim());
  const unit = m?.[4] ?? '';
  // B is bytes, b bits (as in 25Mb/s); "bit" and "bps" in any case are bits.
  const bits = /^(bit|bps)/i.test(unit) || unit.startsWith('b');
  const prefix = (m?.[2] ?? '').toLowerCase();
  const base = m?.[3] ? 1024 : 1000;
  const mult = { '': 1, k: base, m: base ** 2, g: base ** 3, t: base ** 4 }[prefix] ?? 1;
  const n = m ? (Number(m[1]) * mult) / (bits ? 8 : 1) : Number.NaN;
  if (!(n >= 1) || (m?.[4] === undefined && prefix !== '')) {
    throw new CanopyError(
      'USAGE',
      `${what}: "${text}" is not a rate; use e.g. 40MB/s, 32MiB/s, 25Mbit/s, 100Mbps or bytes per second`,
    );
  }
  return Math.floor(n);
}
