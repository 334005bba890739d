/**
 * A stream connection of the peer channel (wire format: peer-wire.ts): the
 * standard streams of one `rsync --server --sender` process on the serving
 * agent, carried as frames to the pulling agent's `canopy peer-rsh`. It owns
 * the pumping of bytes and the child's life on both ends; it never decides
 * what may run (rsync.ts validates the command, the server's authorizeTree
 * decides the tree) and never runs a shell.
 *
 * Bounded memory, both ways: a side stops reading its source while its sink
 * is full. The server pauses the socket while the child's stdin has not
 * drained, and pauses the child's stdout while the socket has not drained (or
 * the upload cap asks it to wait); the client does the same with its own
 * stdin and stdout. So at most a frame or two per direction is held here, plus
 * the input that arrived while the command was being checked (one read).
 * Invariant: the child is killed when the connection goes, and an `exit`
 * frame is sent only after everything the child wrote.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { constants } from 'node:os';
import type { Readable, Writable } from 'node:stream';
import type tls from 'node:tls';
import { CanopyError, isCanopyError } from '../errors/index.js';
import { type DialOptions, dialPeer, tlsError } from './peer-client.js';
import type { PeerLog } from './peer-server.js';
import {
  decodeStreamOutput,
  type ErrorReply,
  type ExitReply,
  encodeFrame,
  errorReply,
  FrameDecoder,
  knownCode,
  MAX_STREAM_PAYLOAD_BYTES,
  MAX_STREAM_STDERR_BYTES,
  PEER_CODES,
  type StreamInput,
  type StreamOutput,
  WireError,
} from './peer-wire.js';
import type { RateLimiter } from './rate-limit.js';
import type { ServerSpawn } from './rsync.js';

/** How long a refused client has to read the refusal before the socket is destroyed. */
const REFUSE_LINGER_MS = 2000;

/** rsync pulls served since the server started; read, never write. */
export interface RsyncStats {
  /** rsync processes started. */
  started: number;
  /** rsync requests refused (tree, command, path, or too many at once). */
  refused: number;
  /** rsync processes running now (and pulls being checked, which hold a slot). */
  running: number;
  /** Bytes of rsync output sent to peers. */
  bytesSent: number;
}

export interface RsyncSessionOptions {
  socket: tls.TLSSocket;
  /** The pulling agent's name. */
  peer: string;
  /** This agent's name, for messages. */
  self: string;
  tree: string;
  log: PeerLog;
  stats: RsyncStats;
  limiter?: RateLimiter;
  /** Between SIGTERM and SIGKILL when the connection drops; default 5 s. */
  killGraceMs?: number;
}

/**
 * The serving end: created when the `rsync` request arrives (input is held
 * while the command is checked), then start()ed with the argv to spawn, or
 * refuse()d. The connection hands it every later frame and its close.
 */
export class RsyncSession {
  readonly done: Promise<void>;
  private child: ChildProcess | undefined;
  /** Input that arrived while the command was checked (the socket is paused meanwhile: one read at most). */
  private held: (Buffer | 'eof')[] = [];
  /** Refused or gone: input is dropped. */
  private over = false;
  /** The socket is paused until the child's stdin drains. */
  private inputWait = false;
  private frame: StreamInput['type'] | undefined;
  private readonly outHolds = new Set<'drain' | 'rate'>();
  private stderrSent = 0;
  private stderrCut = 0;
  private stderrTail = '';
  private socketClosed = false;
  private childDone = true;
  private finish: () => void = () => {};

  constructor(private readonly o: RsyncSessionOptions) {
    this.done = new Promise((resolve) => {
      this.finish = resolve;
    });
  }

  /** A frame header from the client; throws WireError for a frame that breaks the stream's rules. */
  onHeader(message: StreamInput, length: number): void {
    if (message.type === 'eof' && length > 0)
      throw new WireError(`eof frame with a payload of ${length} bytes`);
    this.frame = message.type;
  }

  onPayload(slice: Buffer): void {
    // The decoder's slices are views of the socket's read: copy what outlives this call.
    this.input(Buffer.from(slice));
  }

  onFrameEnd(): void {
    if (this.frame === 'eof') this.input('eof');
    this.frame = undefined;
  }

