/**
 * The CLI's view of the terminal: where output goes and whether to color it.
 *
 * Commands write results to `out` (stdout: only JSON under --json) and
 * progress, warnings and prose to `err` (stderr). Color only when the stream
 * is a TTY and NO_COLOR is unset. Passed to every command, so tests can
 * capture output without touching process.stdout.
 */
export interface Stream {
  write(chunk: string): unknown;
  isTTY?: boolean;
}

export interface CliIO {
  out: Stream;
  err: Stream;
  env: Readonly<Record<string, string | undefined>>;
  cwd: string;
}

export type Paint = (text: string) => string;

export interface Palette {
  bold: Paint;
  dim: Paint;
  red: Paint;
  green: Paint;
  yellow: Paint;
  cyan: Paint;
}

const plain: Paint = (t) => t;
const sgr =
  (code: number): Paint =>
  (t) =>
    `\u001b[${code}m${t}\u001b[0m`;

export function palette(stream: Stream, env: CliIO['env']): Palette {
  const on = stream.isTTY === true && env.NO_COLOR === undefined;
  if (!on) return { bold: plain, dim: plain, red: plain, green: plain, yellow: plain, cyan: plain };
  return { bold: sgr(1), dim: sgr(2), red: sgr(31), green: sgr(32), yellow: sgr(33), cyan: sgr(36) };
}

export function processIO(): CliIO {
  return { out: process.stdout, err: process.stderr, env: process.env, cwd: process.cwd() };
}

export function writeJson(io: CliIO, value: unknown): void {
  io.out.write(`${JSON.stringify(value, null, 2)}\n`);
}
