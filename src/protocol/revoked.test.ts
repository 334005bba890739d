// The `revoked`, `ended` and `peers` messages as agents decode them: the coordinator's whole set of revoked
// serials, the distributions that ended, and peers that moved.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeAgentMessage, decodeCoordinatorMessage, encode, MAX_REVOKED_SERIALS } from './messages.js';

const reason = (raw: string) => {
  const d = decodeCoordinatorMessage(raw);
  return d.ok ? 'accepted' : d.reason;
};

test('a revoked message with lowercase hex serials, or none, decodes as sent', () => {
  const serials = ['4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e', '7'];
  assert.deepEqual(decodeCoordinatorMessage(encode({ type: 'revoked', serials })), {
    ok: true,
    message: { v: 1, type: 'revoked', serials },
  });
  assert.equal(reason(encode({ type: 'revoked', serials: [] })), 'accepted');
});

test('a revoked message with a serial that is not lowercase hex, or too many, is refused naming where', () => {
  const raw = (serials: unknown) => JSON.stringify({ v: 1, type: 'revoked', serials });
  assert.match(reason(raw(['4F1C'])), /revoked message invalid at \/serials\/0/);
  assert.match(reason(raw(['4f1c', ''])), /invalid at \/serials\/1/);
  assert.match(reason(raw(['../etc'])), /invalid at \/serials\/0/);
  assert.match(reason(raw(['a'.repeat(65)])), /invalid at \/serials\/0/);
  assert.match(reason(raw('4f1c')), /invalid at \/serials/);
  assert.match(reason(JSON.stringify({ v: 1, type: 'revoked' })), /revoked message invalid/);
  assert.match(reason(raw(Array(MAX_REVOKED_SERIALS + 1).fill('1'))), /invalid at \/serials/);
  // Only the coordinator sends it.
  assert.equal(decodeAgentMessage(raw([])).ok, false);
});

test('an ended message names blob or tree ids; an empty list, a path or a foreign id is refused', () => {
  const blobs = ['ab'.repeat(32), 'c0ffee'.repeat(10)];
  assert.deepEqual(decodeCoordinatorMessage(encode({ type: 'ended', blobs })), {
    ok: true,
    message: { v: 1, type: 'ended', blobs },
  });
  const raw = (ids: unknown) => JSON.stringify({ v: 1, type: 'ended', blobs: ids });
  assert.match(reason(raw([])), /ended message invalid at \/blobs/);
  assert.match(reason(raw(['../etc/passwd'])), /invalid at \/blobs\/0/);
  assert.match(reason(raw(['a'.repeat(129)])), /invalid at \/blobs\/0/);
  assert.equal(decodeAgentMessage(raw(blobs)).ok, false);
});

test('a peers message names agents and their new peer addresses; an empty list or a bad name is refused', () => {
  const peers = [{ name: 'a1', address: '127.0.0.1:40123' }];
  assert.deepEqual(decodeCoordinatorMessage(encode({ type: 'peers', peers })), {
    ok: true,
    message: { v: 1, type: 'peers', peers },
  });
  const raw = (list: unknown) => JSON.stringify({ v: 1, type: 'peers', peers: list });
  assert.match(reason(raw([])), /peers message invalid at \/peers/);
  assert.match(reason(raw([{ name: '../a1', address: '127.0.0.1:1' }])), /invalid at \/peers\/0\/name/);
  assert.match(reason(raw([{ name: 'a1' }])), /invalid at \/peers\/0/);
  assert.match(reason(raw([{ ...peers[0], extra: 1 }])), /invalid at \/peers\/0/);
  assert.equal(decodeAgentMessage(raw(peers)).ok, false);
});
