/**
 * The peer channel's wire format: how agents ask each other for chunks and
 * answer, byte for byte. Owns framing, the message schemas and the error codes
 * peers use; it never touches a socket, a file or a store.
 *
 * A connection is TLS 1.3 with mutual authentication (see peer-server.ts)
 * and ALPN `canopy-peer/1`: the ALPN name is the protocol version, so no
 * byte of the stream is spent on it and an old peer fails the handshake
 * instead of misreading frames. Both directions carry frames:
 *
 *   frame   = prefix header payload
 *   prefix  = u32 big-endian header length (1..8192), u32 big-endian payload length
 *   header  = a UTF-8 JSON object, one of the messages below
 *   payload = raw bytes (never base64): a chunk's data, or nothing
 *
 * Client to server (payload always empty):
 *   {"type":"get","id":7,"blob":"<64 hex>","chunk":3}   chunk 3 of the blob whose manifest id is given
 *   {"type":"cancel","id":7}                             drop request 7 if it has not started
 * Server to client:
 *   {"type":"chunk","id":7}  + the chunk's bytes         the answer to get 7
 *   {"type":"error","id":7,"code":"...","message":"..."} get 7 refused; the connection stays usable
 *   {"type":"error","code":"...","message":"..."}        (no id) the connection is refused; the server hangs up
 *
 * Requests carry a client-chosen id (a positive integer, unique among the
 * client's pending requests), and the server may answer them in any order;
 * the client matches answers by id, so several requests are in flight on one
 * connection. Frames never interleave: a payload follows its header at once.
 * A cancelled request may still be answered (if it had started), and the
 * client discards that answer as it streams in.
 *
 * A connection whose first request is `rsync` becomes a stream connection
 * instead (no `get` is accepted on it, before or after): the server runs the
 * system rsync as `rsync --server --sender` over the tree the request names,
 * with arguments it validates itself (rsync.ts), and the frames carry that
 * process's standard streams until it exits:
 *
 * Client to server:
 *   {"type":"rsync","id":1,"tree":"<id>","args":["rsync","--server","--sender",...]}   first frame only
 *   {"type":"stdin"}  + bytes            for the rsync's standard input (at most 256 KiB a frame)
 *   {"type":"eof"}                       its standard input is closed
 * Server to client:
 *   {"type":"stdout"} + bytes            what it wrote to standard output (at most 256 KiB a frame)
 *   {"type":"stderr"} + bytes            what it wrote to standard error (at most 64 KiB in all; the rest is cut)
 *   {"type":"exit","code":0}             it exited (`signal` names a signal that ended it); the server hangs up
 *   {"type":"error","id":1,"code":"...","message":"..."}   the request was refused; the server hangs up
 *
 * `args` is the remote command exactly as the rsync client handed it to its
 * remote shell (rsync's --rsh), with rsync's own backslash escapes. There is
 * no window: each side stops reading the socket while the process (or the
 * local rsync) does not take its input, so TCP pushes back in both directions.
 *
 * Limits: a header over 8 KiB, a request with a payload, a chunk payload over
 * the receiver's maximum (at most 64 MiB, the largest chunk size), bad JSON
 * or a message that breaks its schema make the receiver refuse the
 * connection (an `error` frame without id where it can, then hang up). Error
 * codes are canopy's CanopyError codes; a receiver maps a code it does not
 * know to TRANSFER_PEER_PROTOCOL.
 */
import { type Static, type TSchema, Type } from '@sinclair/typebox';
import { type TypeCheck, TypeCompiler } from '@sinclair/typebox/compiler';
import { CODES, type ErrorCode } from '../errors/index.js';
import { MAX_CHUNK_SIZE } from './manifest.js';

/** The ALPN protocol name of the peer channel; a new wire format gets a new name. */
export const PEER_ALPN = 'canopy-peer/1';
export const PREFIX_BYTES = 8;
export const MAX_HEADER_BYTES = 8 * 1024;
/** The largest payload any peer accepts: the largest chunk a manifest allows. */
export const MAX_PAYLOAD_BYTES = MAX_CHUNK_SIZE;
/** Error messages longer than this are cut before they are sent (the header must stay under 8 KiB). */
export const MAX_MESSAGE_CHARS = 2000;

