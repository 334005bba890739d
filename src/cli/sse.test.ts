import assert from 'node:assert/strict';
import { test } from 'node:test';
import { sseParser } from './sse.js';

test('events split across chunks, multi-line data, ids and comments', () => {
  const seen: [string, string, number][] = [];
  const feed = sseParser((e, d, id) => {
    seen.push([e, d, id]);
  });
  feed(': keepalive\n\nid: 1\nevent: res');
  feed('ult\ndata: {"a":1}\n\nid: 2\nevent: result\ndata: x\ndata: y\n\n');
  feed('event: done\ndata: {}\n');
  assert.deepEqual(seen, [
    ['result', '{"a":1}', 1],
    ['result', 'x\ny', 2],
  ]);
  feed('\n');
  assert.deepEqual(seen.at(-1), ['done', '{}', 2]);
});

test('a true from the handler stops the parser', () => {
  let n = 0;
  const feed = sseParser(() => ++n === 1);
  assert.equal(feed('data: a\n\ndata: b\n\n'), true);
  assert.equal(n, 1);
  assert.equal(feed('data: c\n\n'), true);
  assert.equal(n, 1);
});

test('a 16 MB event arriving in 64 KiB chunks is read whole', () => {
  const payload = 'x'.repeat(16 * 1024 * 1024);
  const text = `event: result\ndata: ${payload}\n\n`;
  let got = '';
  const feed = sseParser((_e, d) => {
    got = d;
  });
  // Chunk boundaries fall anywhere, also inside "\n\n".
  for (let i = 0; i < text.length; i += 65_536) feed(text.slice(i, i + 65_536));
  assert.equal(got.length, payload.length);
  assert.equal(got, payload);
});