  /** Spawns the system rsync (argv array, no shell) in `spawn.cwd` and starts pumping. */
  start(rsyncPath: string, spec: ServerSpawn): void {
    if (this.socketClosed) {
      this.settle();
      return;
    }
    const { o } = this;
    const child = spawn(rsyncPath, spec.argv, {
      cwd: spec.cwd,
      stdio: ['pipe', 'pipe', 'pipe'],
      shell: false,
    });
    this.childDone = false; // only now: a spawn that throws leaves nothing to wait for
    this.child = child;
    o.stats.started++;
    o.stats.running++;
    const started = Date.now();
    o.log.info({ peer: o.peer, tree: o.tree, cwd: spec.cwd, argv: spec.argv }, 'transfer.peer.rsync_started');
    child.stdin?.on('error', (err) => o.log.debug({ err, peer: o.peer }, 'transfer.peer.rsync_stdin_error'));
    child.stdout?.on('data', (data: Buffer) => this.relay('stdout', data));
    child.stderr?.on('data', (data: Buffer) => this.relayStderr(data));
    o.socket.on('drain', () => this.release('drain'));
    child.once('error', (err) => {
      if (child.pid !== undefined) return; // a failed kill or write; 'close' still comes
      o.log.warn({ err, peer: o.peer, tree: o.tree, rsync: rsyncPath }, 'transfer.peer.rsync_spawn_failed');
      this.exited(
        errorReply(
          'AGENT_CONFIG',
          `${o.self} cannot run ${rsyncPath} (${err.message}): install rsync on ${o.self}, or pull from another peer`,
          1,
        ),
      );
    });
    child.once('close', (code, signal) => {
      if (this.childDone) return;
      const exit = code ?? (signal ? 128 + (constants.signals[signal] ?? 0) : 255);
      const fields = { peer: o.peer, tree: o.tree, code: exit, signal, ms: Date.now() - started };
      if (exit === 0) o.log.info(fields, 'transfer.peer.rsync_finished');
      else o.log.warn({ ...fields, stderr: this.stderrTail }, 'transfer.peer.rsync_failed');
      if (this.stderrCut > 0) {
        this.writeFrame(
          'stderr',
          Buffer.from(`canopy: ${this.stderrCut} more bytes of rsync's stderr were cut\n`),
        );
      }
      this.exited(signal ? { type: 'exit', code: exit & 255, signal } : { type: 'exit', code: exit & 255 });
    });
    const held = this.held;
    this.held = [];
    for (const item of held) this.input(item);
    if (!this.inputWait) o.socket.resume();
  }

  /** Answers the request with a refusal and hangs up; nothing was spawned. */
  refuse(reply: ErrorReply): void {
    this.over = true;
    this.held = [];
    const { socket } = this.o;
    if (!this.socketClosed && socket.writable) {
      socket.end(encodeFrame(reply));
      socket.resume();
      // A client that does not hang up after the refusal is cut off.
      setTimeout(() => socket.destroy(), REFUSE_LINGER_MS).unref();
    }
    this.settle();
  }

  /** The connection is gone: kill the child (SIGTERM, then SIGKILL after the grace). */
  onClose(): void {
    this.socketClosed = true;
    this.over = true;
    this.held = [];
    const child = this.child;
    if (child && !this.childDone) {
      this.o.log.warn({ peer: this.o.peer, tree: this.o.tree, pid: child.pid }, 'transfer.peer.rsync_killed');
      child.kill('SIGTERM');
      // Drain what it still writes (to nowhere), so its streams end and 'close' comes.
      this.outHolds.clear();
      child.stdout?.resume();
      const timer = setTimeout(() => child.kill('SIGKILL'), this.o.killGraceMs ?? 5000);
      timer.unref();
      child.once('close', () => clearTimeout(timer));
    }
    this.settle();
  }

  /** The child is gone (or never started): the last frame, then hang up. Once only. */
  private exited(last: ExitReply | ErrorReply): void {
    if (this.childDone) return;
    this.childDone = true;
    this.o.stats.running--;
    if (!this.socketClosed && this.o.socket.writable) {
      this.o.socket.end(encodeFrame(last));
      this.o.socket.resume();
    }
    this.settle();
  }

