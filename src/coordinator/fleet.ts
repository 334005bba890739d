/**
 * The fleet: every agent that joined, its certificates, and its live
 * control session. It admits agents (join with a token, mutual TLS on every
 * connection, revocation, told to every online agent for its peer server),
 * tracks heartbeats (offline after three missed),
 * relays protocol messages to the run manager, and implements the Courier
 * the run manager delivers tasks through.
 */
import type { PeerCertificate } from 'node:tls';
import type { Logger } from 'pino';
import type { WebSocket } from 'ws';
import { CanopyError } from '../errors/index.js';
import { type CertAndKey, normalizeSerial, signCsr } from '../pki/index.js';
import {
  type AgentMessage,
  type CoordinatorMessage,
  decodeAgentMessage,
  encode,
  type Facts,
  MAX_REVOKED_SERIALS,
  type Progress,
  type Revoked,
  type WithoutV,
} from '../protocol/index.js';
import type { AgentStatus, Courier, RunManager } from './runs.js';
import type { AgentRecord, Store } from './store.js';
import type { TokenService } from './tokens.js';

export interface AgentView {
  name: string;
  online: boolean;
  revoked: boolean;
  joinedAt: number;
  lastHeartbeat: number | null;
  connectedFrom: string | null;
  certNotAfter: number;
  facts: Facts | null;
}

interface Session {
  name: string;
  ws: WebSocket;
  ip: string;
  serial: string;
  connectedAt: number;
  lastHeartbeat: number;
  heartbeatMs: number;
  facts: Facts | undefined;
}

export interface FleetOptions {
  store: Store;
  tokens: TokenService;
  ca: CertAndKey;
  certTtlMs: number;
  logger: Logger;
  now?: () => number;
  count: (name: string, labels?: Record<string, string>) => void;
}

export type Admission =
  | { ok: true; name: string; serial: string }
  | { ok: false; status: number; code: string; why: string };

const DEFAULT_HEARTBEAT_MS = 5_000;
export const PULL_INTERVAL_MS = 30_000;

/** Where a push task's content comes from (the push manager). */
export interface ContentSource {
  content(
    agent: string,
    taskId: string,
    indexes: number[],
  ): { files: { index: number; data: string }[]; error?: string };
}

/** The agent name the coordinator's own peer server (the distribution source) uses. */
export const RESERVED_AGENT_NAME = 'canopy-source';

export class Fleet implements Courier {
  private readonly store: Store;
  private readonly tokens: TokenService;
  private readonly ca: CertAndKey;
  private readonly certTtlMs: number;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly count: FleetOptions['count'];
  private readonly records = new Map<string, AgentRecord>();
  private readonly sessions = new Map<string, Session>();
  private readonly revokedSerials = new Set<string>();
  private sweeper: NodeJS.Timeout | undefined;
  runs: RunManager | undefined;
  /** Answers push tasks' content requests. */
  content: ContentSource | undefined;
  /** Receives distribution tasks' progress. */
  progress: ((agent: string, p: Progress) => void) | undefined;
  /** Told after an agent is revoked (its serials are then in isRevokedSerial). */
  revoked: ((name: string) => void) | undefined;
  /** Told after an agent's hello was answered, with the peer address it had before (from the store). */
  welcomed: ((name: string, previousPeer: string | undefined) => void) | undefined;

  constructor(opts: FleetOptions) {
    this.store = opts.store;
    this.tokens = opts.tokens;
    this.ca = opts.ca;
    this.certTtlMs = opts.certTtlMs;
    this.log = opts.logger;
    this.now = opts.now ?? Date.now;
    this.count = opts.count;
  }

  async load(): Promise<void> {
    for (const r of await this.store.values(this.store.agents)) this.records.set(r.name, r);
    for (const [serial] of await this.store.entries(this.store.revoked))
      this.revokedSerials.add(normalizeSerial(serial));
    this.sweeper = setInterval(() => this.sweep(), 1000);
    this.sweeper.unref();
  }

  stop(): void {
    clearInterval(this.sweeper);
    for (const s of this.sessions.values()) s.ws.terminate();
    this.sessions.clear();
  }

  get connected(): number {
    return this.sessions.size;
  }

  get known(): number {
    return this.records.size;
  }

  status(name: string): AgentStatus {
    const r = this.records.get(name);
    if (!r) return 'unknown';
    if (r.revokedAt !== undefined) return 'revoked';
    return this.sessions.has(name) ? 'online' : 'offline';
  }