/** The codes the peer channel raises, in one place. */
export const PEER_CODES = {
  /** A blob that no running distribution lets this peer fetch. */
  forbidden: 'TRANSFER_PEER_FORBIDDEN',
  /** A certificate of the fleet CA that does not name an agent, or the wrong ALPN. */
  notAnAgent: 'AGENT_CERT_REFUSED',
  /** A client certificate whose serial is revoked. */
  revoked: 'AGENT_REVOKED',
  /** A malformed frame. */
  protocol: 'TRANSFER_PEER_PROTOCOL',
  /** The peer sent no byte for the stall timeout while requests were pending. */
  stalled: 'TRANSFER_PEER_STALLED',
  /** The peer could not be reached, or hung up with requests pending. */
  lost: 'TRANSFER_PEER_LOST',
  /** The peer lacks the chunk. */
  missing: 'TRANSFER_CHUNK_MISSING',
  /** The chunk's bytes do not hash to the manifest's digest. */
  mismatch: 'TRANSFER_DIGEST_MISMATCH',
} as const satisfies Record<string, ErrorCode>;

const Id = Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER });
const BlobId = Type.String({ pattern: '^[0-9a-f]{64}$' });
const Code = Type.String({ pattern: '^[A-Z][A-Z0-9_]{0,63}$' });

export const GetSchema = Type.Object(
  {
    type: Type.Literal('get'),
    id: Id,
    blob: BlobId,
    chunk: Type.Integer({ minimum: 0, maximum: 2 ** 31 }),
  },
  { additionalProperties: false },
);
export type Get = Static<typeof GetSchema>;

/**
 * The blob's manifest, answered like a chunk (`chunk {id}` + its canonical
 * JSON bytes, which hash to the blob id): agents get a distribution's
 * manifest from their parents, not each from the coordinator.
 */
export const ManifestGetSchema = Type.Object(
  { type: Type.Literal('manifest'), id: Id, blob: BlobId },
  { additionalProperties: false },
);
export type ManifestGet = Static<typeof ManifestGetSchema>;

export const CancelSchema = Type.Object(
  { type: Type.Literal('cancel'), id: Id },
  { additionalProperties: false },
);
export type Cancel = Static<typeof CancelSchema>;

export const ChunkSchema = Type.Object(
  { type: Type.Literal('chunk'), id: Id },
  { additionalProperties: false },
);
export type ChunkReply = Static<typeof ChunkSchema>;

export const ErrorReplySchema = Type.Object(
  {
    type: Type.Literal('error'),
    id: Type.Optional(Id),
    code: Code,
    message: Type.String({ maxLength: MAX_MESSAGE_CHARS }),
  },
  { additionalProperties: false },
);
export type ErrorReply = Static<typeof ErrorReplySchema>;

/** A tree id: what a distribution calls the directory or file it lets peers pull with rsync. */
const TreeId = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$' });

export const RsyncSchema = Type.Object(
  {
    type: Type.Literal('rsync'),
    id: Id,
    tree: TreeId,
    args: Type.Array(Type.String({ maxLength: 4096 }), { minItems: 1, maxItems: 64 }),
  },
  { additionalProperties: false },
);
export type RsyncRequest = Static<typeof RsyncSchema>;

const NoFields = <T extends string>(type: T) =>
  Type.Object({ type: Type.Literal(type) }, { additionalProperties: false });

export const StdinSchema = NoFields('stdin');
export const EofSchema = NoFields('eof');
export const StdoutSchema = NoFields('stdout');
export const StderrSchema = NoFields('stderr');
export const ExitSchema = Type.Object(
  {
    type: Type.Literal('exit'),
    code: Type.Integer({ minimum: 0, maximum: 255 }),
    signal: Type.Optional(Type.String({ pattern: '^SIG[A-Z0-9]{1,16}$' })),
  },
  { additionalProperties: false },
);
export type ExitReply = Static<typeof ExitSchema>;

