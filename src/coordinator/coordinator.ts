/**
 * The coordinator daemon, wired: store, identity, fleet, run manager, the
 * HTTPS listener (fastify API + the agents' WebSocket upgrade, TLS 1.3 with
 * client certificates), metrics, and the inventory watcher. The one place
 * that composes the coordinator's parts; each takes its collaborators as
 * constructor arguments.
 */
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { type FSWatcher, watch as watchFiles } from 'chokidar';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { WebSocketServer } from 'ws';
import { CanopyError, isCanopyError } from '../errors/index.js';
import { API_BODY_LIMIT, type ClientConfig, defaultClientConfigPath } from '../protocol/index.js';
import { type Inventory, loadInventory } from '../render/index.js';
import { registerApi } from './api.js';
import { DistManager } from './dists.js';
import { Fleet } from './fleet.js';
import { loadOrCreateIdentity, writeFileAtomic } from './identity.js';
import { Metrics } from './metrics.js';
import { PushManager } from './pushes.js';
import { RunManager } from './runs.js';
import { Store } from './store.js';
import type { FleetView } from './targets.js';
import { TokenService } from './tokens.js';

export interface CoordinatorOptions {
  dataDir: string;
  host: string;
  port: number;
  inventoryPath?: string;
  logger: Logger;
  version: string;
  /** Lifetime of agent certificates (renewed by agents at two thirds). */
  certTtlMs?: number;
  /** The URL agents dial (goes into join tokens); default https://HOST:PORT. */
  advertise?: string;
  /** Where to write the CLI's client config besides DATA/client.json (undefined: the user's default). */
  clientConfigPath?: string | null;
  now?: () => number;
}

export const DEFAULT_CERT_TTL_MS = 30 * 86_400_000;
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

