/**
 * How the CLI reaches the coordinator's API: --coordinator/--token/--ca,
 * else $CANOPY_COORDINATOR/$CANOPY_TOKEN/$CANOPY_CA, else the client config
 * the coordinator wrote ($CANOPY_CONFIG or ~/.config/canopy/client.json).
 * Every request verifies the coordinator's certificate against its CA.
 */
import { readFileSync } from 'node:fs';
import { type IncomingMessage, request } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { CanopyError, isCanopyError } from '../errors/index.js';
import { COORDINATOR_SAN, checkSan } from '../pki/index.js';
import { defaultClientConfigPath } from '../protocol/client-config.js';
import type { CliIO } from './io.js';
import { sseParser } from './sse.js';

export const CLIENT_OPTIONS = {
  coordinator: { type: 'string' },
  token: { type: 'string' },
  ca: { type: 'string' },
} as const;

export interface ClientSettings {
  url: string;
  token: string;
  ca: string;
  /** Where the CA came from, for messages ("--ca FILE", "the client config PATH"). */
  caFrom?: string;
}

/** TLS errors that mean the server answered, but with a certificate the CA given does not vouch for. */
const UNTRUSTED = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
]);

/** True for a URL the coordinator can be reached at: https://HOST[:PORT]. */
export function isHttpsUrl(text: string): boolean {
  try {
    return new URL(text).protocol === 'https:';
  } catch {
    return false;
  }
}

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new CanopyError('INPUT_NOT_FOUND', `${what} ${path}: ${(err as Error).message}`, { path });
  }
}

export function clientSettings(
  flags: { coordinator?: string | undefined; token?: string | undefined; ca?: string | undefined },
  io: CliIO,
): ClientSettings {
  const env = io.env;
  let url = flags.coordinator ?? env.CANOPY_COORDINATOR;
  let urlFrom = flags.coordinator !== undefined ? '--coordinator' : '$CANOPY_COORDINATOR';
  let token = flags.token ?? env.CANOPY_TOKEN;
  const caPath = flags.ca ?? env.CANOPY_CA;
  let caFrom = caPath ? `${flags.ca !== undefined ? '--ca' : '$CANOPY_CA'} ${caPath}` : '';
  let ca = caPath ? readText(caPath, 'CA certificate') : undefined;
  if (!url || !token || !ca) {
    const path = defaultClientConfigPath(env);
    let cfg: Partial<ClientSettings> = {};
    try {
      const parsed = JSON.parse(readFileSync(path, 'utf8')) as unknown;
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
        throw new CanopyError(
          'CLIENT_CONFIG',
          `client config ${path} is not a JSON object of url, token and ca`,
          {
            path,
          },
        );
      }
      cfg = parsed as Partial<ClientSettings>;
    } catch (err) {
      if (isCanopyError(err)) throw err;
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new CanopyError(
          'CLIENT_CONFIG',
          `client config ${path} is not valid JSON: ${(err as Error).message}`,
          { path },
        );
      }
      throw new CanopyError(
        'CLIENT_CONFIG',
        `no coordinator configured: ${path} does not exist; start one with \`canopy coordinator --data DIR\` (it writes that file), or pass --coordinator URL --token TOKEN --ca CA.crt`,
        { path },
      );
    }
    if (!url) urlFrom = `the client config ${path}`;
    if (!ca) caFrom = `the CA in the client config ${path}`;
    url ??= cfg.url;
    token ??= cfg.token;
    ca ??= cfg.ca;
  }
  if (!url || !token || !ca) {
    throw new CanopyError(
      'CLIENT_CONFIG',
      'the client config lacks url, token or ca; pass --coordinator, --token and --ca',
    );
  }
  if (!isHttpsUrl(url)) {
    throw new CanopyError(
      'CLIENT_CONFIG',
      `${urlFrom}: "${url}" is not an https:// URL; the coordinator's API speaks HTTPS only ` +
        '(e.g. https://coord.example:7443, as in the client.json the coordinator wrote)',
      { url },
    );
  }
  if (!ca.includes('-----BEGIN CERTIFICATE-----')) {
    throw new CanopyError(
      'CLIENT_CONFIG',
      `${caFrom}: not a PEM certificate; give the coordinator's CA (DATA/ca.crt, or the client.json it wrote)`,
    );
  }
  return { url: url.replace(/\/+$/, ''), token, ca, caFrom };
}