export type PeerRequest = Get | ManifestGet | Cancel | RsyncRequest;
export type PeerReply = ChunkReply | ErrorReply;
/** What a client sends on a stream connection after its `rsync` request. */
export type StreamInput = Static<typeof StdinSchema> | Static<typeof EofSchema>;
/** What a server sends on a stream connection. */
export type StreamOutput = Static<typeof StdoutSchema> | Static<typeof StderrSchema> | ExitReply | ErrorReply;

/** The largest stdin or stdout payload of a stream frame. */
export const MAX_STREAM_PAYLOAD_BYTES = 256 * 1024;
/** Standard error relayed per stream connection; the rest is counted, not sent. */
export const MAX_STREAM_STDERR_BYTES = 64 * 1024;

/** Where a malformed frame was found; the message says what was wrong. */
export class WireError extends Error {
  override readonly name = 'WireError';
}

type Checks = Map<string, () => TypeCheck<TSchema>>;

function lazyChecks(schemas: Record<string, TSchema>): Checks {
  return new Map(
    Object.entries(schemas).map(([k, schema]) => {
      let compiled: TypeCheck<TSchema> | undefined;
      return [k, () => (compiled ??= TypeCompiler.Compile(schema))];
    }),
  );
}

const requestChecks = lazyChecks({
  get: GetSchema,
  manifest: ManifestGetSchema,
  cancel: CancelSchema,
  rsync: RsyncSchema,
});
const replyChecks = lazyChecks({ chunk: ChunkSchema, error: ErrorReplySchema });
const streamInputChecks = lazyChecks({ stdin: StdinSchema, eof: EofSchema });
const streamOutputChecks = lazyChecks({
  stdout: StdoutSchema,
  stderr: StderrSchema,
  exit: ExitSchema,
  error: ErrorReplySchema,
});