  private settle(): void {
    if (this.childDone && (this.socketClosed || !this.child)) this.finish();
  }

  private input(item: Buffer | 'eof'): void {
    const stdin = this.child?.stdin;
    if (this.over) return;
    if (!this.child) {
      this.held.push(item);
      return;
    }
    if (!stdin || stdin.destroyed) return;
    if (item === 'eof') {
      stdin.end();
      return;
    }
    if (!stdin.write(item) && !this.inputWait) {
      this.inputWait = true;
      this.o.socket.pause();
      stdin.once('drain', () => {
        this.inputWait = false;
        if (!this.over) this.o.socket.resume();
      });
    }
  }

  private relay(type: 'stdout' | 'stderr', data: Buffer): void {
    for (let at = 0; at < data.length; at += MAX_STREAM_PAYLOAD_BYTES) {
      this.writeFrame(type, data.subarray(at, at + MAX_STREAM_PAYLOAD_BYTES));
    }
    this.o.stats.bytesSent += data.length;
    if (this.o.socket.writableNeedDrain) this.hold('drain');
    const wait = this.o.limiter?.reserve(data.length) ?? 0;
    if (wait > 0) {
      this.hold('rate');
      this.o.limiter?.wait(wait).then(
        () => this.release('rate'),
        () => this.release('rate'),
      );
    }
  }

  private relayStderr(data: Buffer): void {
    this.stderrTail = (this.stderrTail + data.toString('utf8')).slice(-2000);
    const room = MAX_STREAM_STDERR_BYTES - this.stderrSent;
    const send = data.subarray(0, Math.max(0, room));
    this.stderrCut += data.length - send.length;
    this.stderrSent += send.length;
    if (send.length > 0) this.relay('stderr', send);
  }

  /** Header and payload in one synchronous go, so frames never interleave. */
  private writeFrame(type: 'stdout' | 'stderr', payload: Buffer): void {
    if (this.socketClosed || !this.o.socket.writable) return;
    this.o.socket.write(encodeFrame({ type }, payload.length));
    this.o.socket.write(payload);
  }

  private hold(reason: 'drain' | 'rate'): void {
    this.outHolds.add(reason);
    this.child?.stdout?.pause();
  }

  private release(reason: 'drain' | 'rate'): void {
    if (!this.outHolds.delete(reason) || this.outHolds.size > 0) return;
    this.child?.stdout?.resume();
  }
}

// --- the pulling end

export interface PeerRsyncOptions extends DialOptions {
  /** The tree the distribution lets this agent pull. */
  tree: string;
  /** The remote command as rsync handed it to its remote shell: ['rsync', '--server', '--sender', ...]. */
  args: readonly string[];
  /** The local rsync's end: its output to the peer, the peer's output to it, and the peer's stderr. */
  stdin: Readable;
  stdout: Writable;
  stderr: Writable;
  /** Connecting and the TLS handshake; default 30 s. (Idle links are rsync's --timeout to judge.) */
  connectTimeoutMs?: number;
}

/**
 * Runs rsync's server end on the peer and pumps the standard streams until
 * it exits; resolves with its exit code. Throws the peer's refusal as a
 * CanopyError with its code (TRANSFER_PEER_FORBIDDEN, ...), a TLS or
 * connection failure naming the peer, or the signal's reason.
 */
export async function runPeerRsync(o: PeerRsyncOptions): Promise<number> {
  const socket = await dialPeer(o, o.connectTimeoutMs ?? 30_000);
  return new StreamClient(socket, o).result;
}

class StreamClient {
  readonly result: Promise<number>;
  private readonly where: string;
  private readonly decoder: FrameDecoder<StreamOutput>;
  private frame: StreamOutput | undefined;
  private exit: number | undefined;
  private failure: unknown;
  private received = 0;
  /** The socket is paused until the local stdout drains. */
  private outputWait = false;

