import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { DistProgress, HostResult } from '../coordinator/index.js';
import { isCanopyError } from '../errors/index.js';
import { NO_PROCESS } from '../protocol/index.js';
import {
  activationLines,
  activationSummary,
  bytes,
  hostOutcome,
  parseRate,
  progressLine,
  reportLines,
  seconds,
} from './dist-progress.js';

const MiB = 1024 * 1024;

function progress(over: Partial<DistProgress> = {}): DistProgress {
  return {
    at: 0,
    size: 100 * MiB,
    hosts: 4,
    bytes: 200 * MiB,
    totalBytes: 400 * MiB,
    complete: 1,
    rate: 10 * MiB,
    etaSeconds: 12.5,
    elapsedSeconds: 20,
    idcs: { a: { hosts: 2, complete: 1, bytes: 150 * MiB }, b: { hosts: 2, complete: 0, bytes: 50 * MiB } },
    slowest: [{ host: 'h4', bytes: 10 * MiB }],
    failedPeers: [],
    sourceBytes: 100 * MiB,
    boundSeconds: null,
    ...over,
  };
}

test('the progress line shows bar, percent, bytes, rate, ETA, IDCs and the slowest host', () => {
  assert.equal(
    progressLine(progress(), 10),
    '[#####.....]   50%  200.0 MiB / 400.0 MiB  10.0 MiB/s  ETA 13s  a 1/2 b 0/2  slowest: h4 10%',
  );
  const flat = progressLine(
    progress({ idcs: { '': { hosts: 4, complete: 4, bytes: 400 * MiB } }, complete: 4, bytes: 400 * MiB }),
    4,
  );
  assert.match(flat, /^\[####\] {2}100% {2}.* 4\/4 hosts$/);
  assert.match(
    progressLine(progress({ etaSeconds: null, failedPeers: ['h2'] })),
    /ETA \?.*re-parented around: h2$/,
  );
});

test('report: copies the source uploaded, and the ratio to S/B when the link rate is known', () => {
  const [first, second] = reportLines({
    hosts: 8,
    ok: 8,
    size: 128 * MiB,
    wallSeconds: 47.25,
    sourceBytes: 140 * MiB,
    linkRate: 25e6 / 8,
  });
  assert.equal(
    first,
    '8 of 8 hosts have the file (128.0 MiB) in 47s; the source uploaded 1.09 copies (140.0 MiB)',
  );
  assert.equal(second, 'single-link bound S/B = 43s at 2.98 MiB/s: 1.10x the bound');
  assert.equal(reportLines({ hosts: 1, ok: 0, size: 0, wallSeconds: 1, sourceBytes: 0 }).length, 1);
});

test('rates: bytes and bits, decimal and binary prefixes; anything else is a usage error naming it', () => {
  assert.equal(parseRate('40MB/s', '--rate-limit'), 40e6);
  assert.equal(parseRate('32MiB/s', '--rate-limit'), 32 * MiB);
  assert.equal(parseRate('25Mbit/s', '--link-rate'), 25e6 / 8);
  assert.equal(parseRate('100Mbps', '--link-rate'), 100e6 / 8);
  assert.equal(parseRate('1Gb/s', '--link-rate'), 1e9 / 8);
  assert.equal(parseRate('5000', '--rate-limit'), 5000);
  for (const bad of ['fast', '40M', '0', '-1MB/s', '']) {
    assert.throws(
      () => parseRate(bad, '--rate-limit'),
      (err) => isCanopyError(err, 'USAGE') && err.message.startsWith('--rate-limit:'),
      bad,
    );
  }
});

test('sizes and durations read as an operator writes them', () => {
  assert.equal(bytes(512), '512 B');
  assert.equal(bytes(1536), '1.50 KiB');
  assert.equal(bytes(20 * 1024 * MiB), '20.0 GiB');
  assert.equal(seconds(3.21), '3.2s');
  assert.equal(seconds(125), '2m05s');
  assert.equal(seconds(7260), '2h01m');
});

function host(
  name: string,
  state: HostResult['state'],
  file?: string,
  error?: string,
  code?: string,
): HostResult {
  return {
    host: name,
    state,
    ...NO_PROCESS,
    startedAt: 0,
    endedAt: 1,
    durationMs: 1,
    receivedAt: 1,
    seq: 1,
    ...(error ? { error } : {}),
    ...(file
      ? {
          files: [
            {
              dest: '/srv/app.bin',
              state: file as 'changed',
              oldMd5: null,
              newMd5: 'a'.repeat(32),
              content: false,
              ...(code ? { code } : {}),
            },
          ],
        }
      : {}),
  };
}

test('--activate together: each host activated, already current, discarded or failed', () => {
  assert.equal(hostOutcome(host('h', 'ok', 'changed')), 'activated');
  assert.equal(hostOutcome(host('h', 'ok', 'unchanged')), 'current');
  assert.equal(hostOutcome(host('h', 'failed', 'discarded')), 'discarded');
  assert.equal(hostOutcome(host('h', 'failed', 'failed')), 'failed');
  assert.equal(hostOutcome(host('h', 'unreachable')), 'failed');
});

test('--activate together verdict: all switched, or NOT activated naming the hosts that lack the file', () => {
  const all = activationSummary(
    [host('h1', 'ok', 'changed'), host('h2', 'ok', 'changed'), host('h3', 'ok', 'unchanged')],
    3,
  );
  assert.equal(all.activated, true);
  assert.deepEqual(activationLines(all), ['activated together on 3 of 3 hosts (1 already had it)']);
  const none = activationSummary(
    [
      host('h1', 'failed', 'discarded', 'not activated: ...', 'DIST_NOT_ACTIVATED'),
      host('h3', 'failed', 'failed', 'TRANSFER_QUOTA: store full\ndetails'),
      host('h7', 'unreachable', undefined, 'no answer by the deadline of the stage step'),
      host('h2', 'failed', 'discarded', 'not activated: ...', 'DIST_NOT_ACTIVATED'),
    ],
    4,
  );
  assert.equal(none.activated, false);
  assert.deepEqual(none.discarded, ['h1', 'h2']);
  assert.deepEqual(activationLines(none), [
    'NOT activated: 2 of 4 hosts lack the file (h3: TRANSFER_QUOTA: store full, ' +
      'h7: no answer by the deadline of the stage step); staged copies removed; nothing changed',
  ]);
  const stuck = activationSummary(
    [
      host(
        'h1',
        'failed',
        'failed',
        'not activated (h3: x); and removing the staged copy failed: EACCES',
        'DIST_NOT_ACTIVATED',
      ),
      host('h3', 'failed', 'failed', 'x'),
      host('h2', 'failed', 'discarded', 'not activated', 'DIST_NOT_ACTIVATED'),
    ],
    3,
  );
  assert.match(
    activationLines(stuck)[0] ?? '',
    /; staged copies removed on 1 hosts, NOT on h1: not activated .*EACCES; nothing changed$/,
  );
  const mixed = activationSummary(
    [host('h1', 'ok', 'changed'), host('h2', 'failed', 'failed', 'disk full')],
    2,
  );
  assert.deepEqual(activationLines(mixed), [
    'activated on 1 of 2 hosts, NOT on 1 (h2: disk full): the fleet runs a mix of old and new; ' +
      'fix those hosts and run the distribution again',
  ]);
});

test('the progress line says which step an --activate together distribution is on', () => {
  const a = { hosts: 4, staged: 2, current: 1, lacking: [] };
  assert.match(progressLine(progress({ activation: { ...a, step: 'stage' } })), /staged 3\/4$/);
  assert.match(
    progressLine(progress({ activation: { ...a, step: 'verify' } })),
    /verifying the staged copies on 2 hosts$/,
  );
  assert.match(
    progressLine(
      progress({ activation: { ...a, step: 'discard', lacking: [{ host: 'h4', why: 'quota' }] } }),
    ),
    /NOT activating: discarding the staged copies \(h4 lacks the file\)$/,
  );
});
