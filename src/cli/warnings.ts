/** Inventory warnings on stderr, one a line, never on stdout. */
import { type Diagnostic, formatDiagnostic } from '../render/index.js';
import { type CliIO, palette } from './io.js';

export function printWarnings(io: CliIO, warnings: readonly Diagnostic[]): void {
  const p = palette(io.err, io.env);
  for (const w of warnings) io.err.write(`${p.yellow('canopy: warning:')} ${formatDiagnostic(w)}\n`);
}
