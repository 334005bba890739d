/**
 * The one error class of canopy, and the catalogue of its codes.
 *
 * Every failure an operator can meet carries a stable `code` from CODES, a
 * message that names the thing at fault and the fix, the subject in fields
 * (`file`, `line`, `host`, `variable`, ...) and the error it wraps in `cause`.
 * docs/errors.md lists every code; a test keeps the two in step.
 * This module imports nothing of canopy's: every component may use it.
 */

/** Every error code, grouped by area, with a one-line meaning. */
export const CODES = {
  // usage and input (CLI exit code 2)
  USAGE: 'the command line is wrong: unknown flag, missing argument, bad value',
  INPUT_NOT_FOUND: 'a file or directory named on the command line or in a config does not exist',
  // inventory
  INVENTORY_YAML: 'an inventory file is not valid YAML',
  INVENTORY_INVALID: 'an inventory file is valid YAML but breaks the inventory schema',
  INVENTORY_DUPLICATE: 'a host or group is defined in two places',
  INVENTORY_UNKNOWN_HOST: 'a host name that the inventory does not define',
  VARS_RESERVED: 'a variable named `canopy`, which is reserved for the built-in host facts',
  VARS_BAD_TASK_VAR: 'a --var or --vars-file value that cannot be parsed or applied',
  // rendering (CLI exit code 1: the operation failed)
  RENDER_SYNTAX: 'a template has a syntax error',
  RENDER_UNDEFINED_VAR: 'a template uses a variable or attribute that is not defined for the host',
  RENDER_FILTER_FAILED:
    'a filter got a value it cannot handle (bad base64, bad regex, mandatory value missing)',
  RENDER_TEMPLATE_NOT_FOUND: 'a template, include or import names a file that does not exist',
  RENDER_OUTSIDE_ROOT: 'an include or import would leave the template root',
  RENDER_FAILED: 'a template failed to render for another reason (the message says which)',
  // certificate authority (src/pki)
  PKI_BAD_CSR:
    'a certificate signing request is not PKCS#10 PEM, not for a P-256 ECDSA key, or its signature fails',
  PKI_BAD_CA:
    'the CA certificate or key cannot issue: not PEM, not a P-256 CA, key and certificate differ, or expired',
  PKI_BAD_CERT: 'a certificate is not a parseable X.509 PEM',
  PKI_BAD_OPTION: 'a name, address or validity asked of the CA is invalid',
  PKI_WRONG_PEER: 'a TLS peer presented a certificate of the trusted CA, but not for the expected name',
  // control channel, agents and join tokens
  AGENT_CONFIG: 'an agent config file or flag is invalid (file:line and key named)',
  AGENT_UNKNOWN: 'no agent of that name has joined',
  AGENT_REVOKED: 'the agent was revoked: the coordinator refuses its certificate',
  AGENT_SETID_REFUSED:
    'a file would be installed with a setuid/setgid mode, which the agent refuses unless started with allow_setid',
  AGENT_CERT_REFUSED:
    "a control connection without a certificate from the coordinator's CA, or with one not issued to that name",
  JOIN_FAILED:
    'an agent could not join: unreachable coordinator, damaged token, or the coordinator refused the join',
  JOIN_CA_MISMATCH:
    'the server an agent reached presented a CA other than the one its join token pins; nothing was sent',
  TOKEN_INVALID: 'a join token this coordinator did not issue, or with a wrong secret',
  TOKEN_USED: 'a join token that was already used (tokens are one-time)',
  TOKEN_EXPIRED: 'a join token past its time to live',
  TOKEN_NAME_MISMATCH: 'a join token created for another agent name',
  PROTOCOL_INVALID:
    'a control-channel message that is not valid JSON, has another protocol version, or breaks its schema (refused and logged)',
  // HTTP API and its CLI client
  API_UNAUTHORIZED: 'an API request without the admin bearer token, or with a wrong one (HTTP 401)',
  API_BAD_REQUEST:
    'an API request body that is not JSON or breaks the schema; `field` names the field (HTTP 400)',
  API_NOT_FOUND: 'no such API route (HTTP 404)',
  API_INTERNAL: 'the coordinator failed on a request; its log has the details (HTTP 500)',
  INTERNAL:
    'a bug in canopy itself (not bad input): the CLI prints the stack; please report it with the command line',
  API_REQUEST_FAILED: "the CLI got another error answer from the API; the message carries the API's code",
  RUN_UNKNOWN_TARGET:
    'a run target that is not a host, group, host range or label selector, or that matches no host (HTTP 400)',
  RUN_NOT_FOUND: 'no run with that id (HTTP 404)',
  CLIENT_CONFIG:
    'the CLI has no coordinator configured: no client config file and no --coordinator/--token/--ca',
  COORDINATOR_UNREACHABLE: "the CLI cannot connect to the coordinator's API",
  // config push
  PUSH_FILE: 'a push file is not valid YAML or breaks the push file schema (file:line and key named)',
  PUSH_RENDER:
    'one or more hosts failed to render a push; every error is listed and nothing was pushed (HTTP 422)',
  PUSH_DEST_REFUSED:
    'an agent refused a destination outside its roots (through `..`, a symlinked parent, or a symlink at the destination)',
  PUSH_VALIDATE_FAILED: "a push file's validate command refused the rendered file; the old file is unchanged",
  PUSH_TOO_LARGE:
    'a file in a push, or the push request as a whole, is larger than a push carries; distribute it with canopy dist',
  PUSH_NO_BACKUP: 'a rollback found no backup of the destination on the host',
  // transfer (manifests, chunk store, peers, planner)
  TRANSFER_MANIFEST_INVALID: 'a blob manifest is malformed or its id does not match its content',
  TRANSFER_DIGEST_MISMATCH: 'a chunk or a whole file does not match the digest its manifest gives',
  TRANSFER_CHUNK_MISSING: 'a chunk the operation needs is not in the chunk store',
  TRANSFER_QUOTA:
    "the chunk store's disk quota is reached and nothing more can be evicted; raise the quota or free space",
  TRANSFER_PLAN_INVALID: 'a distribution plan cannot be made from the given hosts and options',
  TRANSFER_PEER_FORBIDDEN:
    'a peer asked for a blob that no running distribution lets it fetch from this agent',
  TRANSFER_PEER_STALLED: 'a peer sent no byte for the stall timeout while chunks were requested',
  TRANSFER_PEER_LOST: 'a peer could not be reached, or hung up with chunks requested',
  TRANSFER_PEER_PROTOCOL: 'a peer sent a malformed frame (the connection is closed)',
  // distribution (canopy dist)
  DIST_NOT_ACTIVATED:
    'an --activate together distribution switched no host because some host lacks the file; its staged copy was removed',
  DIST_STAGED_MISSING:
    'the staged copy of an --activate together distribution is gone at its verify or activate step',
  DIST_SOURCE_REFUSED:
    'the --source agent cannot serve the file: unknown or offline agent, no peer server, path outside its roots, no such file',
} as const;

export type ErrorCode = keyof typeof CODES;

/** Fields that name the subject of an error; all optional. */
export interface ErrorSubject {
  file?: string;
  line?: number;
  column?: number;
  host?: string;
  variable?: string;
  template?: string;
  path?: string;
  [key: string]: unknown;
}

export interface CanopyErrorOptions extends ErrorSubject {
  cause?: unknown;
}

export class CanopyError extends Error {
  readonly code: ErrorCode;
  readonly subject: ErrorSubject;

  constructor(code: ErrorCode, message: string, options: CanopyErrorOptions = {}) {
    const { cause, ...subject } = options;
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'CanopyError';
    this.code = code;
    this.subject = subject;
  }

  /** The stable JSON shape of an error, as `--json` output and the API print it. */
  toJSON(): { code: ErrorCode; message: string } & ErrorSubject {
    return { code: this.code, message: this.message, ...this.subject };
  }
}

export function isCanopyError(err: unknown, code?: ErrorCode): err is CanopyError {
  return err instanceof CanopyError && (code === undefined || err.code === code);
}

/** For the `default:` arm of a switch over a discriminated union. */
export function assertNever(value: never, what = 'value'): never {
  throw new Error(`unexpected ${what}: ${JSON.stringify(value)}`);
}