export interface ApiResponse {
  status: number;
  body: unknown;
}

export class ApiClient {
  constructor(readonly settings: ClientSettings) {}

  private open(
    method: string,
    path: string,
    headers: Record<string, string>,
    body?: string,
  ): Promise<IncomingMessage> {
    const url = `${this.settings.url}${path}`;
    const isHttps = url.startsWith('https:');
    const send = isHttps ? httpsRequest : request;
    return new Promise((resolve, reject) => {
      const req = send(
        url,
        {
          method,
          headers: {
            authorization: `Bearer ${this.settings.token}`,
            ...(body
              ? { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) }
              : {}),
            ...headers,
          },
          ...(isHttps
            ? {
                ca: this.settings.ca,
                checkServerIdentity: checkSan(COORDINATOR_SAN),
                minVersion: 'TLSv1.3' as const,
              }
            : {}),
        },
        resolve,
      );
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (UNTRUSTED.has(err.code ?? '') || isCanopyError(err, 'PKI_WRONG_PEER')) {
          reject(
            new CanopyError(
              'CLIENT_CONFIG',
              `${this.settings.url} answered, but not as the coordinator ${this.settings.caFrom ?? 'the client config'} ` +
                `trusts: ${err.message}; use that coordinator's CA (DATA/ca.crt, or the client.json it wrote), or check the URL`,
              { cause: err },
            ),
          );
          return;
        }
        reject(
          new CanopyError(
            'COORDINATOR_UNREACHABLE',
            `cannot reach the coordinator at ${this.settings.url}: ${err.message}${err.code === 'ECONNREFUSED' ? ' (is `canopy coordinator` running?)' : ''}`,
            { cause: err },
          ),
        );
      });
      req.end(body);
    });
  }

  async request(method: string, path: string, body?: unknown): Promise<ApiResponse> {
    return this.requestJson(method, path, body === undefined ? undefined : JSON.stringify(body));
  }

  /** Like request, with the body already serialized (a large one is not serialized twice). */
  async requestJson(method: string, path: string, json: string | undefined): Promise<ApiResponse> {
    const res = await this.open(method, path, {}, json);
    const chunks: Buffer[] = [];
    for await (const c of res) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // plain text (metrics)
    }
    return { status: res.statusCode ?? 0, body: parsed };
  }

  /** Like request, but a non-2xx answer becomes a CanopyError carrying the API's code and message. */
  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    return this.expectOk(await this.request(method, path, body)) as T;
  }

  /** The body of a 2xx answer; any other answer becomes a CanopyError carrying the API's code and message. */
  expectOk(res: ApiResponse): unknown {
    if (res.status >= 200 && res.status < 300) return res.body;
    const b = (res.body ?? {}) as { code?: string; message?: string; field?: string };
    const code =
      res.status === 400 ? 'API_BAD_REQUEST' : res.status === 401 ? 'API_UNAUTHORIZED' : 'API_REQUEST_FAILED';
    throw new CanopyError(code, `${b.message ?? `HTTP ${res.status}`}${b.code ? ` [${b.code}]` : ''}`, {
      status: res.status,
      apiCode: b.code,
      ...(b.field ? { field: b.field } : {}),
    });
  }

  /**
   * Follows a server-sent event stream; calls onEvent for each event and
   * resolves when the server ends the stream. Rejects if the connection fails.
   */
  async events(
    path: string,
    lastEventId: number,
    onEvent: (event: string, data: string, id: number) => void,
  ): Promise<void> {
    const res = await this.open('GET', path, {
      accept: 'text/event-stream',
      ...(lastEventId > 0 ? { 'last-event-id': String(lastEventId) } : {}),
    });
    if (res.statusCode !== 200) {
      const chunks: Buffer[] = [];
      for await (const c of res) chunks.push(c as Buffer);
      const b = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as { message?: string };
      throw new CanopyError('API_REQUEST_FAILED', b.message ?? `HTTP ${res.statusCode}`);
    }
    const feed = sseParser(onEvent);
    res.setEncoding('utf8');
    await new Promise<void>((resolve, reject) => {
      res.on('data', (chunk: string) => {
        feed(chunk);
      });
      res.on('end', resolve);
      res.on('error', reject);
      res.on('aborted', () => reject(new CanopyError('COORDINATOR_UNREACHABLE', 'the event stream was cut')));
    });
  }
}
