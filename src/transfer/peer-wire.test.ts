/**
 * The peer wire format on its own: frames split at every byte boundary,
 * limits, and the schema checks that keep a malformed header from reaching
 * the server or client logic.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  decodeReply,
  decodeRequest,
  encodeFrame,
  errorReply,
  FrameDecoder,
  knownCode,
  MAX_HEADER_BYTES,
  MAX_MESSAGE_CHARS,
  type PeerReply,
  type PeerRequest,
  WireError,
} from './peer-wire.js';

const BLOB = 'ab'.repeat(32);

interface Frame<M> {
  message: M;
  payload: Buffer;
}

/** A decoder that collects whole frames, copying payload slices as the sink contract requires. */
function collector<M>(decode: (b: Buffer) => M, maxPayload = 1 << 20) {
  const frames: Frame<M>[] = [];
  let current: { message: M; parts: Buffer[] } | undefined;
  const decoder = new FrameDecoder<M>(
    decode,
    { bytes: maxPayload, what: `at most ${maxPayload}` },
    {
      onHeader: (message) => {
        current = { message, parts: [] };
      },
      onPayload: (slice) => current?.parts.push(Buffer.from(slice)),
      onFrameEnd: () => {
        if (current) frames.push({ message: current.message, payload: Buffer.concat(current.parts) });
        current = undefined;
      },
    },
  );
  return { decoder, frames };
}

function frame(message: PeerRequest | PeerReply, payload = Buffer.alloc(0)): Buffer {
  return Buffer.concat([encodeFrame(message, payload.length), payload]);
}

function rawFrame(header: string | Buffer, payloadLength = 0, headerLength?: number): Buffer {
  const h = typeof header === 'string' ? Buffer.from(header) : header;
  const prefix = Buffer.alloc(8);
  prefix.writeUInt32BE(headerLength ?? h.length, 0);
  prefix.writeUInt32BE(payloadLength, 4);
  return Buffer.concat([prefix, h]);
}

test('frames split at every byte boundary decode to the same messages and payloads', () => {
  const payload = Buffer.from(Array.from({ length: 300 }, (_, i) => i % 251));
  const stream = Buffer.concat([
    frame({ type: 'chunk', id: 1 }, payload),
    frame({ type: 'error', id: 2, code: 'TRANSFER_CHUNK_MISSING', message: 'no chunk 3' }),
    frame({ type: 'chunk', id: 3 }, Buffer.alloc(0)),
  ]);
  for (let cut = 0; cut <= stream.length; cut++) {
    const { decoder, frames } = collector(decodeReply);
    decoder.push(stream.subarray(0, cut));
    decoder.push(stream.subarray(cut));
    assert.equal(frames.length, 3, `cut at ${cut}`);
    assert.deepEqual(frames[0]?.payload, payload);
    assert.deepEqual(frames[1]?.message, {
      type: 'error',
      id: 2,
      code: 'TRANSFER_CHUNK_MISSING',
      message: 'no chunk 3',
    });
    assert.equal(frames[2]?.payload.length, 0);
    assert.ok(decoder.idle);
  }
});

test('a stream fed one byte at a time decodes', () => {
  const stream = Buffer.concat([
    frame({ type: 'get', id: 1, blob: BLOB, chunk: 0 }),
    frame({ type: 'cancel', id: 1 }),
  ]);
  const { decoder, frames } = collector(decodeRequest, 0);
  for (const byte of stream) decoder.push(Buffer.from([byte]));
  assert.deepEqual(
    frames.map((f) => f.message),
    [
      { type: 'get', id: 1, blob: BLOB, chunk: 0 },
      { type: 'cancel', id: 1 },
    ],
  );
});