export class Coordinator {
  private inventory: Inventory | undefined;
  private watcher: FSWatcher | undefined;
  private reloadTimer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly opts: CoordinatorOptions,
    readonly store: Store,
    readonly app: FastifyInstance,
    readonly fleet: Fleet,
    readonly runs: RunManager,
    readonly url: string,
    readonly adminToken: string,
    readonly adminTokenPath: string,
    readonly caFingerprint: string,
    readonly caPem: string,
    readonly clientConfigPaths: string[],
    readonly created: string[],
  ) {}

  static async start(opts: CoordinatorOptions): Promise<Coordinator> {
    const log = opts.logger;
    const now = opts.now ?? Date.now;
    await mkdir(opts.dataDir, { recursive: true, mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
      throw new CanopyError(
        'INPUT_NOT_FOUND',
        `--data ${opts.dataDir}: cannot be the coordinator's state directory: ${err.message}`,
        { path: opts.dataDir },
      );
    });
    let inventory: Inventory | undefined;
    if (opts.inventoryPath) inventory = loadInventory(opts.inventoryPath);
    const isIp = /^[\d.]+$|:/.test(opts.host);
    const identity = await loadOrCreateIdentity(opts.dataDir, {
      hostnames: isIp ? [] : [opts.host],
      ips: isIp && opts.host !== '0.0.0.0' && opts.host !== '::' ? [opts.host] : [],
    });
    const store = new Store(join(opts.dataDir, 'state'));
    await store.open();

    const metrics = new Metrics();
    const counters = new Map<string, (labels?: Record<string, string>, by?: number) => void>([
      [
        'canopy_messages_received_total',
        metrics.counter('canopy_messages_received_total', 'valid messages from agents, by type'),
      ],
      [
        'canopy_messages_invalid_total',
        metrics.counter('canopy_messages_invalid_total', 'messages from agents refused as invalid'),
      ],
      [
        'canopy_refusals_total',
        metrics.counter('canopy_refusals_total', 'refused API requests and agent connections, by reason'),
      ],
      [
        'canopy_host_results_total',
        metrics.counter('canopy_host_results_total', 'host results recorded, by state'),
      ],
      [
        'canopy_push_content_bytes_total',
        metrics.counter('canopy_push_content_bytes_total', 'file content bytes sent to agents for pushes'),
      ],
      [
        'canopy_inventory_reloads_total',
        metrics.counter('canopy_inventory_reloads_total', 'inventory reloads, by outcome'),
      ],
    ]);
    const count = (name: string, labels?: Record<string, string>, by?: number) =>
      counters.get(name)?.(labels, by);

    let url = opts.advertise ?? '';
    const tokens = new TokenService(store, () => url, identity.caFingerprint, now);
    const fleet = new Fleet({
      store,
      tokens,
      ca: identity.ca,
      certTtlMs: opts.certTtlMs ?? DEFAULT_CERT_TTL_MS,
      logger: log,
      now,
      count,
    });
    await fleet.load();
    let pushes: PushManager | undefined;
    let dists: DistManager | undefined;
    const runs = new RunManager({
      store,
      courier: fleet,
      logger: log,
      now,
      onResult: (state, late) => count('canopy_host_results_total', { state, late: String(late) }),
      decorate: (run, host, result) => pushes?.decorate(run, host, result) ?? result,
      onFinished: (run) => {
        pushes?.finished(run);
        dists?.finished(run);
      },
    });
    fleet.runs = runs;
    let advertised: string | undefined;
    dists = new DistManager({
      runs,
      fleet,
      ca: identity.ca,
      logger: log,
      host: opts.host,
      advertiseHost: () => advertised,
    });
    // Pushes hand their large src files to the distribution manager.
    pushes = new PushManager({
      runs,
      dists,
      logger: log,
      onContent: (bytes) => count('canopy_push_content_bytes_total', {}, bytes),
    });
    fleet.content = pushes;

    const app = Fastify({
      https: {
        key: identity.server.keyPem,
        cert: identity.server.certPem,
        ca: [identity.ca.certPem],
        requestCert: true,
        rejectUnauthorized: false,
        minVersion: 'TLSv1.3',
      },
      bodyLimit: API_BODY_LIMIT,
      logger: false,
    });
    let coordinator: Coordinator | undefined;
    const view = (): FleetView => ({
      inventory: coordinator?.inventory ?? inventory,
      agents: fleet.labels(),
    });
    // Before the listener waits for open requests: a push waiting for its distributions gives up.
    app.addHook('preClose', async () => pushes?.close());
    app.addHook('onClose', async () => dists?.close());
    registerApi(app, {
      fleet,
      runs,
      pushes,
      dists,
      tokens,
      metrics,
      logger: log,
      adminToken: identity.adminToken,
      caPem: identity.ca.certPem,
      version: opts.version,
      view,
      count,
    });
    metrics.gauge('canopy_agents_connected', 'agents with a live control session', () => fleet.connected);
    metrics.gauge('canopy_agents_known', 'agents that have joined', () => fleet.known);
    metrics.gauge('process_resident_memory_bytes', 'resident set size', () => process.memoryUsage.rss());
    metrics.gauge('process_cpu_seconds_total', 'user + system CPU time', () => {
      const u = process.cpuUsage();
      return (u.user + u.system) / 1e6;
    });

    const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_MESSAGE_BYTES });
    app.server.on('upgrade', (req, socket, head) => {
      const path = (req.url ?? '').split('?')[0];
      if (path !== '/v1/agent') {
        socket.end('HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
        return;
      }
      const tls = req.socket as TLSSocket;
      const cert = tls.getPeerCertificate?.();
      const admission = fleet.admit(
        tls.authorized,
        tls.authorizationError?.toString(),
        cert && Object.keys(cert).length > 0 ? cert : undefined,
        req.socket.remoteAddress ?? '?',
      );
      if (!admission.ok) {
        const body = JSON.stringify({ code: admission.code, message: admission.why });
        socket.end(
          `HTTP/1.1 ${admission.status} Refused\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
        );
        return;
      }
      wss.handleUpgrade(req, socket, head, (ws) =>
        fleet.attach(ws, admission.name, admission.serial, req.socket.remoteAddress ?? '?'),
      );
    });

    // A deep accept queue: thousands of agents reconnect at once after a coordinator restart.
    try {
      await app.listen({ host: opts.host, port: opts.port, backlog: 4096 });
    } catch (err) {
      await app.close().catch(() => {});
      await store.close().catch(() => {});
      throw listenError(opts.host, opts.port, err as NodeJS.ErrnoException);
    }
    const addr = app.server.address();
    const port = typeof addr === 'object' && addr ? addr.port : opts.port;
    const dialHost = opts.host === '0.0.0.0' || opts.host === '::' ? '127.0.0.1' : opts.host;
    if (!url) url = `https://${dialHost.includes(':') ? `[${dialHost}]` : dialHost}:${port}`;
    advertised = new URL(url).hostname.replace(/^\[|\]$/g, '');

    // Runs resume only once the listener is up, so resumed tasks can reach reconnecting agents.
    await runs.load();
    await dists.resume();
    fleet.progress = (agent, p) => dists?.progress(agent, p);
    fleet.revoked = (name) => dists?.dropRevoked(name);
    fleet.welcomed = (name, previousPeer) => dists?.welcomed(name, previousPeer);

    const client: ClientConfig = { url, token: identity.adminToken, ca: identity.ca.certPem };
    const clientPaths = [join(opts.dataDir, 'client.json')];
    const extra = opts.clientConfigPath === undefined ? defaultClientConfigPath() : opts.clientConfigPath;
    if (extra) clientPaths.push(extra);
    for (const p of clientPaths) {
      try {
        await mkdir(dirname(p), { recursive: true, mode: 0o700 });
        await writeFileAtomic(p, `${JSON.stringify(client, null, 2)}\n`);
      } catch (err) {
        log.warn({ err, path: p }, 'could not write the client config');
      }
    }

    coordinator = new Coordinator(
      opts,
      store,
      app,
      fleet,
      runs,
      url,
      identity.adminToken,
      identity.adminTokenPath,
      identity.caFingerprint,
      identity.ca.certPem,
      clientPaths,
      identity.created,
    );
    coordinator.inventory = inventory;
    if (opts.inventoryPath) coordinator.watchInventory(opts.inventoryPath, inventory);
    log.info(
      { url, data: opts.dataDir, agents: fleet.known, inventory: opts.inventoryPath ?? null },
      'coordinator started',
    );
    return coordinator;
  }

  /** Reloads the inventory when any of its files change; a broken edit keeps the last good one. */
  private watchInventory(path: string, initial: Inventory | undefined): void {
    const log = this.opts.logger;
    const files = initial ? [path, ...initial.files] : [path];
    this.watcher = watchFiles([...new Set(files)], {
      ignoreInitial: true,
      awaitWriteFinish: { stabilityThreshold: 100, pollInterval: 25 },
    });
    const reload = () => {
      try {
        const next = loadInventory(path);
        this.inventory = next;
        this.watcher?.add(next.files as string[]);
        log.info({ inventory: path, hosts: next.hosts.size, groups: next.groups.size }, 'inventory reloaded');
      } catch (err) {
        const subject = isCanopyError(err) ? err.subject : {};
        log.error(
          {
            inventory: path,
            file: subject.file ?? path,
            line: subject.line ?? null,
            code: isCanopyError(err) ? err.code : null,
            err,
          },
          `inventory reload failed; keeping the last good inventory: ${(err as Error).message}`,
        );
      }
    };
    this.watcher.on('all', () => {
      clearTimeout(this.reloadTimer);
      this.reloadTimer = setTimeout(reload, 150);
    });
    this.watcher.on('error', (err) => log.warn({ err }, 'inventory watcher error'));
  }

  async close(): Promise<void> {
    clearTimeout(this.reloadTimer);
    await this.watcher?.close();
    this.runs.stop();
    this.fleet.stop();
    await this.app.close();
    await this.store.close();
  }
}

/** Why the API could not listen, naming the address and what to change. */
function listenError(host: string, port: number, err: NodeJS.ErrnoException): CanopyError {
  const at = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  const why =
    err.code === 'EADDRINUSE'
      ? `${at} is in use (another coordinator, or another program): pick another --listen port`
      : err.code === 'EADDRNOTAVAIL'
        ? `${host} is not an address of this machine: --listen on one of its addresses, or 0.0.0.0`
        : err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN'
          ? `${host} does not resolve: --listen on an IP address or a name this machine resolves`
          : err.code === 'EACCES'
            ? `${at} needs privileges (ports below 1024): pick a port from 1024`
            : `${at}: ${err.message}`;
  return new CanopyError('USAGE', `cannot listen: ${why}`, { host, port });
}