  lastSeen(name: string): number | undefined {
    return this.sessions.get(name)?.lastHeartbeat ?? this.records.get(name)?.lastSeen;
  }

  /** The peer address an agent reported last (online: this session's hello; else the stored one). */
  peerOf(name: string): string | undefined {
    return this.sessions.get(name)?.facts?.peer ?? this.records.get(name)?.facts?.peer ?? undefined;
  }

  send(name: string, message: WithoutV<CoordinatorMessage>): boolean {
    const s = this.sessions.get(name);
    if (!s || s.ws.readyState !== s.ws.OPEN) return false;
    s.ws.send(encode(message));
    return true;
  }

  /**
   * Labels reported by each joined agent (targets resolve against them). Revoked agents stay
   * targetable by name, so a run on one reports it `unreachable` (revoked) instead of an unknown target.
   */
  labels(): Map<string, Record<string, string>> {
    const out = new Map<string, Record<string, string>>();
    for (const r of this.records.values()) {
      out.set(r.name, this.sessions.get(r.name)?.facts?.labels ?? r.facts?.labels ?? {});
    }
    return out;
  }

  /** True when a certificate serial (hex, any case) was revoked. */
  isRevokedSerial(serial: string): boolean {
    return this.revokedSerials.has(normalizeSerial(serial));
  }

  list(): AgentView[] {
    return [...this.records.values()]
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((r) => {
        const s = this.sessions.get(r.name);
        return {
          name: r.name,
          online: s !== undefined,
          revoked: r.revokedAt !== undefined,
          joinedAt: r.joinedAt,
          lastHeartbeat: s?.lastHeartbeat ?? r.lastSeen ?? null,
          connectedFrom: s?.ip ?? null,
          certNotAfter: r.certNotAfter,
          facts: s?.facts ?? r.facts ?? null,
        };
      });
  }

  /** A join: burn the token, sign the agent's CSR for NAME. */
  async join(req: {
    tokenId: string;
    secret: string;
    name: string;
    csr: string;
    ip: string;
  }): Promise<{ cert: string; ca: string }> {
    if (req.name === RESERVED_AGENT_NAME) {
      throw new CanopyError(
        'JOIN_FAILED',
        `the name "${RESERVED_AGENT_NAME}" is reserved for the coordinator's distribution source; join under another name`,
      );
    }
    // Check the CSR and name before burning the token: a bad request must not cost the operator a token.
    // (A certificate signed here for a token that then fails is never recorded, so never admitted.)
    const issued = await signCsr(this.ca, req.csr, { name: req.name, ttlMs: this.certTtlMs });
    await this.tokens.consume(req.tokenId, req.secret, req.name);
    const previous = this.records.get(req.name);
    const record: AgentRecord = {
      name: req.name,
      joinedAt: this.now(),
      serials: [issued.serial],
      certNotAfter: issued.notAfter.getTime(),
      address: req.ip,
      ...(previous?.facts ? { facts: previous.facts } : {}),
    };
    const ops = [this.store.put(this.store.agents, req.name, record)];
    // A re-join replaces the agent's identity: its old certificates stop working.
    for (const serial of previous?.serials ?? []) {
      ops.push(this.store.put(this.store.revoked, serial, { name: req.name, at: this.now() }));
      this.revokedSerials.add(normalizeSerial(serial));
    }
    await this.store.commit(ops);
    this.records.set(req.name, record);
    this.sessions.get(req.name)?.ws.terminate();
    if (previous) this.broadcastRevoked();
    this.log.info(
      { agent: req.name, ip: req.ip, token: req.tokenId, rejoin: previous !== undefined },
      'agent joined',
    );
    return { cert: issued.certPem, ca: this.ca.certPem };
  }

  async revoke(name: string, by: string): Promise<AgentRecord> {
    const r = this.records.get(name);
    if (!r) throw new CanopyError('AGENT_UNKNOWN', `no agent named "${name}" has joined; see: canopy agents`);
    const now = this.now();
    const revoked = { ...r, revokedAt: now };
    await this.store.commit([
      this.store.put(this.store.agents, name, revoked),
      ...r.serials.map((serial) => this.store.put(this.store.revoked, serial, { name, at: now })),
    ]);
    for (const s of r.serials) this.revokedSerials.add(normalizeSerial(s));
    this.records.set(name, revoked);
    const s = this.sessions.get(name);
    if (s) {
      s.ws.close(4003, 'revoked');
      this.sessions.delete(name);
    }
    this.log.warn({ agent: name, by }, 'agent revoked');
    this.broadcastRevoked();
    this.revoked?.(name);
    return revoked;
  }

