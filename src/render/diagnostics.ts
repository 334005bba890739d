/**
 * Collecting every problem in an input before failing.
 *
 * An operator fixing an inventory wants all its problems at once, each with
 * file, line and column. Loaders report into a Diagnostics; `throwIfErrors`
 * turns the errors into one CanopyError whose message lists them all and
 * whose `problems` field carries them as data. Warnings never fail a load.
 */
import { CanopyError, type ErrorCode } from '../errors/index.js';
import { formatPos, type SourcePos } from './yaml-source.js';

export interface Diagnostic {
  severity: 'error' | 'warning';
  code: ErrorCode;
  message: string;
  pos?: SourcePos;
}

export function formatDiagnostic(d: Diagnostic): string {
  return d.pos ? `${formatPos(d.pos)}: ${d.message}` : d.message;
}

export class Diagnostics {
  readonly items: Diagnostic[] = [];

  error(code: ErrorCode, pos: SourcePos | undefined, message: string): void {
    this.items.push(pos ? { severity: 'error', code, message, pos } : { severity: 'error', code, message });
  }

  warn(code: ErrorCode, pos: SourcePos | undefined, message: string): void {
    this.items.push(
      pos ? { severity: 'warning', code, message, pos } : { severity: 'warning', code, message },
    );
  }

  get errors(): Diagnostic[] {
    return this.items.filter((d) => d.severity === 'error');
  }

  get warnings(): Diagnostic[] {
    return this.items.filter((d) => d.severity === 'warning');
  }

  /** Throws one CanopyError listing every error (in file and line order), if there are any. */
  throwIfErrors(what: string): void {
    const errors = this.errors.sort(byPosition);
    const first = errors[0];
    if (!first) return;
    const message =
      errors.length === 1
        ? formatDiagnostic(first)
        : `${what} has ${errors.length} problems:\n${errors.map((e) => `  ${formatDiagnostic(e)}`).join('\n')}`;
    throw new CanopyError(first.code, message, {
      ...(first.pos ? { file: first.pos.file, line: first.pos.line, column: first.pos.column } : {}),
      problems: errors,
    });
  }
}

function byPosition(a: Diagnostic, b: Diagnostic): number {
  const fa = a.pos?.file ?? '';
  const fb = b.pos?.file ?? '';
  if (fa !== fb) return fa < fb ? -1 : 1;
  return (a.pos?.line ?? 0) - (b.pos?.line ?? 0) || (a.pos?.column ?? 0) - (b.pos?.column ?? 0);
}
