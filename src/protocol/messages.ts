/**
 * The messages the coordinator and agents exchange over the control channel.
 *
 * One TypeBox schema per message, discriminated on `type`; every message
 * carries the protocol version `v`. The TS types derive from the schemas.
 * `decodeAgentMessage` / `decodeCoordinatorMessage` are the only way bytes
 * from the socket become messages: they parse, check the version, validate
 * against the one schema `type` names, and return a reason instead of
 * throwing, so a peer logs and refuses a bad message and never crashes.
 */
import { type Static, type TSchema, Type } from '@sinclair/typebox';
import { type TypeCheck, TypeCompiler } from '@sinclair/typebox/compiler';
import { KILL_GRACE_MAX_S, MAX_OUTPUT_BYTES } from './limits.js';

export const PROTOCOL_VERSION = 1;

const Name = Type.String({ pattern: '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$' });
const Id = Type.String({ pattern: '^[A-Za-z0-9_.:@-]{1,200}$' });
const Version = Type.Literal(PROTOCOL_VERSION);

/** What to run; the agent checks it against its own allowlists before running anything. */
export const CommandSpecSchema = Type.Object(
  {
    command: Type.Union([
      Type.String({ minLength: 1, maxLength: 65536 }),
      Type.Array(Type.String({ maxLength: 65536 }), { minItems: 1, maxItems: 4096 }),
    ]),
    timeoutMs: Type.Integer({ minimum: 1 }),
    env: Type.Optional(Type.Record(Type.String(), Type.String())),
    cwd: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
    runAs: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
    maxOutputBytes: Type.Optional(Type.Integer({ minimum: 0, maximum: MAX_OUTPUT_BYTES })),
    killGraceMs: Type.Optional(Type.Integer({ minimum: 0, maximum: KILL_GRACE_MAX_S * 1000 })),
  },
  { additionalProperties: false },
);
export type CommandSpec = Static<typeof CommandSpecSchema>;

const Md5 = Type.String({ pattern: '^[0-9a-f]{32}$' });
const AccountName = Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z_][A-Za-z0-9_.-]*\\$?$' });