  /** Decides whether a TLS client may open a control session. */
  admit(
    authorized: boolean,
    authError: string | undefined,
    cert: PeerCertificate | undefined,
    ip: string,
  ): Admission {
    const refuse = (status: number, code: string, why: string): Admission => {
      this.log.warn(
        { who: cert?.subject?.CN ?? null, ip, serial: cert?.serialNumber ?? null, code },
        `refused agent connection: ${why}`,
      );
      this.count('canopy_refusals_total', { reason: code });
      return { ok: false, status, code, why };
    };
    if (!cert?.subject)
      return refuse(
        401,
        'AGENT_CERT_REFUSED',
        'no client certificate (join first: canopy agent --join TOKEN)',
      );
    if (!authorized)
      return refuse(
        401,
        'AGENT_CERT_REFUSED',
        `client certificate not issued by this coordinator's CA (${authError ?? 'unverified'})`,
      );
    const name = String(cert.subject.CN ?? '');
    const serial = normalizeSerial(cert.serialNumber);
    const record = this.records.get(name);
    if (!record) return refuse(403, 'AGENT_UNKNOWN', `certificate for "${name}", which has not joined`);
    if (record.revokedAt !== undefined || this.revokedSerials.has(serial)) {
      return refuse(403, 'AGENT_REVOKED', `agent "${name}" is revoked (certificate ${serial})`);
    }
    if (!record.serials.some((s) => normalizeSerial(s) === serial)) {
      return refuse(403, 'AGENT_CERT_REFUSED', `certificate ${serial} was not issued to "${name}"`);
    }
    return { ok: true, name, serial };
  }

  /** A mutually authenticated WebSocket from an admitted agent. */
  attach(ws: WebSocket, name: string, serial: string, ip: string): void {
    const previous = this.sessions.get(name);
    if (previous) {
      this.log.info({ agent: name }, 'agent reconnected; closing its previous session');
      previous.ws.terminate();
    }
    const now = this.now();
    const session: Session = {
      name,
      ws,
      ip,
      serial,
      connectedAt: now,
      lastHeartbeat: now,
      heartbeatMs: DEFAULT_HEARTBEAT_MS,
      facts: undefined,
    };
    this.sessions.set(name, session);
    this.log.info({ agent: name, ip }, 'agent connected');
    ws.on('message', (data, isBinary) => {
      if (isBinary) {
        this.invalid(session, 'binary frame');
        return;
      }
      const decoded = decodeAgentMessage(data.toString());
      if (!decoded.ok) {
        this.invalid(session, decoded.reason);
        return;
      }
      this.count('canopy_messages_received_total', { type: decoded.message.type });
      this.handle(session, decoded.message).catch((err: unknown) => {
        this.log.error({ err, agent: name, type: decoded.message.type }, 'handling an agent message failed');
      });
    });
    ws.on('close', (code, reason) => {
      if (this.sessions.get(name) === session) {
        this.sessions.delete(name);
        this.log.info({ agent: name, code, reason: reason.toString() }, 'agent disconnected');
        this.persistSeen(name, session.lastHeartbeat);
      }
    });
    ws.on('error', (err) => this.log.warn({ err, agent: name }, 'agent socket error'));
  }

  private invalid(session: Session, reason: string): void {
    this.count('canopy_messages_invalid_total');
    this.log.warn({ agent: session.name, reason }, 'refused an invalid message from an agent');
    this.send(session.name, { type: 'refuse', code: 'PROTOCOL_INVALID', message: reason });
  }