function decodeHeader<M>(bytes: Buffer, checks: Checks): M {
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new WireError(`frame header is not JSON: ${(err as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new WireError('frame header is not a JSON object');
  }
  const type = (value as { type?: unknown }).type;
  const check = typeof type === 'string' ? checks.get(type)?.() : undefined;
  if (!check) {
    throw new WireError(
      `unknown message type ${JSON.stringify(type)?.slice(0, 80)} (known: ${[...checks.keys()].join(', ')})`,
    );
  }
  if (!check.Check(value)) {
    const first = check.Errors(value).First();
    throw new WireError(
      `${type} message invalid at ${first?.path || '/'}: ${first?.message ?? 'schema mismatch'}`,
    );
  }
  return value as M;
}

/** A request header's bytes as a request; throws WireError. */
export function decodeRequest(bytes: Buffer): PeerRequest {
  return decodeHeader<PeerRequest>(bytes, requestChecks);
}

/** A reply header's bytes as a reply; throws WireError. */
export function decodeReply(bytes: Buffer): PeerReply {
  return decodeHeader<PeerReply>(bytes, replyChecks);
}

/** A stream client's frame header (after its `rsync` request) as a message; throws WireError. */
export function decodeStreamInput(bytes: Buffer): StreamInput {
  return decodeHeader<StreamInput>(bytes, streamInputChecks);
}

/** A stream server's frame header as a message; throws WireError. */
export function decodeStreamOutput(bytes: Buffer): StreamOutput {
  return decodeHeader<StreamOutput>(bytes, streamOutputChecks);
}

/**
 * The prefix and header of a frame, ready to write; the caller writes the
 * `payloadLength` payload bytes right after it.
 */
export function encodeFrame(
  message: PeerRequest | PeerReply | StreamInput | StreamOutput,
  payloadLength = 0,
): Buffer {
  const header = Buffer.from(JSON.stringify(message), 'utf8');
  if (header.length > MAX_HEADER_BYTES) throw new RangeError(`frame header of ${header.length} bytes`);
  const frame = Buffer.allocUnsafe(PREFIX_BYTES + header.length);
  frame.writeUInt32BE(header.length, 0);
  frame.writeUInt32BE(payloadLength, 4);
  header.copy(frame, PREFIX_BYTES);
  return frame;
}

/** An error reply, its message cut to what a header holds. */
export function errorReply(code: ErrorCode, message: string, id?: number): ErrorReply {
  const text = message.length > MAX_MESSAGE_CHARS ? `${message.slice(0, MAX_MESSAGE_CHARS - 1)}…` : message;
  return id === undefined
    ? { type: 'error', code, message: text }
    : { type: 'error', id, code, message: text };
}

/** A code received from a peer, as a local code: unknown codes become TRANSFER_PEER_PROTOCOL. */
export function knownCode(code: string): ErrorCode {
  return Object.hasOwn(CODES, code) ? (code as ErrorCode) : PEER_CODES.protocol;
}

/** What a FrameDecoder hands its owner, synchronously, in stream order. */
export interface FrameSink<M> {
  /** A frame's decoded header; `payloadLength` payload bytes follow (as onPayload slices). */
  onHeader(message: M, payloadLength: number): void;
  /** A slice of the current frame's payload; valid only during the call (copy what you keep). */
  onPayload(slice: Buffer): void;
  /** The current frame is complete (called for frames without payload too). */
  onFrameEnd(): void;
}

/**
 * Splits a byte stream into frames. Holds at most one header (8 KiB) and the
 * 8-byte prefix; payload bytes are passed through as slices of the input, so
 * a 64 MiB chunk is never copied or buffered here. push() throws WireError
 * on a malformed frame, after which the decoder must not be used.
 */
export class FrameDecoder<M> {
  private readonly prefix = Buffer.alloc(PREFIX_BYTES);
  private prefixFill = 0;
  private header: Buffer | undefined;
  private headerFill = 0;
  private payloadLength = 0;
  private payloadLeft = 0;
  private inPayload = false;

  constructor(
    private readonly decode: (header: Buffer) => M,
    /** Largest payload accepted, and what to say when a frame carries more. */
    private readonly maxPayload: { bytes: number; what: string },
    private readonly sink: FrameSink<M>,
  ) {}

  /** True between frames (nothing of a frame received and not yet handed on). */
  get idle(): boolean {
    return this.prefixFill === 0 && !this.header && !this.inPayload;
  }

  push(data: Buffer): void {
    let at = 0;
    while (at < data.length) {
      if (this.inPayload) at = this.takePayload(data, at);
      else if (this.header) at = this.takeHeader(data, at);
      else at = this.takePrefix(data, at);
    }
  }

  private takePrefix(data: Buffer, at: number): number {
    const n = Math.min(PREFIX_BYTES - this.prefixFill, data.length - at);
    data.copy(this.prefix, this.prefixFill, at, at + n);
    this.prefixFill += n;
    if (this.prefixFill < PREFIX_BYTES) return at + n;
    this.prefixFill = 0;
    const headerLength = this.prefix.readUInt32BE(0);
    const payloadLength = this.prefix.readUInt32BE(4);
    if (headerLength === 0 || headerLength > MAX_HEADER_BYTES) {
      throw new WireError(`frame header of ${headerLength} bytes (1 to ${MAX_HEADER_BYTES} allowed)`);
    }
    if (payloadLength > this.maxPayload.bytes) {
      throw new WireError(`frame payload of ${payloadLength} bytes (${this.maxPayload.what})`);
    }
    this.header = Buffer.allocUnsafe(headerLength);
    this.headerFill = 0;
    this.payloadLength = payloadLength;
    return at + n;
  }

  private takeHeader(data: Buffer, at: number): number {
    const header = this.header as Buffer;
    const n = Math.min(header.length - this.headerFill, data.length - at);
    data.copy(header, this.headerFill, at, at + n);
    this.headerFill += n;
    if (this.headerFill < header.length) return at + n;
    this.header = undefined;
    this.sink.onHeader(this.decode(header), this.payloadLength);
    this.payloadLeft = this.payloadLength;
    this.inPayload = true;
    if (this.payloadLeft === 0) this.endFrame();
    return at + n;
  }

  private takePayload(data: Buffer, at: number): number {
    const n = Math.min(this.payloadLeft, data.length - at);
    this.sink.onPayload(data.subarray(at, at + n));
    this.payloadLeft -= n;
    if (this.payloadLeft === 0) this.endFrame();
    return at + n;
  }

  private endFrame(): void {
    this.inPayload = false;
    this.sink.onFrameEnd();
  }
}
