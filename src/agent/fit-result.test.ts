import assert from 'node:assert/strict';
import { test } from 'node:test';
import { NO_OUTPUT, type TaskResult } from '../protocol/index.js';
import { fitResult } from './fit-result.js';

const result = (stdout: string, stderr = ''): TaskResult => ({
  taskId: 'r1:h1',
  runId: 'r1',
  state: 'ok',
  ...NO_OUTPUT,
  exitCode: 0,
  stdout,
  stderr,
  stdoutBytes: stdout.length,
  stderrBytes: stderr.length,
  startedAt: 1,
  endedAt: 2,
  durationMs: 1,
});

const size = (r: TaskResult) => Buffer.byteLength(JSON.stringify(r));

test('a result that fits is returned as it is', () => {
  const r = result('hello\n', 'warn\n');
  assert.equal(fitResult(r, 10_000), r);
});

test('plain output is cut to fit, keeping its beginning, marked truncated, byte counts kept', () => {
  const r = result('a'.repeat(50_000), 'e'.repeat(1000));
  const f = fitResult(r, 20_000);
  assert.ok(size(f) <= 20_000, `still ${size(f)} bytes`);
  assert.ok(size(f) > 19_000, `cut more than needed: ${size(f)} bytes`);
  assert.ok(r.stdout.startsWith(f.stdout));
  assert.equal(f.stdoutTruncated, true);
  assert.equal(f.stderr, r.stderr, 'the shorter stream was cut while the longer one sufficed');
  assert.equal(f.stderrTruncated, false);
  assert.equal(f.stdoutBytes, 50_000);
});

test('output that escapes to 6 bytes a character (binary) fits too, and both streams are cut when needed', () => {
  const binary = '\u0001'.repeat(30_000);
  const f = fitResult(result(binary, binary.slice(0, 29_000)), 20_000);
  assert.ok(size(f) <= 20_000, `still ${size(f)} bytes`);
  assert.equal(f.stdoutTruncated, true);
  assert.equal(f.stderrTruncated, true);
});

test('a surrogate pair is never split', () => {
  const f = fitResult(result('😀'.repeat(20_000)), 20_000);
  assert.ok(size(f) <= 20_000);
  assert.equal(f.stdout.length % 2, 0);
  assert.doesNotMatch(f.stdout, /[\ud800-\udbff]$/);
});
