/**
 * The HTTP API (fastify over the coordinator's HTTPS listener). Every /v1
 * route needs the admin bearer token, except the two an agent uses to join
 * (GET /v1/ca, POST /v1/join: the join token in the body is the credential).
 * Errors are JSON `{code, message, field?}`; a bad body is a 400 naming the
 * field, and nothing a client sends can take the coordinator down.
 */
import { timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { isCanopyError } from '../errors/index.js';
import { fingerprint } from '../pki/index.js';
import { API_BODY_LIMIT, PUSH_BODY_LIMIT } from '../protocol/index.js';
import {
  BadRequest,
  DistRequestSchema,
  JoinRequestSchema,
  PushRequestSchema,
  RunRequestSchema,
  TokenRequestSchema,
  validator,
} from './api-schemas.js';
import type { DistManager } from './dists.js';
import type { Fleet } from './fleet.js';
import type { Metrics } from './metrics.js';
import type { PushManager } from './pushes.js';
import type { RunEvent, RunManager } from './runs.js';
import type { HostResult, RunRecord, RunSpec } from './store.js';
import { type FleetView, resolveTargets } from './targets.js';
import type { TokenService } from './tokens.js';

export interface ApiDeps {
  fleet: Fleet;
  runs: RunManager;
  pushes: PushManager;
  dists: DistManager;
  tokens: TokenService;
  metrics: Metrics;
  logger: Logger;
  adminToken: string;
  caPem: string;
  version: string;
  view: () => FleetView;
  count: (name: string, labels?: Record<string, string>) => void;
}

const PUBLIC = new Set(['/healthz', '/v1/ca', '/v1/join']);
const DEFAULT_TIMEOUT_S = 60;

const checkRun = validator(RunRequestSchema);
const checkToken = validator(TokenRequestSchema);
const checkPush = validator(PushRequestSchema);
const checkDist = validator(DistRequestSchema);
const checkJoin = validator(JoinRequestSchema);

/** What POST /v1/runs, /v1/pushes and /v1/dists answer about the run they created. */
function created(run: RunRecord) {
  return { id: run.id, hosts: run.hosts, deadline: run.deadline, createdAt: run.createdAt };
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

/** How much of a refused body is read (and dropped) before the answer, at most. */
const DRAIN_MAX_BYTES = 128 * 1024 * 1024;
const DRAIN_MAX_MS = 10_000;

/**
 * Reads what is left of a request body and drops it, so the error answer
 * reaches a client that is still sending. Bounded: a body declared larger than
 * DRAIN_MAX_BYTES, or one still arriving after DRAIN_MAX_MS, is cut off (the
 * connection closes with the answer, as fastify would have).
 */
export function drainBody(raw: IncomingMessage): Promise<void> {
  if (raw.complete || raw.destroyed || Number(raw.headers['content-length']) > DRAIN_MAX_BYTES) {
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    let seen = 0;
    const done = () => {
      clearTimeout(timer);
      raw.off('data', onData).off('end', done).off('close', done).off('error', done);
      resolve();
    };
    const onData = (chunk: Buffer) => {
      seen += chunk.length;
      if (seen > DRAIN_MAX_BYTES) done();
    };
    const timer = setTimeout(done, DRAIN_MAX_MS);
    raw.on('data', onData).on('end', done).on('close', done).on('error', done);
    raw.resume();
  });
}

const mib = (bytes: number) => `${Math.round(bytes / (1024 * 1024))} MiB`;

export function registerApi(app: FastifyInstance, deps: ApiDeps): void {
  const { fleet, runs, tokens, logger } = deps;
  const expected = Buffer.from(`Bearer ${deps.adminToken}`);

  app.addHook('onRequest', async (req: FastifyRequest) => {
    const path = req.url.split('?')[0] ?? '';
    if (PUBLIC.has(path)) return;
    const given = Buffer.from(req.headers.authorization ?? '');
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      const why = req.headers.authorization ? 'wrong bearer token' : 'no bearer token';
      logger.warn({ ip: req.ip, method: req.method, url: path, why }, 'refused API request');
      deps.count('canopy_refusals_total', { reason: 'API_UNAUTHORIZED' });
      throw new ApiError(
        401,
        'API_UNAUTHORIZED',
        `${why}: send "Authorization: Bearer <token>" with the admin token (the coordinator printed its path on first start)`,
      );
    }
  });

  app.setErrorHandler(async (err: unknown, req, reply) => {
    // A body refused before it was read (too large, wrong type) is read and
    // dropped first: answering and closing while the client still sends makes
    // its kernel reset the connection, and it sees EPIPE instead of the answer.
    await drainBody(req.raw);
    if (err instanceof ApiError) {
      logger.info(
        { ip: req.ip, url: req.url, code: err.code, field: err.field ?? null },
        `API request refused: ${err.message}`,
      );
      return reply
        .code(err.status)
        .send({ code: err.code, message: err.message, ...(err.field ? { field: err.field } : {}) });
    }
    if (err instanceof BadRequest) {
      logger.info({ ip: req.ip, url: req.url, field: err.field }, `bad request: ${err.message}`);
      return reply.code(400).send({ code: 'API_BAD_REQUEST', message: err.message, field: err.field });
    }
    if (isCanopyError(err)) {
      const status = err.code.startsWith('TOKEN_')
        ? 401
        : err.code === 'AGENT_UNKNOWN'
          ? 404
          : err.code === 'PUSH_RENDER'
            ? 422
            : 400;
      logger.warn({ ip: req.ip, url: req.url, code: err.code }, err.message);
      return reply.code(status).send(err.toJSON());
    }
    const e = err as { statusCode?: number; code?: string; message?: string };
    if (e.statusCode && e.statusCode >= 400 && e.statusCode < 500) {
      const message =
        e.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE'
          ? 'send the body as JSON (Content-Type: application/json)'
          : e.code === 'FST_ERR_CTP_BODY_TOO_LARGE'
            ? `request body is larger than ${mib(req.routeOptions.bodyLimit ?? API_BODY_LIMIT)}`
            : `request body is not valid JSON: ${e.message ?? ''}`;
      logger.info(
        { ip: req.ip, url: req.url, status: e.statusCode, code: e.code ?? null },
        `bad request: ${message}`,
      );
      return reply.code(e.statusCode).send({ code: 'API_BAD_REQUEST', message, field: 'body' });
    }
    logger.error({ err, url: req.url }, 'API handler failed');
    return reply
      .code(500)
      .send({ code: 'API_INTERNAL', message: 'internal error (the coordinator log has the details)' });
  });

  app.setNotFoundHandler((req, reply) => {
    logger.info({ ip: req.ip, method: req.method, url: req.url.split('?')[0] }, 'API request for no route');
    reply
      .code(404)
      .send({ code: 'API_NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}` });
  });

  app.get('/healthz', async () => ({ ok: true, version: deps.version, agents: fleet.connected }));

  app.get('/metrics', async (_req, reply) => {
    reply.type('text/plain; version=0.0.4').send(deps.metrics.render());
  });

  const ca = { ca: deps.caPem, fingerprint: fingerprint(deps.caPem) };
  app.get('/v1/ca', async () => ca);

  app.post('/v1/join', async (req) => {
    const body = checkJoin(req.body);
    try {
      return await fleet.join({ ...body, ip: req.ip });
    } catch (err) {
      logger.warn(
        { ip: req.ip, name: body.name, token: body.tokenId, code: isCanopyError(err) ? err.code : null },
        'refused a join',
      );
      throw err;
    }
  });

  app.post('/v1/tokens', async (req, reply) => {
    const body = checkToken(req.body ?? {});
    const t = await tokens.create({
      ttlMs: (body.ttl ?? 3600) * 1000,
      ...(body.name ? { name: body.name } : {}),
    });
    logger.info(
      { token: t.id, name: body.name ?? null, expiresAt: t.expiresAt, ip: req.ip },
      'join token created',
    );
    reply.code(201);
    return t;
  });

  app.get('/v1/agents', async () => ({ agents: fleet.list() }));

  app.delete('/v1/agents/:name', async (req) => {
    const { name } = req.params as { name: string };
    const r = await fleet.revoke(name, req.ip);
    return { name: r.name, revokedAt: r.revokedAt };
  });

  app.post('/v1/runs', async (req, reply) => {
    const body = checkRun(req.body);
    const resolved = resolveTargets(body.targets, deps.view());
    if (!resolved.ok) {
      throw new ApiError(400, 'RUN_UNKNOWN_TARGET', resolved.message, `targets.${resolved.index}`);
    }
    const spec: RunSpec = {
      targets: body.targets,
      command: body.command,
      timeoutMs: Math.ceil((body.timeout ?? DEFAULT_TIMEOUT_S) * 1000),
      concurrency: body.concurrency ?? resolved.hosts.length,
      ...(body.env ? { env: body.env } : {}),
      ...(body.cwd ? { cwd: body.cwd } : {}),
      ...(body.runAs ? { runAs: body.runAs } : {}),
      ...(body.maxOutputBytes !== undefined ? { maxOutputBytes: body.maxOutputBytes } : {}),
      ...(body.killGrace !== undefined ? { killGraceMs: Math.round(body.killGrace * 1000) } : {}),
    };
    const run = await runs.create(spec, resolved.hosts);
    reply.code(201);
    return created(run);
  });

  app.post('/v1/pushes', { bodyLimit: PUSH_BODY_LIMIT }, async (req, reply) => {
    const body = checkPush(req.body);
    const view = deps.view();
    const resolved = resolveTargets(body.targets, view);
    if (!resolved.ok) {
      throw new ApiError(400, 'RUN_UNKNOWN_TARGET', resolved.message, `targets.${resolved.index}`);
    }
    let hosts = resolved.hosts;
    if (body.limit) {
      const limit = resolveTargets(body.limit, view);
      if (!limit.ok) throw new ApiError(400, 'RUN_UNKNOWN_TARGET', limit.message, `limit.${limit.index}`);
      const allowed = new Set(limit.hosts);
      hosts = hosts.filter((h) => allowed.has(h));
      if (hosts.length === 0) {
        throw new ApiError(
          400,
          'RUN_UNKNOWN_TARGET',
          'no host matches both the targets and --limit',
          'limit',
        );
      }
    }
    const { record, failures } = await deps.pushes.create(body, hosts, view.inventory);
    reply.code(201);
    return { ...created(record), renderFailures: failures };
  });

  app.post('/v1/dists', async (req, reply) => {
    const body = checkDist(req.body);
    const sourceBytesAtStart = deps.dists.sourceBytes;
    const resolved = resolveTargets(body.targets, deps.view());
    if (!resolved.ok) {
      throw new ApiError(400, 'RUN_UNKNOWN_TARGET', resolved.message, `targets.${resolved.index}`);
    }
    // The request's fields are the distribution's, except the mode (octal text on the wire).
    const { mode, ...rest } = body;
    const { record, manifest } = await deps.dists.create(
      { ...rest, ...(mode ? { mode: Number.parseInt(mode, 8) } : {}) },
      resolved.hosts,
    );
    reply.code(201);
    return {
      ...created(record),
      blob: record.spec.kind === 'dist' ? record.spec.blob : null,
      source: record.spec.kind === 'dist' ? (record.spec.source ?? null) : null,
      size: manifest.size,
      md5: manifest.md5,
      chunkSize: manifest.chunkSize,
      sourceBytesAtStart,
    };
  });

  /** A run by id; with `kind`, only a run of that kind (a push id is not a distribution). */
  const runOf = async (id: string, kind?: 'push' | 'dist') => {
    const got = await runs.get(id);
    if (!got || (kind && got.run.spec.kind !== kind)) {
      const what = kind === 'push' ? 'push' : kind === 'dist' ? 'distribution' : 'run';
      throw new ApiError(404, 'RUN_NOT_FOUND', `no ${what} "${id}"`);
    }
    return got;
  };
  app.get('/v1/runs/:id', async (req) => runOf((req.params as { id: string }).id));
  app.get('/v1/pushes/:id', async (req) => runOf((req.params as { id: string }).id, 'push'));
  app.get('/v1/dists/:id', async (req) => {
    const { id } = req.params as { id: string };
    return {
      ...(await runOf(id, 'dist')),
      sourceBytes: deps.dists.sourceBytes,
      progress: deps.dists.progressOf(id) ?? null,
      tree: deps.dists.detailOf(id) ?? null,
      activation: runs.activationOf(id) ?? null,
    };
  });
  // Pushes and distributions are runs: one event stream serves all three paths.
  for (const path of ['/v1/runs/:id/events', '/v1/pushes/:id/events', '/v1/dists/:id/events']) {
    app.get(path, async (req, reply) => {
      const { id } = req.params as { id: string };
      const lastId = Number(req.headers['last-event-id'] ?? 0) || 0;
      await streamRun(req, reply, runs, id, lastId);
    });
  }
}

/**
 * Server-sent events: one `result` event per host (id = its seq), then
 * `done`; a distribution also sends `progress` (the fleet's bytes, rate, ETA,
 * IDCs and slowest hosts) about once a second.
 */
async function streamRun(
  req: FastifyRequest,
  reply: FastifyReply,
  runs: RunManager,
  id: string,
  after: number,
): Promise<void> {
  const buffered: RunEvent[] = [];
  let live: ((e: RunEvent) => void) | undefined;
  const unsubscribe = runs.subscribe(id, (e) => (live ? live(e) : buffered.push(e)));
  const got = await runs.get(id);
  if (!got) {
    unsubscribe?.();
    throw new ApiError(404, 'RUN_NOT_FOUND', `no run "${id}"`);
  }
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
  });
  const sent = new Set<number>();
  const writeResult = (r: HostResult) => {
    if (r.seq <= after || sent.has(r.seq)) return;
    sent.add(r.seq);
    res.write(`id: ${r.seq}\nevent: result\ndata: ${JSON.stringify(r)}\n\n`);
  };
  let closed = false;
  const finish = (summary: unknown) => {
    if (closed) return;
    closed = true;
    res.write(`event: done\ndata: ${JSON.stringify(summary)}\n\n`);
    res.end();
    unsubscribe?.();
    clearInterval(keepalive);
  };
  const keepalive = setInterval(() => res.write(': keepalive\n\n'), 15_000);
  req.raw.on('close', () => {
    closed = true;
    unsubscribe?.();
    clearInterval(keepalive);
  });
  for (const r of got.results) writeResult(r);
  if (!unsubscribe) {
    finish(got.summary);
    return;
  }
  const handle = (e: RunEvent) => {
    if (closed) return;
    if (e.type === 'result') writeResult(e.result);
    else if (e.type === 'progress') res.write(`event: progress\ndata: ${JSON.stringify(e.progress)}\n\n`);
    else finish(e.summary);
  };
  for (const e of buffered) handle(e);
  live = handle;
}
