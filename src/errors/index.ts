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
