/**
 * `canopy peer-rsh`: rsync's remote shell over the agents' peer channel. rsync
 * runs it as `<this command> HOST rsync --server --sender ... . PATH`; it dials
 * the peer with this agent's own certificate and key and the fleet CA (from
 * the agent's data directory), asks it to run that rsync command on the tree,
 * and pipes its own stdin and stdout to it, exiting with the remote exit code.
 * No sshd, no rsync daemon, and no shell on either end.
 *
 * A server whose certificate serial the agent's DATA/revoked.json lists is
 * hung up on before anything is sent (PEER_CODES.revoked).
 *
 * Its stdout is rsync's data stream: nothing else is ever written there.
 * Failures go to stderr as one line `canopy peer-rsh: CODE: message` (the
 * transfer component's syncFromPeer reads the code back) with exit code 255,
 * as ssh does, or 2 for a usage error.
 */
import type { Readable, Writable } from 'node:stream';
import { parseHostPort } from '../agent/config.js';
import { loadIdentity, loadRevoked } from '../agent/index.js';
import { CanopyError, isCanopyError } from '../errors/index.js';
import { formatRshError, runPeerRsync } from '../transfer/index.js';
import { usage } from './args.js';
import type { CliIO } from './io.js';

export const PEER_RSH_HELP = `usage: canopy peer-rsh --data DIR --peer NAME@HOST:PORT --tree ID HOST rsync --server --sender ...

rsync's remote shell for pulling a tree from another agent over the peer
channel (mutual TLS with the agents' own certificates). rsync runs it:

  rsync -a --partial -e "canopy peer-rsh --data /var/lib/canopy --peer web01@10.0.0.5:7443 --tree T" \\
    web01:PATH LOCAL/

options:
  --data DIR               this agent's data directory (its identity: certificate, key, fleet CA)
  --peer NAME@HOST:PORT    the agent to pull from and its peer address (--peer-listen)
  --tree ID                the tree a running distribution lets this agent pull from it
  --connect-timeout MS     connecting and the TLS handshake (default 30000)

HOST (given by rsync) is not dialled: --peer says where to go. Exit code: the
remote rsync's, or 255 when the peer could not be reached or refused (the
reason on stderr), 2 for a usage error.
`;

/** The streams rsync gives its remote shell; the process's own unless a test passes others. */
export interface RshStdio {
  stdin: Readable;
  stdout: Writable;
  stderr: Writable;
}

interface RshArgs {
  data: string;
  peer: { name: string; host: string; port: number };
  tree: string;
  connectTimeoutMs: number;
  command: string[];
}

export async function peerRshCommand(
  argv: string[],
  io: CliIO,
  stdio: RshStdio = { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr },
): Promise<number> {
  if (argv[0] === '--help' || argv[0] === '-h') {
    io.out.write(PEER_RSH_HELP);
    return 0;
  }
  let args: RshArgs | undefined;
  try {
    args = parseRshArgs(argv);
    const identity = await loadIdentity(args.data);
    if (!identity) {
      throw new CanopyError(
        'AGENT_CONFIG',
        `no agent identity in ${args.data} (identity.json): pass the agent's --data directory, or join the agent first`,
        { path: args.data },
      );
    }
    // The serials the agent was last told are revoked: a revoked server is not even sent the request.
    const revoked = await loadRevoked(args.data);
    return await runPeerRsync({
      ...args.peer,
      peer: args.peer.name,
      isRevoked: (serial) => revoked.has(serial),
      identity: { certPem: identity.certPem, keyPem: identity.keyPem },
      caPem: identity.caPem,
      tree: args.tree,
      args: args.command,
      connectTimeoutMs: args.connectTimeoutMs,
      ...stdio,
    });
  } catch (err) {
    if (!isCanopyError(err)) throw err;
    stdio.stderr.write(formatRshError(err));
    return err.code === 'USAGE' ? 2 : 255;
  } finally {
    // rsync may keep our stdin open; the pull is over either way.
    stdio.stdin.destroy();
  }
}

/**
 * Our options first, then rsync's host and remote command, which are not
 * ours to parse (they start with `rsync --server`). rsync adds `-l USER` before
 * the host for a `user@host:` source; there is no user here, so it is ignored.
 */
function parseRshArgs(argv: string[]): RshArgs {
  const values: Record<string, string> = {};
  let i = 0;
  for (; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (!arg.startsWith('-')) break;
    const [flag = '', inline] = arg.split(/=(.*)/s, 2);
    if (!['--data', '--peer', '--tree', '--connect-timeout', '-l'].includes(flag)) {
      throw usage('peer-rsh', `unknown option ${JSON.stringify(arg)}`);
    }
    const value = inline ?? argv[++i];
    if (value === undefined) throw usage('peer-rsh', `${flag} needs a value`);
    values[flag] = value;
  }
  const command = argv.slice(i + 1);
  if (i >= argv.length || command.length === 0) {
    throw usage(
      'peer-rsh',
      'no remote command: rsync runs this as its remote shell (rsync -e "canopy peer-rsh ...")',
    );
  }
  const { '--data': data, '--peer': peer, '--tree': tree } = values;
  if (!data) throw usage('peer-rsh', '--data DIR is required');
  if (!tree) throw usage('peer-rsh', '--tree ID is required');
  const at = peer?.indexOf('@') ?? -1;
  const where = peer && at > 0 ? parseHostPort(peer.slice(at + 1)) : undefined;
  if (!peer || !where) {
    throw usage(
      'peer-rsh',
      `--peer ${JSON.stringify(peer ?? '')} is not NAME@HOST:PORT (e.g. web01@10.0.0.5:7443)`,
    );
  }
  const timeout = Number(values['--connect-timeout'] ?? 30_000);
  if (!Number.isInteger(timeout) || timeout <= 0) {
    throw usage(
      'peer-rsh',
      `--connect-timeout ${JSON.stringify(values['--connect-timeout'])} is not a whole number of ms`,
    );
  }
  return { data, tree, peer: { name: peer.slice(0, at), ...where }, connectTimeoutMs: timeout, command };
}