  constructor(
    private readonly socket: tls.TLSSocket,
    private readonly o: PeerRsyncOptions,
  ) {
    this.where = `peer ${o.peer} (${o.host}:${o.port})`;
    this.decoder = new FrameDecoder<StreamOutput>(
      decodeStreamOutput,
      {
        bytes: MAX_STREAM_PAYLOAD_BYTES,
        what: `stream frames carry at most ${MAX_STREAM_PAYLOAD_BYTES} bytes`,
      },
      {
        onHeader: (m) => {
          this.frame = m;
        },
        onPayload: (slice) => this.onPayload(slice),
        onFrameEnd: () => this.onFrameEnd(),
      },
    );
    this.result = new Promise<number>((resolve, reject) => {
      const onAbort = () => this.fail(o.signal?.reason);
      o.signal?.addEventListener('abort', onAbort, { once: true });
      socket.once('close', () => {
        o.signal?.removeEventListener('abort', onAbort);
        this.stopInput();
        if (this.failure === undefined && this.exit !== undefined) resolve(this.exit);
        else reject(this.failure ?? this.lost('hung up before rsync exited'));
      });
    });
    socket.on('data', (data: Buffer) => this.onData(data));
    socket.on('error', (err) =>
      this.fail(tlsError(err, this.where, o.peer) ?? this.lost(`failed (${err.message})`)),
    );
    socket.write(encodeFrame({ type: 'rsync', id: 1, tree: o.tree, args: [...o.args] }));
    o.stdin.on('data', (data: Buffer) => this.send(data));
    o.stdin.once('end', () => {
      if (!socket.destroyed) socket.write(encodeFrame({ type: 'eof' }));
    });
    o.stdin.once('error', (err) => this.fail(this.lost(`lost its local input (${err.message})`)));
    o.stdout.on('error', (err) => this.fail(this.lost(`could not hand rsync its output (${err.message})`)));
    socket.on('drain', () => o.stdin.resume());
  }

  private send(data: Buffer): void {
    for (let at = 0; at < data.length; at += MAX_STREAM_PAYLOAD_BYTES) {
      const slice = data.subarray(at, at + MAX_STREAM_PAYLOAD_BYTES);
      this.socket.write(encodeFrame({ type: 'stdin' }, slice.length));
      this.socket.write(slice);
    }
    if (this.socket.writableNeedDrain) this.o.stdin.pause();
  }

  private onData(data: Buffer): void {
    this.received += data.length;
    try {
      this.decoder.push(data);
    } catch (err) {
      if (err instanceof WireError) {
        this.fail(
          new CanopyError(
            PEER_CODES.protocol,
            `${this.where} sent a malformed stream frame: ${err.message}; check both agents run the same canopy version`,
            { peer: this.o.peer, cause: err },
          ),
        );
      } else this.fail(err);
    }
  }

  private onPayload(slice: Buffer): void {
    const type = this.frame?.type;
    if (type === 'stderr') this.o.stderr.write(Buffer.from(slice));
    else if (type !== 'stdout') throw new WireError(`a ${type} frame with a payload`);
    else if (!this.o.stdout.write(Buffer.from(slice)) && !this.outputWait) {
      this.outputWait = true;
      this.socket.pause();
      this.o.stdout.once('drain', () => {
        this.outputWait = false;
        this.socket.resume();
      });
    }
  }

  private onFrameEnd(): void {
    const m = this.frame;
    this.frame = undefined;
    if (m?.type === 'exit') this.exit = m.code;
    if (m?.type === 'error') {
      const { code, message } = m;
      this.fail(
        new CanopyError(knownCode(code), `${this.where}: ${message}`, {
          peer: this.o.peer,
          tree: this.o.tree,
          remoteCode: code,
        }),
      );
    }
  }

  private fail(err: unknown): void {
    if (this.failure !== undefined || (this.exit !== undefined && isCanopyError(err, PEER_CODES.lost)))
      return;
    this.failure = err;
    this.socket.destroy();
  }

  private stopInput(): void {
    this.o.stdin.removeAllListeners('data');
    this.o.stdin.pause();
  }

  private lost(what: string): CanopyError {
    const hint =
      this.received === 0
        ? " (it hung up before sending anything: it may have refused this agent's certificate; its log " +
          'says why. Check that the certificate is current and from the fleet CA)'
        : '';
    const pulling = `${this.where} ${what} while serving tree ${this.o.tree}`;
    return new CanopyError(PEER_CODES.lost, `${pulling}${hint}; pull again or from another peer`, {
      peer: this.o.peer,
      tree: this.o.tree,
    });
  }
}
