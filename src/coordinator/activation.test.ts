import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  type DistSpec,
  type FileOutcome,
  NO_OUTPUT,
  NO_PROCESS,
  type TaskResult,
} from '../protocol/index.js';
import {
  activationSpec,
  describeLacking,
  nextStep,
  type StepState,
  settle,
  stageOutcome,
  stepDone,
  stepWindowMs,
} from './activation.js';
import type { HostResult, InterimRecord } from './store.js';

const MD5 = 'a'.repeat(32);

function file(state: FileOutcome['state'], extra: Partial<FileOutcome> = {}): FileOutcome {
  return { dest: '/srv/app.bin', state, oldMd5: null, newMd5: MD5, content: state !== 'unchanged', ...extra };
}

function result(host: string, state: HostResult['state'], files?: FileOutcome[], error?: string): HostResult {
  return {
    host,
    state,
    ...NO_PROCESS,
    startedAt: 1_000,
    endedAt: 2_000,
    durationMs: 1_000,
    receivedAt: 2_000,
    seq: 1,
    ...(files ? { files } : {}),
    ...(error ? { error } : {}),
    transfer: { fetchedBytes: 10, reusedChunks: 0, fromPeers: { src: 10 }, badPeers: [] },
  };
}

function answer(state: TaskResult['state'], files?: FileOutcome[], error?: string): TaskResult {
  return {
    taskId: 'r1:h1:activate',
    runId: 'r1',
    state,
    ...NO_OUTPUT,
    startedAt: 5_000,
    endedAt: 6_000,
    durationMs: 1_000,
    ...(files ? { files } : {}),
    ...(error ? { error } : {}),
  };
}

const staged = (host: string, passed: InterimRecord['passed'] = 'stage'): InterimRecord => ({
  result: result(host, 'ok', [file('staged')]),
  passed,
});
const current = (host: string): InterimRecord => ({
  result: result(host, 'ok', [file('unchanged')]),
  passed: 'stage',
});

function state(over: Partial<StepState>): StepState {
  return {
    hosts: ['h1', 'h2', 'h3'],
    after: 'stage',
    stepHosts: ['h1', 'h2', 'h3'],
    interim: new Map(),
    finals: new Map(),
    ...over,
  };
}

test('a stage answer is staged, already current, or lacking', () => {
  assert.equal(stageOutcome(result('h', 'ok', [file('staged')])), 'staged');
  assert.equal(stageOutcome(result('h', 'ok', [file('unchanged')])), 'current');
  assert.equal(stageOutcome(result('h', 'failed', [file('failed')])), 'lacking');
  // An agent that installed instead of staging broke the promise: it counts as lacking.
  assert.equal(stageOutcome(result('h', 'ok', [file('changed')])), 'lacking');
  assert.equal(stageOutcome(result('h', 'unreachable')), 'lacking');
});

test('every host staged: verify on the staging hosts, then activate on them; current hosts get neither', () => {
  const interim = new Map([
    ['h1', staged('h1')],
    ['h2', staged('h2')],
    ['h3', current('h3')],
  ]);
  assert.deepEqual(nextStep(state({ interim })), { step: 'verify', hosts: ['h1', 'h2'], lacking: [] });
  const verified = new Map([
    ['h1', staged('h1', 'verify')],
    ['h2', staged('h2', 'verify')],
    ['h3', current('h3')],
  ]);
  assert.deepEqual(nextStep(state({ after: 'verify', stepHosts: ['h1', 'h2'], interim: verified })), {
    step: 'activate',
    hosts: ['h1', 'h2'],
    lacking: [],
  });
  assert.deepEqual(nextStep(state({ after: 'activate', stepHosts: ['h1', 'h2'], interim: verified })), {
    done: true,
  });
});

test('one host failed to stage: discard on every staging host, naming the one that lacks the file', () => {
  const interim = new Map([
    ['h1', staged('h1')],
    ['h3', current('h3')],
  ]);
  const finals = new Map([
    ['h2', result('h2', 'failed', [file('failed')], 'TRANSFER_QUOTA: the chunk store is full\nmore')],
  ]);
  assert.deepEqual(nextStep(state({ interim, finals })), {
    step: 'discard',
    hosts: ['h1'],
    lacking: [{ host: 'h2', why: 'TRANSFER_QUOTA: the chunk store is full' }],
  });
  const unreachable = new Map([['h2', result('h2', 'unreachable')]]);
  const d = nextStep(state({ interim, finals: unreachable }));
  assert.ok(!('done' in d));
  assert.deepEqual(d.lacking, [{ host: 'h2', why: 'unreachable' }]);
});

test('a host refusing verify stops the switch: discard goes to it too, and to the others', () => {
  const interim = new Map([
    [
      'h1',
      { ...staged('h1'), refused: { why: 'the staged copy has MD5 x', code: 'TRANSFER_DIGEST_MISMATCH' } },
    ],
    ['h2', staged('h2', 'verify')],
  ]);
  const finals = new Map([['h3', result('h3', 'unreachable', undefined, 'no answer by the deadline')]]);
  const d = nextStep(state({ after: 'verify', stepHosts: ['h1', 'h2', 'h3'], interim, finals }));
  assert.deepEqual(d, {
    step: 'discard',
    hosts: ['h1', 'h2'],
    lacking: [
      { host: 'h1', why: 'the staged copy has MD5 x' },
      { host: 'h3', why: 'no answer by the deadline' },
    ],
  });
});

