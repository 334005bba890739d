/**
 * The token bucket's arithmetic on a fake clock: no test here sleeps or
 * measures time.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isCanopyError } from '../errors/index.js';
import { RateLimiter } from './rate-limit.js';

/** A clock the test moves by hand, and a sleep that records what it was asked and moves the clock. */
function fakeTime() {
  let t = 1_000;
  const slept: number[] = [];
  return {
    now: () => t,
    advance: (ms: number) => {
      t += ms;
    },
    slept,
    sleep: async (ms: number, signal?: AbortSignal) => {
      signal?.throwIfAborted();
      slept.push(ms);
      t += ms;
    },
  };
}

test('a fresh bucket holds the burst: reserving it costs no wait, one byte more waits', () => {
  const clock = fakeTime();
  const rl = new RateLimiter({ bytesPerSecond: 1000, burstBytes: 500, now: clock.now });
  assert.equal(rl.reserve(500), 0);
  assert.equal(rl.reserve(1), 1);
  assert.equal(rl.available, -1);
});

test('tokens refill at the rate and never beyond the burst', () => {
  const clock = fakeTime();
  const rl = new RateLimiter({ bytesPerSecond: 1000, burstBytes: 500, now: clock.now });
  rl.reserve(500);
  clock.advance(200);
  assert.equal(rl.available, 200);
  clock.advance(10_000);
  assert.equal(rl.available, 500);
});

test('callers queue behind a debt: each wait includes the reservations before it', () => {
  const clock = fakeTime();
  const rl = new RateLimiter({ bytesPerSecond: 1_000_000, burstBytes: 100_000, now: clock.now });
  assert.equal(rl.reserve(100_000), 0);
  assert.equal(rl.reserve(250_000), 250);
  assert.equal(rl.reserve(250_000), 500);
  clock.advance(500);
  assert.equal(rl.reserve(0), 0);
  assert.equal(rl.reserve(1000), 1);
});

test('a reservation larger than the burst waits in proportion instead of being refused', () => {
  const clock = fakeTime();
  const rl = new RateLimiter({ bytesPerSecond: 1024 * 1024, burstBytes: 64 * 1024, now: clock.now });
  assert.equal(rl.reserve(4 * 1024 * 1024 + 64 * 1024), 4000);
});

test('waits round up to whole milliseconds, so the rate is never exceeded', () => {
  const clock = fakeTime();
  const rl = new RateLimiter({ bytesPerSecond: 3, burstBytes: 1, now: clock.now });
  rl.reserve(1);
  assert.equal(rl.reserve(1), 334);
});

test('over a long run the bytes let through match the rate plus one burst', () => {
  const clock = fakeTime();
  const rl = new RateLimiter({ bytesPerSecond: 10_000, burstBytes: 2_000, now: clock.now });
  let sent = 0;
  const t0 = clock.now();
  for (let i = 0; i < 1000; i++) {
    clock.advance(rl.reserve(700));
    sent += 700;
  }
  const seconds = (clock.now() - t0) / 1000;
  assert.ok(sent <= 10_000 * seconds + 2_000 + 700, `${sent} bytes in ${seconds} s`);
  assert.ok(sent >= 10_000 * seconds, `${sent} bytes in ${seconds} s`);
});

test('a clock that steps back adds no tokens', () => {
  const clock = fakeTime();
  const rl = new RateLimiter({ bytesPerSecond: 1000, burstBytes: 1000, now: clock.now });
  rl.reserve(1000);
  clock.advance(-500);
  assert.equal(rl.available, 0);
  clock.advance(600);
  assert.equal(rl.available, 100);
});

test('take() sleeps exactly the reserved wait through the injected sleep', async () => {
  const clock = fakeTime();
  const rl = new RateLimiter({ bytesPerSecond: 1000, burstBytes: 100, now: clock.now, sleep: clock.sleep });
  await rl.take(100);
  await rl.take(300);
  await rl.take(50);
  assert.deepEqual(clock.slept, [300, 50]);
});

test('an aborted take() refunds its tokens and throws the reason', async () => {
  const clock = fakeTime();
  const rl = new RateLimiter({ bytesPerSecond: 1000, burstBytes: 100, now: clock.now, sleep: clock.sleep });
  await rl.take(100);
  const ac = new AbortController();
  ac.abort(new Error('peer gone'));
  await assert.rejects(rl.take(500, ac.signal), /peer gone/);
  assert.equal(rl.available, 0);
  const late = new AbortController();
  const sleepThenAbort = async (_ms: number, signal?: AbortSignal) => {
    late.abort(new Error('late'));
    signal?.throwIfAborted();
  };
  const rl2 = new RateLimiter({
    bytesPerSecond: 1000,
    burstBytes: 100,
    now: clock.now,
    sleep: sleepThenAbort,
  });
  await assert.rejects(rl2.take(400, late.signal), /late/);
  assert.equal(rl2.available, 100);
});

test('the default burst is a quarter second of the rate, at least 64 KiB', () => {
  assert.equal(new RateLimiter({ bytesPerSecond: 100_000_000 }).burstBytes, 25_000_000);
  assert.equal(new RateLimiter({ bytesPerSecond: 1000 }).burstBytes, 64 * 1024);
});

test('a rate or burst that is not a positive number is refused naming the option', () => {
  for (const bad of [0, -1, Number.NaN, Number.NEGATIVE_INFINITY]) {
    assert.throws(
      () => new RateLimiter({ bytesPerSecond: bad }),
      (err) => isCanopyError(err, 'USAGE') && /bytesPerSecond/.test(err.message),
    );
  }
  assert.throws(
    () => new RateLimiter({ bytesPerSecond: 10, burstBytes: 0 }),
    (err) => isCanopyError(err, 'USAGE') && /burstBytes/.test(err.message),
  );
});

test('Infinity is no cap, and setRate changes the cap from now on (a lowered cap makes callers wait)', () => {
  let t = 0;
  const l = new RateLimiter({ bytesPerSecond: Number.POSITIVE_INFINITY, now: () => t });
  assert.equal(l.reserve(1e12), 0);
  l.setRate(1000);
  assert.equal(l.bytesPerSecond, 1000);
  assert.equal(l.reserve(l.burstBytes), 0);
  assert.equal(l.reserve(500), 500);
  t += 500;
  assert.equal(l.reserve(0), 0);
  l.setRate(Number.POSITIVE_INFINITY);
  assert.equal(l.reserve(1e9), 0);
  assert.throws(
    () => l.setRate(0),
    (err) => isCanopyError(err, 'USAGE'),
  );
});