test('payload slices are views of the input, not copies', () => {
  const payload = Buffer.alloc(4096, 7);
  const input = frame({ type: 'chunk', id: 9 }, payload);
  const slices: Buffer[] = [];
  const decoder = new FrameDecoder(
    decodeReply,
    { bytes: 1 << 20, what: 'x' },
    { onHeader: () => {}, onPayload: (s) => slices.push(s), onFrameEnd: () => {} },
  );
  decoder.push(input);
  assert.equal(slices.length, 1);
  assert.equal(slices[0]?.buffer, input.buffer);
});

test('a header longer than the limit, or empty, is refused before it is buffered', () => {
  const { decoder } = collector(decodeRequest, 0);
  assert.throws(() => decoder.push(rawFrame('', 0, MAX_HEADER_BYTES + 1)), WireError);
  assert.throws(() => collector(decodeRequest, 0).decoder.push(rawFrame('', 0, 0)), /header of 0 bytes/);
  assert.throws(
    () => collector(decodeRequest, 0).decoder.push(rawFrame('', 0, 0xffffffff)),
    /header of 4294967295 bytes/,
  );
});

test('a payload over the receiver maximum is refused with what the maximum is', () => {
  const { decoder } = collector(decodeRequest, 0);
  assert.throws(
    () => decoder.push(rawFrame('{"type":"cancel","id":1}', 1)),
    /payload of 1 bytes \(at most 0\)/,
  );
  const replies = collector(decodeReply, 1024);
  assert.throws(() => replies.decoder.push(rawFrame('{"type":"chunk","id":1}', 1025)), /at most 1024/);
});

test('bad JSON, a non-object, an unknown type and schema violations are WireErrors', () => {
  const cases: [string, RegExp][] = [
    ['{nope', /not JSON/],
    ['[1,2]', /not a JSON object/],
    ['null', /not a JSON object/],
    ['{"type":"put","id":1}', /unknown message type "put"/],
    ['{"id":1}', /unknown message type undefined/],
    [`{"type":"get","id":1,"blob":"${BLOB}","chunk":-1}`, /get message invalid at \/chunk/],
    [`{"type":"get","id":0,"blob":"${BLOB}","chunk":1}`, /invalid at \/id/],
    ['{"type":"get","id":1,"blob":"../../etc/passwd","chunk":1}', /invalid at \/blob/],
    [`{"type":"get","id":1,"blob":"${BLOB}","chunk":1,"path":"/x"}`, /get message invalid/],
    ['{"type":"cancel","id":1.5}', /cancel message invalid at \/id/],
  ];
  for (const [header, pattern] of cases) {
    assert.throws(() => collector(decodeRequest, 0).decoder.push(rawFrame(header)), pattern, header);
  }
  assert.throws(() => decodeReply(Buffer.from('{"type":"error","code":"lower","message":"x"}')), /\/code/);
  assert.throws(() => decodeReply(Buffer.from('{"type":"get","id":1}')), /unknown message type "get"/);
});

test('an error reply without id decodes, and long messages are cut to fit a header', () => {
  const long = errorReply('TRANSFER_CHUNK_MISSING', 'x'.repeat(10_000), 4);
  assert.equal(long.message.length, MAX_MESSAGE_CHARS);
  assert.ok(encodeFrame(long).length < MAX_HEADER_BYTES);
  const connectionLevel = errorReply('AGENT_REVOKED', 'revoked');
  assert.deepEqual(decodeReply(Buffer.from(JSON.stringify(connectionLevel))), {
    type: 'error',
    code: 'AGENT_REVOKED',
    message: 'revoked',
  });
});

test('knownCode keeps canopy codes and maps unknown ones to TRANSFER_PEER_PROTOCOL', () => {
  assert.equal(knownCode('TRANSFER_DIGEST_MISMATCH'), 'TRANSFER_DIGEST_MISMATCH');
  assert.equal(knownCode('SOMETHING_NEWER'), 'TRANSFER_PEER_PROTOCOL');
  assert.equal(knownCode('CONSTRUCTOR'), 'TRANSFER_PEER_PROTOCOL');
});
