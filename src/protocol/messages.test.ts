import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeJoinToken, encodeJoinToken } from './join-token.js';
import {
  decodeAgentMessage,
  decodeCoordinatorMessage,
  encode,
  PROTOCOL_VERSION,
  parseTaskId,
  shellQuote,
  taskIdFor,
} from './messages.js';

test('encode stamps the version and decode accepts what encode made', () => {
  const raw = encode({ type: 'ack', taskId: 'r1:web-01' });
  assert.deepEqual(JSON.parse(raw), { v: PROTOCOL_VERSION, type: 'ack', taskId: 'r1:web-01' });
  assert.deepEqual(decodeAgentMessage(raw), {
    ok: true,
    message: { v: 1, type: 'ack', taskId: 'r1:web-01' },
  });
});

test('decode refuses, with a reason, anything that is not a valid message of this side', () => {
  const reason = (raw: string) => {
    const d = decodeAgentMessage(raw);
    return d.ok ? 'accepted' : d.reason;
  };
  assert.match(reason('not json'), /not JSON/);
  assert.match(reason('[1]'), /not a JSON object/);
  assert.match(reason('{"v":2,"type":"ack","taskId":"a"}'), /protocol version 2/);
  assert.match(reason('{"v":1,"type":"task","task":{}}'), /unknown agent message type "task"/);
  assert.match(reason('{"v":1,"type":"ack"}'), /ack message invalid/);
  assert.match(reason('{"v":1,"type":"ack","taskId":"a","extra":1}'), /ack message invalid at \/extra/);
  assert.match(reason('{"v":1,"type":"ack","taskId":"../../etc"}'), /invalid at \/taskId/);
  const c = decodeCoordinatorMessage('{"v":1,"type":"hello"}');
  assert.equal(c.ok, false);
});

test('task ids are RUN:HOST and parse back', () => {
  assert.equal(taskIdFor('r1', 'web-01'), 'r1:web-01');
  assert.deepEqual(parseTaskId('r1:web-01'), { runId: 'r1', host: 'web-01' });
  assert.equal(parseTaskId('nohost'), undefined);
  assert.equal(parseTaskId(':x'), undefined);
});

test('the later steps of an --activate together distribution are RUN:HOST:STEP; other suffixes are refused', () => {
  assert.equal(taskIdFor('r1', 'web-01', 'activate'), 'r1:web-01:activate');
  assert.deepEqual(parseTaskId('r1:web-01:verify'), { runId: 'r1', host: 'web-01', step: 'verify' });
  assert.deepEqual(parseTaskId('r1:web-01:discard'), { runId: 'r1', host: 'web-01', step: 'discard' });
  assert.equal(parseTaskId('r1:web-01:rm-rf'), undefined);
  assert.equal(parseTaskId('r1::activate'), undefined);
  assert.equal(parseTaskId('r1:web-01:'), undefined);
});

test('an activation task decodes; a step the protocol does not know is refused', () => {
  const task = {
    id: 'r1:web-01:verify',
    runId: 'r1',
    host: 'web-01',
    kind: 'activation',
    expiresInMs: 1000,
    spec: { step: 'verify', blob: 'b'.repeat(64), dest: '/srv/app.bin', size: 3, md5: 'a'.repeat(32) },
  };
  assert.equal(decodeCoordinatorMessage(encode({ type: 'task', task } as never)).ok, true);
  const bad = decodeCoordinatorMessage(
    encode({ type: 'task', task: { ...task, spec: { ...task.spec, step: 'rm' } } } as never),
  );
  assert.equal(bad.ok, false);
});

test('join tokens round-trip, and damaged ones say what is wrong', () => {
  const t = { url: 'https://127.0.0.1:7443', caFingerprint: 'a'.repeat(64), id: 'abc', secret: 's3cret' };
  assert.deepEqual(decodeJoinToken(encodeJoinToken(t)), t);
  assert.match(String(decodeJoinToken('hello')), /starts with "canopy-join-v1\."/);
  assert.match(String(decodeJoinToken('canopy-join-v1.%%%')), /damaged|no coordinator/);
  const noFp = encodeJoinToken({ ...t, caFingerprint: 'xyz' });
  assert.match(String(decodeJoinToken(noFp)), /no CA fingerprint/);
});

test('shellQuote leaves safe words alone and quotes the rest so /bin/sh reads them back literally', async () => {
  const { execFileSync } = await import('node:child_process');
  for (const word of ['web-01', "it's", 'a b', '$(touch /tmp/x)', '"; rm -rf /', '']) {
    const echoed = execFileSync('/bin/sh', ['-c', `printf %s ${shellQuote(word)}`], { encoding: 'utf8' });
    assert.equal(echoed, word);
  }
  assert.equal(shellQuote('web-01'), 'web-01');
});