/** One file of a push, as one host gets it: where it goes and what its content's MD5 is. */
export const PushFileSchema = Type.Object(
  {
    dest: Type.String({ minLength: 2, maxLength: 4096, pattern: '^/' }),
    md5: Md5,
    size: Type.Integer({ minimum: 0 }),
    mode: Type.Optional(Type.Integer({ minimum: 0, maximum: 0o7777 })),
    owner: Type.Optional(AccountName),
    group: Type.Optional(AccountName),
    /** A shell command; `%s` is replaced by the (quoted) path of the temporary file. */
    validate: Type.Optional(Type.String({ minLength: 1, maxLength: 8192 })),
    backup: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
export type PushFile = Static<typeof PushFileSchema>;

export const PUSH_MODES = ['apply', 'check', 'rollback'] as const;
export type PushMode = (typeof PUSH_MODES)[number];

/** What a push asks of one host: compare, fetch what differs, install; then notify if anything changed. */
export const PushSpecSchema = Type.Object(
  {
    files: Type.Array(PushFileSchema, { minItems: 1, maxItems: 1024 }),
    mode: Type.Union(PUSH_MODES.map((m) => Type.Literal(m))),
    /** Return the old content of files that differ (for diffs), when small and text. */
    diff: Type.Boolean(),
    notify: Type.Optional(Type.String({ minLength: 1, maxLength: 65536 })),
    /** The account validate and notify run as (checked against the agent's run_as); default its own. */
    runAs: Type.Optional(
      Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_][A-Za-z0-9_.-]*$' }),
    ),
    /** For validate and notify, each. */
    timeoutMs: Type.Integer({ minimum: 1 }),
  },
  { additionalProperties: false },
);
export type PushSpec = Static<typeof PushSpecSchema>;

/** A blob's manifest as the protocol carries it (src/transfer validates it fully). */
export const ManifestSchema = Type.Object(
  {
    version: Type.Literal(1),
    size: Type.Integer({ minimum: 0 }),
    chunkSize: Type.Integer({ minimum: 1 }),
    chunks: Type.Array(Type.String({ pattern: '^[0-9a-f]{64}$' })),
    md5: Md5,
  },
  { additionalProperties: false },
);

/** Where a peer listens: its agent name and `host:port`. */
export const PeerAddressSchema = Type.Object(
  { name: Name, address: Type.String({ minLength: 3, maxLength: 300 }) },
  { additionalProperties: false },
);
export type PeerAddress = Static<typeof PeerAddressSchema>;

/** A directory distribution's tree: its id (what peers pull it by) and whether extra files go. */
function DistTreeSchema() {
  return Type.Object(
    {
      id: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$' }),
      /** Delete files in dest that the tree does not have (rsync --delete). */
      delete: Type.Optional(Type.Boolean()),
    },
    { additionalProperties: false },
  );
}

/** What a distribution asks of one host: fetch the blob's chunks from its parents, verify, install. */
export const DistSpecSchema = Type.Object(
  {
    blob: Type.String({ pattern: '^[0-9a-f]{64}$' }),
    /**
     * A directory tree's (its size only). A file's is not sent: the agent
     * fetches it from its candidates (its parent first) over the peer channel
     * and checks that it hashes to `blob`, so the coordinator never queues a
     * copy of a large manifest per host.
     */
    manifest: Type.Optional(ManifestSchema),
    /** The file's MD5 (for the report when the manifest cannot be had); required without `manifest`. */
    md5: Type.Optional(Md5),
    dest: Type.String({ minLength: 2, maxLength: 4096, pattern: '^/' }),
    mode: Type.Optional(Type.Integer({ minimum: 0, maximum: 0o7777 })),
    owner: Type.Optional(AccountName),
    group: Type.Optional(AccountName),
    /** Chunk i belongs to stripe i mod parents.length; parents[s] serves stripe s. */
    parents: Type.Array(PeerAddressSchema, { minItems: 1, maxItems: 64 }),
    /** Serves children until this long after the blob is complete here. */
    serveForMs: Type.Integer({ minimum: 0 }),
    /** No progress from a parent for this long: fall back to the next candidate. */
    stallMs: Type.Integer({ minimum: 100 }),
    /** Tried when a parent fails (in order; the source last). */
    fallbacks: Type.Array(PeerAddressSchema, { maxItems: 64 }),
    /**
     * Per stripe, the coordinator's re-parenting should parents[s] fail (its
     * planner's replan of that parent's orphans, worked out with the plan),
     * tried before the fallbacks.
     */
    alternates: Type.Optional(Type.Array(PeerAddressSchema, { maxItems: 64 })),
    /**
     * Per stripe, where this host fetches first if it restarts mid-distribution
     * (a leaf of that stripe: its children were given its parent meanwhile).
     */
    rejoin: Type.Optional(Type.Array(PeerAddressSchema, { maxItems: 64 })),
    /** Caps this host's download of the blob, bytes per second (its upload is capped by its peer server). */
    rateLimit: Type.Optional(Type.Integer({ minimum: 1024 })),
    /**
     * A directory distribution: instead of chunks, the host pulls tree `id`
     * with the system rsync from parents[0] (then the alternates, then the
     * fallbacks) into `dest`, a directory. The manifest then only carries the
     * tree's total file size (`size`); its chunks are empty.
     */
    tree: Type.Optional(DistTreeSchema()),
    /**
     * `together`: fetch and verify as usual, but do not install: keep the
     * verified file staged beside the destination (stagedPathFor) and report
     * it `staged`; the coordinator switches every host with an `activation`
     * task only once all of them have it.
     */
    activate: Type.Optional(Type.Literal('together')),
  },
  { additionalProperties: false },
);
export type DistSpec = Static<typeof DistSpecSchema>;

/**
 * The steps of an `--activate together` distribution after staging, in order:
 * `verify` (the staged copy still matches, the destination is still allowed),
 * then `activate` (install it) on every host, or `discard` (remove it) on
 * every host when any host lacks the file.
 */
export const ACTIVATION_STEPS = ['verify', 'activate', 'discard'] as const;
export type ActivationStep = (typeof ACTIVATION_STEPS)[number];

/** One step on a host's staged copy of a distributed file. */
export const ActivationSpecSchema = Type.Object(
  {
    step: Type.Union(ACTIVATION_STEPS.map((s) => Type.Literal(s))),
    blob: Type.String({ pattern: '^[0-9a-f]{64}$' }),
    dest: Type.String({ minLength: 2, maxLength: 4096, pattern: '^/' }),
    size: Type.Integer({ minimum: 0 }),
    md5: Md5,
    mode: Type.Optional(Type.Integer({ minimum: 0, maximum: 0o7777 })),
    owner: Type.Optional(AccountName),
    group: Type.Optional(AccountName),
  },
  { additionalProperties: false },
);
export type ActivationSpec = Static<typeof ActivationSpecSchema>;
export type DistTree = NonNullable<DistSpec['tree']>;

/**
 * `canopy dist --source HOST`: the file is on agent HOST. The agent checks
 * `path` against its roots (as a destination would be), hashes it into a
 * manifest (its result's `source`), and serves the blob from its peer server
 * straight from the file until `serveForMs` from now.
 */
export const SourceSpecSchema = Type.Object(
  {
    path: Type.String({ minLength: 2, maxLength: 4096, pattern: '^/' }),
    chunkSize: Type.Integer({ minimum: 65536, maximum: 67108864 }),
    serveForMs: Type.Integer({ minimum: 0 }),
    /** Caps this agent's upload while it serves the blob, bytes per second. */
    rateLimit: Type.Optional(Type.Integer({ minimum: 1024 })),
  },
  { additionalProperties: false },
);
export type SourceSpec = Static<typeof SourceSpecSchema>;

const TaskCommon = {
  id: Id,
  runId: Id,
  host: Name,
  /** How long from receipt the agent may still start it; past that it is not started. */
  expiresInMs: Type.Integer(),
};

export const CommandTaskSchema = Type.Object(
  { ...TaskCommon, kind: Type.Literal('command'), spec: CommandSpecSchema },
  { additionalProperties: false },
);
export const PushTaskSchema = Type.Object(
  { ...TaskCommon, kind: Type.Literal('push'), spec: PushSpecSchema },
  { additionalProperties: false },
);
export const DistTaskSchema = Type.Object(
  { ...TaskCommon, kind: Type.Literal('dist'), spec: DistSpecSchema },
  { additionalProperties: false },
);
export const ActivationTaskSchema = Type.Object(
  { ...TaskCommon, kind: Type.Literal('activation'), spec: ActivationSpecSchema },
  { additionalProperties: false },
);
export const SourceTaskSchema = Type.Object(
  { ...TaskCommon, kind: Type.Literal('source'), spec: SourceSpecSchema },
  { additionalProperties: false },
);
export const TaskSchema = Type.Union([
  CommandTaskSchema,
  PushTaskSchema,
  DistTaskSchema,
  ActivationTaskSchema,
  SourceTaskSchema,
]);
export type SourceTask = Static<typeof SourceTaskSchema>;
export type DistTask = Static<typeof DistTaskSchema>;
export type ActivationTask = Static<typeof ActivationTaskSchema>;
export type CommandTask = Static<typeof CommandTaskSchema>;
export type PushTask = Static<typeof PushTaskSchema>;
export type Task = Static<typeof TaskSchema>;

/**
 * `staged`: verified and kept beside the destination, not installed (an
 * `--activate together` distribution before its switch); `discarded`: the
 * staged copy was removed and the destination left as it was.
 */
export const FILE_STATES = ['changed', 'unchanged', 'would-change', 'failed', 'staged', 'discarded'] as const;
export type FileOutcomeState = (typeof FILE_STATES)[number];

/** What happened to one file of a push on one host. */
export const FileOutcomeSchema = Type.Object(
  {
    dest: Type.String({ maxLength: 4096 }),
    state: Type.Union(FILE_STATES.map((s) => Type.Literal(s))),
    oldMd5: Type.Union([Md5, Type.Null()]),
    newMd5: Md5,
    /** Content was (or would be) written; false when only mode or owner changed. */
    content: Type.Boolean(),
    error: Type.Optional(Type.String({ maxLength: 65536 })),
    code: Type.Optional(Type.String({ maxLength: 64 })),
    /** The previous content (utf8), when a diff was asked for and it is small text. */
    old: Type.Optional(Type.String({ maxLength: 512 * 1024 })),
    /** Why `old` is missing although a diff was asked for. */
    oldOmitted: Type.Optional(Type.String({ maxLength: 256 })),
    /** Set by the coordinator: the unified diff, secrets masked. */
    diff: Type.Optional(Type.String()),
  },
  { additionalProperties: false },
);
export type FileOutcome = Static<typeof FileOutcomeSchema>;

export const RESULT_STATES = ['ok', 'failed', 'timeout', 'refused', 'interrupted'] as const;
export type AgentResultState = (typeof RESULT_STATES)[number];

export const TaskResultSchema = Type.Object(
  {
    taskId: Id,
    runId: Id,
    state: Type.Union(RESULT_STATES.map((s) => Type.Literal(s))),
    exitCode: Type.Union([Type.Integer(), Type.Null()]),
    signal: Type.Union([Type.String({ maxLength: 32 }), Type.Null()]),
    stdout: Type.String(),
    stderr: Type.String(),
    stdoutTruncated: Type.Boolean(),
    stderrTruncated: Type.Boolean(),
    stdoutBytes: Type.Integer({ minimum: 0 }),
    stderrBytes: Type.Integer({ minimum: 0 }),
    startedAt: Type.Number(),
    endedAt: Type.Number(),
    durationMs: Type.Number(),
    error: Type.Optional(Type.String({ maxLength: 65536 })),
    /** Push tasks: one outcome per file, in the task's order. */
    files: Type.Optional(Type.Array(FileOutcomeSchema, { maxItems: 1024 })),
    /** Push tasks: set when notify ran (stdout/stderr/exitCode above are notify's). */
    notified: Type.Optional(Type.Boolean()),
    /** Dist tasks: bytes fetched, per peer, and how many chunks were already here. */
    transfer: Type.Optional(
      Type.Object(
        {
          fetchedBytes: Type.Integer({ minimum: 0 }),
          reusedChunks: Type.Integer({ minimum: 0 }),
          fromPeers: Type.Record(Type.String(), Type.Integer({ minimum: 0 })),
          badPeers: Type.Array(Type.String({ maxLength: 300 }), { maxItems: 64 }),
          /** Directory distributions: rsync's figures for the pull that succeeded, and from whom. */
          rsync: Type.Optional(
            Type.Object(
              {
                peer: Type.String({ maxLength: 300 }),
                files: Type.Integer({ minimum: 0 }),
                filesTotal: Type.Integer({ minimum: 0 }),
                bytesReceived: Type.Integer({ minimum: 0 }),
                bytesSent: Type.Integer({ minimum: 0 }),
                literalBytes: Type.Integer({ minimum: 0 }),
                matchedBytes: Type.Integer({ minimum: 0 }),
                totalFileSize: Type.Integer({ minimum: 0 }),
                /** --rate-limit as rsync's --bwlimit (KiB/s) the pull ran with. */
                bwlimitKiB: Type.Optional(Type.Integer({ minimum: 1 })),
              },
              { additionalProperties: false },
            ),
          ),
        },
        { additionalProperties: false },
      ),
    ),
    /** Source tasks: the manifest of the agent's file and its blob id (the agent serves it). */
    source: Type.Optional(
      Type.Object(
        { blob: Type.String({ pattern: '^[0-9a-f]{64}$' }), manifest: ManifestSchema },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
);
export type TaskResult = Static<typeof TaskResultSchema>;

/** A result's process fields when no process ran (a refusal, a timeout, a distribution, a step). */
export const NO_PROCESS = {
  exitCode: null,
  signal: null,
  stdout: '',
  stderr: '',
  stdoutTruncated: false,
  stderrTruncated: false,
} as const satisfies Partial<TaskResult>;

/** A result's output fields when no process produced any (refused, not started, interrupted). */
export const NO_OUTPUT = {
  ...NO_PROCESS,
  stdoutBytes: 0,
  stderrBytes: 0,
} as const satisfies Partial<TaskResult>;

export const FactsSchema = Type.Object(
  {
    hostname: Type.String({ maxLength: 255 }),
    os: Type.String({ maxLength: 255 }),
    kernel: Type.String({ maxLength: 255 }),
    arch: Type.String({ maxLength: 64 }),
    addresses: Type.Array(Type.String({ maxLength: 64 }), { maxItems: 256 }),
    labels: Type.Record(Type.String(), Type.String()),
    version: Type.String({ maxLength: 64 }),
    uptimeSec: Type.Number(),
    agentUptimeSec: Type.Number(),
    load: Type.Array(Type.Number(), { maxItems: 3 }),
    roots: Type.Array(Type.String({ maxLength: 4096 }), { maxItems: 256 }),
    runAs: Type.Array(Type.String({ maxLength: 64 }), { maxItems: 256 }),
    heartbeatMs: Type.Integer({ minimum: 100 }),
    /** Where this agent's peer server listens for chunk requests (`host:port`), if it runs one. */
    peer: Type.Optional(Type.String({ maxLength: 300 })),
  },
  { additionalProperties: false },
);
export type Facts = Static<typeof FactsSchema>;

function message<T extends string, P extends Record<string, TSchema>>(type: T, props: P) {
  return Type.Object({ v: Version, type: Type.Literal(type), ...props }, { additionalProperties: false });
}

// agent -> coordinator
export const HelloSchema = message('hello', { facts: FactsSchema, running: Type.Array(Id) });
export const HeartbeatSchema = message('heartbeat', { facts: FactsSchema, running: Type.Array(Id) });
export const AckSchema = message('ack', { taskId: Id });
export const ResultSchema = message('result', { result: TaskResultSchema });
export const PullSchema = message('pull', {});
export const RenewSchema = message('renew', { csr: Type.String({ maxLength: 16384 }) });
/** A push task asks for the content of the files (by index) that differ on its host. */
export const FetchSchema = message('fetch', {
  taskId: Id,
  files: Type.Array(Type.Integer({ minimum: 0, maximum: 1023 }), { minItems: 1, maxItems: 1024 }),
});
/** A distribution task's progress, at most about once a second while it runs. */
export const ProgressSchema = message('progress', {
  taskId: Id,
  /** Verified chunks held (fetched or already here) and their bytes. */
  chunks: Type.Integer({ minimum: 0 }),
  bytes: Type.Integer({ minimum: 0 }),
  /** Bytes fetched over the network by this task so far. */
  fetchedBytes: Type.Integer({ minimum: 0 }),
  /** Peers this task gave up on so far (dead, stalled, or bad chunks). */
  failedPeers: Type.Array(Type.String({ maxLength: 300 }), { maxItems: 64 }),
});

// coordinator -> agent
export const WelcomeSchema = message('welcome', { now: Type.Number(), pullIntervalMs: Type.Integer() });
export const TaskMessageSchema = message('task', { task: TaskSchema });
export const ResultAckSchema = message('result-ack', { taskId: Id });
export const RenewedSchema = message('renewed', { cert: Type.String({ maxLength: 16384 }) });
/** The answer to a fetch: base64 content per requested file, or why there is none. */
export const ContentSchema = message('content', {
  taskId: Id,
  files: Type.Array(Type.Object({ index: Type.Integer({ minimum: 0 }), data: Type.String() }), {
    maxItems: 1024,
  }),
  error: Type.Optional(Type.String({ maxLength: 4096 })),
});
/** Most serials a `revoked` message carries (about 7 MB of JSON, under the 16 MiB message cap). */
export const MAX_REVOKED_SERIALS = 200_000;
/**
 * Every certificate serial the coordinator has revoked (lowercase hex, no leading zeros), sent
 * after `welcome` and again to every online agent whenever one is revoked. It is the whole set
 * each time, so the agent replaces what it knew: its peer server refuses these certificates and
 * hangs up connections made with them.
 */
export const RevokedSchema = message('revoked', {
  serials: Type.Array(Type.String({ pattern: '^[0-9a-f]{1,64}$' }), { maxItems: MAX_REVOKED_SERIALS }),
});
/**
 * Distributions that ended: the agent stops serving these blobs (and
 * directory trees, by tree id) at once instead of at their serve deadline,
 * and a --source agent ends its seed (and removes its record). Sent only once
 * no running distribution serves the blob any more.
 */
export const EndedSchema = message('ended', {
  blobs: Type.Array(Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$' }), {
    minItems: 1,
    maxItems: 1024,
  }),
});
/**
 * Agents whose peer address changed (one restarted with `--peer-listen HOST:0`
 * and got another port) or differs from what this agent's running
 * distribution tasks name: the agent dials these names at these addresses
 * from now on. Sent to the hosts of running distributions that name the
 * agent, and to an agent at its hello for the peers its own tasks name.
 */
export const PeersSchema = message('peers', {
  peers: Type.Array(PeerAddressSchema, { minItems: 1, maxItems: 1024 }),
});
export const RefuseSchema = message('refuse', {
  code: Type.String({ maxLength: 64 }),
  message: Type.String({ maxLength: 4096 }),
});

export type Hello = Static<typeof HelloSchema>;
export type Heartbeat = Static<typeof HeartbeatSchema>;
export type Ack = Static<typeof AckSchema>;
export type ResultMessage = Static<typeof ResultSchema>;
export type Pull = Static<typeof PullSchema>;
export type Renew = Static<typeof RenewSchema>;
export type Fetch = Static<typeof FetchSchema>;
export type Progress = Static<typeof ProgressSchema>;
export type Content = Static<typeof ContentSchema>;
export type Welcome = Static<typeof WelcomeSchema>;
export type TaskMessage = Static<typeof TaskMessageSchema>;
export type ResultAck = Static<typeof ResultAckSchema>;
export type Renewed = Static<typeof RenewedSchema>;
export type Refuse = Static<typeof RefuseSchema>;
export type Revoked = Static<typeof RevokedSchema>;
export type Ended = Static<typeof EndedSchema>;
export type Peers = Static<typeof PeersSchema>;

export type AgentMessage = Hello | Heartbeat | Ack | ResultMessage | Pull | Renew | Fetch | Progress;
export type CoordinatorMessage =
  | Welcome
  | TaskMessage
  | ResultAck
  | Renewed
  | Refuse
  | Content
  | Revoked
  | Ended
  | Peers;

const AGENT_SCHEMAS = {
  hello: HelloSchema,
  heartbeat: HeartbeatSchema,
  ack: AckSchema,
  result: ResultSchema,
  pull: PullSchema,
  renew: RenewSchema,
  fetch: FetchSchema,
  progress: ProgressSchema,
} as const;
const COORDINATOR_SCHEMAS = {
  welcome: WelcomeSchema,
  task: TaskMessageSchema,
  'result-ack': ResultAckSchema,
  renewed: RenewedSchema,
  refuse: RefuseSchema,
  content: ContentSchema,
  revoked: RevokedSchema,
  ended: EndedSchema,
  peers: PeersSchema,
} as const;

/** Validators compile on first use: an agent never pays for the schemas only the coordinator checks. */
function lazyChecks<S extends Record<string, TSchema>>(schemas: S): Map<string, () => TypeCheck<TSchema>> {
  return new Map(
    Object.entries(schemas).map(([k, schema]) => {
      let compiled: TypeCheck<TSchema> | undefined;
      return [k, () => (compiled ??= TypeCompiler.Compile(schema))];
    }),
  );
}
const agentChecks = lazyChecks(AGENT_SCHEMAS);
const coordinatorChecks = lazyChecks(COORDINATOR_SCHEMAS);

export type Decoded<M> = { ok: true; message: M } | { ok: false; reason: string };

function decode<M>(raw: string, checks: Map<string, () => TypeCheck<TSchema>>, from: string): Decoded<M> {
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch (err) {
    return { ok: false, reason: `not JSON: ${(err as Error).message}` };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { ok: false, reason: 'not a JSON object' };
  }
  const { v, type } = value as { v?: unknown; type?: unknown };
  if (v !== PROTOCOL_VERSION) {
    return {
      ok: false,
      reason: `protocol version ${JSON.stringify(v)} (this side speaks ${PROTOCOL_VERSION})`,
    };
  }
  const check = typeof type === 'string' ? checks.get(type)?.() : undefined;
  if (!check) {
    return {
      ok: false,
      reason: `unknown ${from} message type ${JSON.stringify(type)} (known: ${[...checks.keys()].join(', ')})`,
    };
  }
  if (!check.Check(value)) {
    const first = check.Errors(value).First();
    const where = first?.path || '/';
    return {
      ok: false,
      reason: `${type} message invalid at ${where}: ${first?.message ?? 'schema mismatch'}`,
    };
  }
  return { ok: true, message: value as M };
}

/** Bytes from an agent, as the coordinator receives them. */
export function decodeAgentMessage(raw: string): Decoded<AgentMessage> {
  return decode<AgentMessage>(raw, agentChecks, 'agent');
}

/** Bytes from the coordinator, as an agent receives them. */
export function decodeCoordinatorMessage(raw: string): Decoded<CoordinatorMessage> {
  return decode<CoordinatorMessage>(raw, coordinatorChecks, 'coordinator');
}

/** A message as its sender builds it; `encode` adds the version. */
export type WithoutV<M> = M extends unknown ? Omit<M, 'v'> : never;

/** Serializes a message, stamping the protocol version. */
export function encode(message: WithoutV<AgentMessage> | WithoutV<CoordinatorMessage>): string {
  return JSON.stringify({ v: PROTOCOL_VERSION, ...message });
}

/**
 * A task id is `RUN:HOST`: one task per host per run, so re-sending is
 * idempotent by construction. The later steps of an `--activate together`
 * distribution are `RUN:HOST:STEP` (host names hold no `:`).
 */
export function taskIdFor(runId: string, host: string, step?: ActivationStep): string {
  return step ? `${runId}:${host}:${step}` : `${runId}:${host}`;
}

export function parseTaskId(
  taskId: string,
): { runId: string; host: string; step?: ActivationStep } | undefined {
  const i = taskId.indexOf(':');
  if (i <= 0 || i === taskId.length - 1) return undefined;
  const runId = taskId.slice(0, i);
  const rest = taskId.slice(i + 1);
  const j = rest.indexOf(':');
  if (j < 0) return { runId, host: rest };
  const step = rest.slice(j + 1) as ActivationStep;
  if (j === 0 || !ACTIVATION_STEPS.includes(step)) return undefined;
  return { runId, host: rest.slice(0, j), step };
}

/**
 * A word for /bin/sh: as is when it holds only safe characters, else in single quotes. Commands
 * given as one string get host names (?HOST) and temp paths (validate's %s) substituted this way.
 */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_.,:/@%+=-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}
