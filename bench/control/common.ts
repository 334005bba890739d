/**
 * What the control-plane bench's driver (control-bench.ts) and its simulator
 * workers (sim-agents.ts) share: the admin API client (HTTPS, pinned CA,
 * bearer token, keep-alive), the driver <-> worker IPC messages, and
 * reading a process's RSS and CPU time from /proc.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { sseParser } from '../../src/cli/sse.js';
import { COORDINATOR_SAN, checkSan } from '../../src/pki/index.js';

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across processes on one machine. */
export function wallMs(): number {
  return performance.timeOrigin + performance.now();
}

export interface AdminSettings {
  url: string;
  token: string;
  ca: string;
}

/** The admin side of the coordinator's HTTP API, over a few kept-alive TLS 1.3 connections. */
export class AdminApi {
  private readonly agent: Agent;

  constructor(
    readonly settings: AdminSettings,
    maxSockets = 8,
  ) {
    this.agent = new Agent({
      keepAlive: true,
      maxSockets,
      ca: settings.ca,
      minVersion: 'TLSv1.3',
      checkServerIdentity: checkSan(COORDINATOR_SAN),
    });
  }

  close(): void {
    this.agent.destroy();
  }

  /** A JSON request; rejects on a non-2xx answer with the API's code and message. */
  call<T>(method: string, path: string, body?: unknown, timeoutMs = 60_000): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = request(
        `${this.settings.url}${path}`,
        {
          method,
          agent: this.agent,
          headers: {
            authorization: `Bearer ${this.settings.token}`,
            ...(payload
              ? { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(payload)) }
              : {}),
          },
          timeout: timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown = text;
            try {
              parsed = JSON.parse(text);
            } catch {
              // plain text (metrics)
            }
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) resolve(parsed as T);
            else {
              const b = (parsed ?? {}) as { code?: string; message?: string };
              reject(new Error(`${method} ${path}: HTTP ${status} ${b.code ?? ''} ${b.message ?? text}`));
            }
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer within ${timeoutMs} ms`)));
      req.on('error', reject);
      req.end(payload);
    });
  }

  /**
   * Follows a server-sent event stream until the server ends it (or `stop`
   * returns true for an event, which closes it). Resolves with the number of
   * events seen; rejects if the connection fails or `timeoutMs` passes.
   */
  events(
    path: string,
    onEvent: (event: string, data: string) => boolean,
    timeoutMs: number,
  ): Promise<number> {
    return new Promise((resolve, reject) => {
      let seen = 0;
      let settled = false;
      const done = (err?: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(seen);
      };
      const req = request(`${this.settings.url}${path}`, {
        method: 'GET',
        // Its own connection: the stream holds it for the whole run.
        agent: false,
        ca: this.settings.ca,
        minVersion: 'TLSv1.3',
        checkServerIdentity: checkSan(COORDINATOR_SAN),
        headers: { authorization: `Bearer ${this.settings.token}`, accept: 'text/event-stream' },
      });
      const timer = setTimeout(() => {
        req.destroy();
        done(new Error(`GET ${path}: the stream did not end within ${timeoutMs} ms (${seen} events)`));
      }, timeoutMs);
      req.on('error', (err) => done(err));
      req.on('response', (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          done(new Error(`GET ${path}: HTTP ${res.statusCode}`));
          return;
        }
        res.setEncoding('utf8');
        const feed = sseParser((event, data) => {
          seen++;
          return onEvent(event, data);
        });
        res.on('data', (chunk: string) => {
          if (feed(chunk)) {
            req.destroy();
            done();
          }
        });
        res.on('end', () => done());
        res.on('error', (err) => done(err));
      });
      req.end();
    });
  }
}

// ---------------------------------------------------------------------------
// driver <-> worker IPC: the driver sends requests, the worker answers each by id

export interface WorkerInit {
  url: string;
  adminToken: string;
  ca: string;
  /** The simulated agents this worker holds: name and source address. */
  agents: { name: string; address: string }[];
  /** Joins in flight at once in this worker. */
  joinConcurrency: number;
  /** TLS handshakes in flight at once in this worker while connecting. */
  connectConcurrency: number;
  heartbeatMs: number;
  /** Experiments only (a real agent does both): ping with every heartbeat, pull every pullIntervalMs. */
  ping: boolean;
  periodicPull: boolean;
}

export type WorkerRequest =
  | { id: number; cmd: 'init'; init: WorkerInit }
  | { id: number; cmd: 'join' }
  | { id: number; cmd: 'connect' }
  | { id: number; cmd: 'status' }
  | { id: number; cmd: 'run-stats'; runId: string }
  | { id: number; cmd: 'stop' };

/** A request without its id (the Worker wrapper numbers them). */
export type WorkerCommand = WorkerRequest extends infer R
  ? R extends unknown
    ? Omit<R, 'id'>
    : never
  : never;

export interface JoinReport {
  joined: number;
  failed: number;
  firstError: string | null;
  seconds: number;
  /** CPU seconds this worker spent on it. */
  cpuSeconds: number;
}

export interface ConnectReport {
  /** Agents that got their welcome (after retries). */
  welcomed: number;
  /** First attempts that failed (the agent retried after a second, as a real one backs off and retries). */
  failed: number;
  firstError: string | null;
  /** When the last agent of this worker got its welcome (wallMs). */
  lastWelcomeAt: number;
  seconds: number;
  cpuSeconds: number;
}

export interface WorkerStatus {
  open: number;
  welcomed: number;
  disconnects: number;
  reconnects: number;
  refusals: number;
  invalid: number;
  firstProblem: string | null;
  cpuSeconds: number;
  rssMb: number;
}

export interface RunStats {
  tasks: number;
  duplicates: number;
  resultAcks: number;
  /** wallMs of the first and last new task received, and of the last result sent; 0 if none. */
  firstTaskAt: number;
  lastTaskAt: number;
  lastResultAt: number;
  /** wallMs of the last task received again (re-sent by the coordinator on a pull); 0 if none. */
  lastDuplicateAt: number;
}

export type WorkerReply =
  | { id: number; ok: true; data: unknown }
  | { id: number; ok: false; error: string }
  | { id: 0; ok: true; data: { ready: true } };

// ---------------------------------------------------------------------------
// /proc

let clockTicks: number | undefined;

function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

export interface ProcStats {
  rssMb: number;
  /** VmRSS = RssAnon (heap, stacks) + RssFile (mapped files: mostly the node binary) + RssShmem. */
  anonMb: number;
  fileMb: number;
  hwmMb: number;
  cpuSeconds: number;
}

/** VmRSS / VmHWM from /proc/PID/status and utime + stime from /proc/PID/stat; undefined if it is gone. */
export function procStats(pid: number): ProcStats | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0);
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces) in parentheses; utime and stime are 14 and 15.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(rest[11]) + Number(rest[12]);
    return {
      rssMb: kb('VmRSS') / 1024,
      anonMb: kb('RssAnon') / 1024,
      fileMb: kb('RssFile') / 1024,
      hwmMb: kb('VmHWM') / 1024,
      cpuSeconds: ticks / ticksPerSecond(),
    };
  } catch {
    return undefined;
  }
}

/** Machine-wide TCP listen-queue counters (/proc/net/netstat TcpExt): accept-queue overflows and SYN cookies. */
export interface ListenCounters {
  listenOverflows: number;
  listenDrops: number;
  syncookiesSent: number;
}

export function listenCounters(): ListenCounters {
  const out: ListenCounters = { listenOverflows: 0, listenDrops: 0, syncookiesSent: 0 };
  try {
    const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n');
    for (let i = 0; i + 1 < lines.length; i += 2) {
      const keys = (lines[i] ?? '').split(/\s+/);
      const values = (lines[i + 1] ?? '').split(/\s+/);
      if (keys[0] !== 'TcpExt:') continue;
      const get = (k: string) => Number(values[keys.indexOf(k)] ?? 0) || 0;
      out.listenOverflows = get('ListenOverflows');
      out.listenDrops = get('ListenDrops');
      out.syncookiesSent = get('SyncookiesSent');
    }
  } catch {
    // not Linux
  }
  return out;
}