test('nobody staged: a discard of nothing when a host lacks the file, done when all already had it', () => {
  const finals = new Map([['h1', result('h1', 'refused', undefined, 'outside the allowed roots')]]);
  assert.deepEqual(nextStep(state({ hosts: ['h1'], stepHosts: ['h1'], finals })), {
    step: 'discard',
    hosts: [],
    lacking: [{ host: 'h1', why: 'outside the allowed roots' }],
  });
  const interim = new Map([['h1', current('h1')]]);
  assert.deepEqual(nextStep(state({ hosts: ['h1'], stepHosts: ['h1'], interim })), { done: true });
});

test('a host is through a step once it answered it (or has its final result)', () => {
  assert.equal(stepDone('stage', undefined, false), false);
  assert.equal(stepDone('stage', staged('h'), false), true);
  assert.equal(stepDone('stage', undefined, true), true);
  assert.equal(stepDone('verify', staged('h'), false), false);
  assert.equal(stepDone('verify', staged('h', 'verify'), false), true);
  assert.equal(stepDone('verify', { ...staged('h'), refused: { why: 'x' } }, false), true);
  assert.equal(stepDone('activate', staged('h', 'verify'), false), false);
  assert.equal(stepDone('activate', staged('h', 'verify'), true), true);
});

test('activate: the final result is the switch, keeping the stage transfer figures and start', () => {
  const r = settle(
    staged('h1', 'verify'),
    'activate',
    answer('ok', [file('changed', { oldMd5: 'b'.repeat(32) })]),
    [],
  );
  assert.equal(r.state, 'ok');
  assert.equal(r.files?.[0]?.state, 'changed');
  assert.equal(r.startedAt, 1_000);
  assert.equal(r.durationMs, 5_000);
  assert.deepEqual(r.transfer?.fromPeers, { src: 10 });
  const bad = settle(staged('h1', 'verify'), 'activate', answer('failed', [file('failed')], 'disk full'), []);
  assert.equal(bad.state, 'failed');
  assert.equal(bad.error, 'disk full');
});

test('discard: the others say which hosts lack the file; the refusing host keeps its own reason', () => {
  const lacking = [{ host: 'h2', why: 'quota' }];
  const other = settle(staged('h1', 'verify'), 'discard', answer('ok', [file('discarded')]), lacking);
  assert.equal(other.state, 'failed');
  assert.equal(other.files?.[0]?.state, 'discarded');
  assert.equal(other.files?.[0]?.code, 'DIST_NOT_ACTIVATED');
  assert.match(
    other.error ?? '',
    /^not activated: 1 host\(s\) lack the file \(h2: quota\); the staged copy was removed and \/srv\/app\.bin is unchanged$/,
  );
  const culprit = settle(
    { ...staged('h3'), refused: { why: 'MD5 mismatch', code: 'TRANSFER_DIGEST_MISMATCH' } },
    'discard',
    answer('ok', [file('discarded')]),
    lacking,
  );
  assert.equal(culprit.files?.[0]?.state, 'failed');
  assert.equal(culprit.files?.[0]?.code, 'TRANSFER_DIGEST_MISMATCH');
  assert.equal(culprit.error, 'MD5 mismatch; its staged copy was removed');
  const stuck = settle(staged('h1'), 'discard', answer('failed', [file('failed')], 'EACCES'), lacking);
  assert.equal(stuck.files?.[0]?.code, 'DIST_NOT_ACTIVATED');
  assert.match(stuck.error ?? '', /removing the staged copy failed: EACCES$/);
});

test('activation specs carry what the agent checks; steps get time to read the file once', () => {
  const plan = {
    blob: 'c'.repeat(64),
    manifest: { version: 1, size: 42, chunkSize: 65536, chunks: [], md5: MD5 },
    dest: '/srv/app.bin',
    mode: 0o640,
    owner: 'app',
    parents: [{ name: 'canopy-source', address: '127.0.0.1:1' }],
    fallbacks: [],
    serveForMs: 1,
    stallMs: 100,
    activate: 'together',
  } satisfies DistSpec;
  assert.deepEqual(activationSpec('verify', plan, plan.manifest), {
    step: 'verify',
    blob: 'c'.repeat(64),
    dest: '/srv/app.bin',
    size: 42,
    md5: MD5,
    mode: 0o640,
    owner: 'app',
  });
  assert.equal(stepWindowMs(0), 60_000);
  assert.equal(stepWindowMs(200 * 1024 * 1024), 70_000);
  assert.equal(
    describeLacking(
      [1, 2, 3].map((i) => ({ host: `h${i}`, why: 'x' })),
      2,
    ),
    'h1: x; h2: x; and 1 more',
  );
});
