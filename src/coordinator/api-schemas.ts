/**
 * JSON schemas of the HTTP API's request bodies (TypeBox), and the one
 * validator that turns a bad body into a 400 naming the field.
 */
import { type Static, type TSchema, Type } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { KILL_GRACE_MAX_S, MAX_OUTPUT_BYTES, RUN_MAX_TIMEOUT_S } from '../protocol/index.js';

const NAME = '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$';

export const RunRequestSchema = Type.Object(
  {
    targets: Type.Array(Type.String({ minLength: 1, maxLength: 1024 }), { minItems: 1, maxItems: 10_000 }),
    command: Type.Union([
      Type.String({ minLength: 1, maxLength: 65536 }),
      Type.Array(Type.String({ maxLength: 65536 }), { minItems: 1, maxItems: 4096 }),
    ]),
    /** Seconds. */
    timeout: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: RUN_MAX_TIMEOUT_S })),
    concurrency: Type.Optional(Type.Integer({ minimum: 1 })),
    env: Type.Optional(
      Type.Record(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$' }), Type.String(), {
        additionalProperties: false,
      }),
    ),
    cwd: Type.Optional(Type.String({ minLength: 1, maxLength: 4096, pattern: '^/' })),
    runAs: Type.Optional(
      Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_][A-Za-z0-9_.-]*$' }),
    ),
    maxOutputBytes: Type.Optional(Type.Integer({ minimum: 0, maximum: MAX_OUTPUT_BYTES })),
    /** Seconds between TERM and KILL on timeout. */
    killGrace: Type.Optional(Type.Number({ minimum: 0, maximum: KILL_GRACE_MAX_S })),
  },
  { additionalProperties: false },
);
export type RunRequest = Static<typeof RunRequestSchema>;

const PushFileRequestSchema = Type.Object(
  {
    /** A template name (a key of `templates`), rendered per host. */
    template: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
    /** A plain file (a key of `sources`), the same bytes for every host. */
    src: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
    /** Absolute; may use template syntax ({{ inventory_hostname }}). */
    dest: Type.String({ minLength: 2, maxLength: 4096 }),
    /** Octal string ("0644") or number. */
    mode: Type.Optional(Type.Union([Type.String({ pattern: '^0?[0-7]{3,4}$' }), Type.Integer()])),
    owner: Type.Optional(
      Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z_][A-Za-z0-9_.-]*\\$?$' }),
    ),
    group: Type.Optional(
      Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z_][A-Za-z0-9_.-]*\\$?$' }),
    ),
    validate: Type.Optional(Type.String({ minLength: 1, maxLength: 8192 })),
    backup: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);

export const PushRequestSchema = Type.Object(
  {
    targets: Type.Array(Type.String({ minLength: 1, maxLength: 1024 }), { minItems: 1, maxItems: 10_000 }),
    /** Narrows targets: only hosts matched by both. */
    limit: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 1024 }), { minItems: 1 })),
    files: Type.Array(PushFileRequestSchema, { minItems: 1, maxItems: 1024 }),
    notify: Type.Optional(Type.String({ minLength: 1, maxLength: 65536 })),
    /** The account validate and notify run as (each agent checks it against its run_as). */
    runAs: Type.Optional(
      Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_][A-Za-z0-9_.-]*$' }),
    ),
    /** Template sources by name (includes and imports resolve among them). */
    templates: Type.Optional(Type.Record(Type.String({ minLength: 1, maxLength: 4096 }), Type.String())),
    /** Plain files by name, base64. */
    sources: Type.Optional(Type.Record(Type.String({ minLength: 1, maxLength: 4096 }), Type.String())),
    /** Task variables (the top layer); never stored. */
    vars: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
    mode: Type.Optional(Type.Union([Type.Literal('apply'), Type.Literal('check'), Type.Literal('rollback')])),
    diff: Type.Optional(Type.Boolean()),
    keepGoing: Type.Optional(Type.Boolean()),
    /** Seconds, per validate and notify command. */
    timeout: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 86400 })),
    concurrency: Type.Optional(Type.Integer({ minimum: 1 })),
  },
  { additionalProperties: false },
);
export type PushRequest = Static<typeof PushRequestSchema>;

