/**
 * A task's result travels as one control-channel message, and messages are
 * capped (16 MiB): a result whose JSON would be larger is cut here, before it
 * is journaled and sent, instead of being refused by the coordinator and sent
 * again on every reconnect. The longer output stream is cut first, keeping its
 * beginning (as the output cap does), and marked truncated; stdoutBytes and
 * stderrBytes still count every byte the process wrote.
 */
import type { TaskResult } from '../protocol/index.js';

/** The most a result's JSON may take: the 16 MiB message cap less room for the envelope. */
export const MAX_RESULT_BYTES = 15 * 1024 * 1024;

const jsonBytes = (v: unknown) => Buffer.byteLength(JSON.stringify(v));

/** `r` itself when it fits in `max` bytes of JSON, else a copy with its output cut to fit. */
export function fitResult(r: TaskResult, max = MAX_RESULT_BYTES): TaskResult {
  let size = jsonBytes(r);
  if (size <= max) return r;
  let out = r;
  while (size > max && (out.stdout.length > 0 || out.stderr.length > 0)) {
    const key = out.stdout.length >= out.stderr.length ? 'stdout' : 'stderr';
    const text = out[key];
    // Escaping makes a character take 1 to 6 bytes of JSON: cut in proportion, then a little more.
    const perChar = jsonBytes(text) / text.length;
    let keep = Math.max(0, text.length - Math.ceil((size - max) / perChar) - 16);
    // Never split a surrogate pair.
    const last = text.charCodeAt(keep - 1);
    if (keep > 0 && last >= 0xd800 && last <= 0xdbff) keep--;
    out = { ...out, [key]: text.slice(0, keep), [`${key}Truncated`]: true };
    size = jsonBytes(out);
  }
  return out;
}