  private async handle(s: Session, m: AgentMessage): Promise<void> {
    switch (m.type) {
      case 'hello': {
        s.facts = m.facts;
        s.heartbeatMs = m.facts.heartbeatMs;
        s.lastHeartbeat = this.now();
        const r = this.records.get(s.name);
        const previousPeer = r?.facts?.peer;
        if (r) {
          const updated = { ...r, facts: m.facts, lastSeen: s.lastHeartbeat, address: s.ip };
          this.records.set(s.name, updated);
          await this.store.commit([this.store.put(this.store.agents, s.name, updated)]);
        }
        this.send(s.name, { type: 'welcome', now: this.now(), pullIntervalMs: PULL_INTERVAL_MS });
        // Nothing revoked: nothing to tell (an agent starts knowing no revoked serial).
        if (this.revokedSerials.size > 0) this.send(s.name, this.revokedMessage());
        this.deliverQueued(s.name, false);
        this.welcomed?.(s.name, previousPeer);
        return;
      }
      case 'heartbeat':
        s.lastHeartbeat = this.now();
        s.facts = m.facts;
        s.heartbeatMs = m.facts.heartbeatMs;
        return;
      case 'pull':
        this.deliverQueued(s.name, true);
        return;
      case 'ack':
        this.runs?.onAck(s.name, m.taskId);
        return;
      case 'result': {
        const ack = (await this.runs?.onResult(s.name, m.result)) ?? false;
        if (ack) this.send(s.name, { type: 'result-ack', taskId: m.result.taskId });
        return;
      }
      case 'fetch': {
        const reply = this.content?.content(s.name, m.taskId, m.files) ?? {
          files: [],
          error: 'this coordinator serves no push content',
        };
        this.send(s.name, { type: 'content', taskId: m.taskId, ...reply });
        return;
      }
      case 'renew': {
        const issued = await signCsr(this.ca, m.csr, { name: s.name, ttlMs: this.certTtlMs });
        const r = this.records.get(s.name);
        if (!r) return;
        const updated = {
          ...r,
          serials: [...r.serials, issued.serial],
          certNotAfter: issued.notAfter.getTime(),
        };
        await this.store.commit([this.store.put(this.store.agents, s.name, updated)]);
        this.records.set(s.name, updated);
        this.send(s.name, { type: 'renewed', cert: issued.certPem });
        this.log.info(
          { agent: s.name, serial: issued.serial, notAfter: issued.notAfter },
          'agent certificate renewed',
        );
        return;
      }
      case 'progress':
        this.progress?.(s.name, m);
        return;
      default:
        assertNeverMessage(m);
    }
  }

  /**
   * Tells every online agent the revoked serials, so their peer servers refuse those certificates
   * and hang up connections made with them (an agent that is offline now learns them at its hello).
   */
  private broadcastRevoked(): void {
    const message = encode(this.revokedMessage());
    let sent = 0;
    for (const s of this.sessions.values()) {
      if (s.ws.readyState !== s.ws.OPEN) continue;
      s.ws.send(message);
      sent++;
    }
    this.log.info({ serials: this.revokedSerials.size, agents: sent }, 'revoked serials sent to the agents');
  }

  /** The whole set each time (an agent replaces what it knew), capped at what the protocol carries. */
  private revokedMessage(): WithoutV<Revoked> {
    const serials = [...this.revokedSerials];
    if (serials.length > MAX_REVOKED_SERIALS) {
      this.log.error(
        { serials: serials.length, max: MAX_REVOKED_SERIALS },
        'more revoked serials than one message carries; agents learn only the last of them in this list',
      );
    }
    return { type: 'revoked', serials: serials.slice(-MAX_REVOKED_SERIALS) };
  }

  /** After hello every queued task (the agent may have restarted); on a pull only unacknowledged ones. */
  private deliverQueued(name: string, unackedOnly: boolean): void {
    const tasks = this.runs?.queuedFor(name, unackedOnly) ?? [];
    for (const task of tasks) this.send(name, { type: 'task', task });
  }

  private persistSeen(name: string, at: number): void {
    const r = this.records.get(name);
    if (!r) return;
    const updated = { ...r, lastSeen: at };
    this.records.set(name, updated);
    this.store.commit([this.store.put(this.store.agents, name, updated)]).catch((err: unknown) => {
      this.log.warn({ err, agent: name }, 'could not persist last-seen time');
    });
  }

  private sweep(): void {
    const now = this.now();
    for (const s of this.sessions.values()) {
      if (now - s.lastHeartbeat > 3 * s.heartbeatMs) {
        this.log.warn(
          { agent: s.name, lastHeartbeat: s.lastHeartbeat },
          'agent missed three heartbeats; marking it offline',
        );
        this.sessions.delete(s.name);
        this.persistSeen(s.name, s.lastHeartbeat);
        s.ws.terminate();
      }
    }
  }
}

function assertNeverMessage(m: never): never {
  throw new Error(`unhandled agent message ${JSON.stringify(m)}`);
}