export const DistRequestSchema = Type.Object(
  {
    /** Absolute path of the file on the coordinator's machine (or on agent `source`). */
    path: Type.String({ minLength: 2, maxLength: 4096, pattern: '^/' }),
    dest: Type.String({ minLength: 2, maxLength: 4096, pattern: '^/' }),
    targets: Type.Array(Type.String({ minLength: 1, maxLength: 1024 }), { minItems: 1, maxItems: 10_000 }),
    mode: Type.Optional(Type.String({ pattern: '^0?[0-7]{3,4}$' })),
    owner: Type.Optional(
      Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z_][A-Za-z0-9_.-]*\\$?$' }),
    ),
    group: Type.Optional(
      Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z_][A-Za-z0-9_.-]*\\$?$' }),
    ),
    /** Bytes, a power of two from 64 KiB to 64 MiB (default 1 MiB). */
    chunkSize: Type.Optional(Type.Integer({ minimum: 65536, maximum: 67108864 })),
    stripes: Type.Optional(Type.Integer({ minimum: 1, maximum: 16 })),
    /** Seconds for the whole distribution (default 3600). */
    timeout: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: RUN_MAX_TIMEOUT_S })),
    /** Caps every agent's upload and download for this distribution, bytes per second. */
    rateLimit: Type.Optional(Type.Integer({ minimum: 1024 })),
    /** A directory source: delete files on the hosts that the source no longer has (rsync --delete). */
    delete: Type.Optional(Type.Boolean()),
    /** Each host's link, bytes per second: progress and the report give the ratio to the bound S/B. */
    linkRate: Type.Optional(Type.Integer({ minimum: 1024 })),
    /** `together`: every host stages the file; all switch only once all have it, else none does. */
    activate: Type.Optional(Type.Literal('together')),
    /** The agent that holds the file at `path` and serves it (instead of the coordinator's machine). */
    source: Type.Optional(Type.String({ pattern: NAME })),
  },
  { additionalProperties: false },
);
export type DistRequestBody = Static<typeof DistRequestSchema>;

export const TokenRequestSchema = Type.Object(
  {
    /** Seconds. */
    ttl: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 365 * 86400 })),
    name: Type.Optional(Type.String({ pattern: NAME })),
  },
  { additionalProperties: false },
);
export type TokenRequest = Static<typeof TokenRequestSchema>;

export const JoinRequestSchema = Type.Object(
  {
    tokenId: Type.String({ minLength: 1, maxLength: 64 }),
    secret: Type.String({ minLength: 1, maxLength: 256 }),
    name: Type.String({ pattern: NAME }),
    csr: Type.String({ minLength: 1, maxLength: 16384 }),
  },
  { additionalProperties: false },
);
export type JoinRequest = Static<typeof JoinRequestSchema>;

export class BadRequest extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

/** Returns the body typed, or throws BadRequest naming the first field at fault. */
export function validator<S extends TSchema>(schema: S): (body: unknown) => Static<S> {
  const check = TypeCompiler.Compile(schema);
  return (body) => {
    if (body === undefined || body === null || typeof body !== 'object' || Array.isArray(body)) {
      throw new BadRequest('body', 'request body must be a JSON object');
    }
    if (check.Check(body)) return body as Static<S>;
    const first = check.Errors(body).First();
    const path = first?.path ?? '';
    const field = path.replace(/^\//, '').replaceAll('/', '.') || 'body';
    const schemaKeys = Object.keys((schema as { properties?: object }).properties ?? {});
    const topKey = field.split('.')[0] ?? '';
    const unknown = first && !schemaKeys.includes(topKey) && topKey !== 'body';
    const message = unknown
      ? `unknown field "${field}" (known fields: ${schemaKeys.join(', ')})`
      : `field "${field}": ${first?.message ?? 'invalid'}${first && first.value !== undefined ? ` (got ${JSON.stringify(first.value)})` : ''}`;
    throw new BadRequest(field, message);
  };
}
