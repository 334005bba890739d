/**
 * A token bucket in bytes: the upload cap of an agent's peer server and the
 * download cap of its peer clients. One limiter is shared by every connection
 * it caps, so the cap holds for the agent, not per connection.
 *
 * The bucket may go into debt: reserve(n) always succeeds, takes n tokens and
 * says how long the caller must wait before moving the bytes. Later callers
 * queue behind the debt, so waiting is first come, first served, and a
 * reservation larger than the burst simply waits longer (a 4 MiB chunk under a
 * 64 KiB burst is not refused). The math is synchronous and reads time only
 * through the injected `now`, so tests drive it with a fake clock; take() is
 * reserve() plus the injected `sleep`. It never reads a wall clock itself and
 * holds no timer.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { CanopyError } from '../errors/index.js';

export interface RateLimiterOptions {
  /** Sustained rate in bytes per second. */
  bytesPerSecond: number;
  /** Bytes that may pass at once after an idle spell; default a quarter second's worth, at least 64 KiB. */
  burstBytes?: number;
  /** Milliseconds on a monotonic clock; default performance.now. */
  now?: () => number;
  /** Waits `ms` milliseconds, rejecting with the signal's reason if aborted; default timers/promises. */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

const MIN_DEFAULT_BURST = 64 * 1024;

export class RateLimiter {
  private rate: number;
  private burst: number;
  private readonly now: () => number;
  private readonly sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** Tokens in the bucket at `last`; negative while callers wait on a debt. */
  private tokens: number;
  private last: number;

  constructor(options: RateLimiterOptions) {
    this.rate = checkRate(options.bytesPerSecond);
    this.burst = checkPositive('burstBytes', options.burstBytes ?? defaultBurst(options.bytesPerSecond));
    this.now = options.now ?? (() => performance.now());
    this.sleep = options.sleep ?? ((ms, signal) => delay(ms, undefined, { signal }));
    this.tokens = this.burstBytes;
    this.last = this.now();
  }

  /** Sustained rate in bytes per second (Infinity: no cap). */
  get bytesPerSecond(): number {
    return this.rate;
  }

  get burstBytes(): number {
    return this.burst;
  }

  /**
   * Changes the cap from now on (Infinity lifts it; the burst follows the
   * default rule). A debt callers are waiting out is kept.
   */
  setRate(bytesPerSecond: number): void {
    this.refill();
    this.rate = checkRate(bytesPerSecond);
    this.burst = defaultBurst(bytesPerSecond);
    this.tokens = Math.min(this.tokens, this.burst);
  }

  /** Tokens available now (negative: the debt callers are waiting out). */
  get available(): number {
    this.refill();
    return this.tokens;
  }

  /**
   * Takes `bytes` tokens and returns how many milliseconds the caller must
   * wait before moving those bytes (0: at once). Never refuses.
   */
  reserve(bytes: number): number {
    if (!Number.isFinite(bytes) || bytes < 0) throw new RangeError(`cannot reserve ${bytes} bytes`);
    if (this.rate === Number.POSITIVE_INFINITY) return 0;
    this.refill();
    this.tokens -= bytes;
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens * 1000) / this.rate);
  }

  /** Gives back tokens of a reservation whose bytes will not move (an aborted wait). */
  refund(bytes: number): void {
    this.refill();
    this.tokens = Math.min(this.burst, this.tokens + bytes);
  }

  /**
   * Waits until `bytes` may move. If `signal` aborts the wait, the tokens are
   * refunded and the signal's reason is thrown.
   */
  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    const wait = this.reserve(bytes);
    if (wait === 0) return;
    try {
      await this.sleep(wait, signal);
    } catch (err) {
      this.refund(bytes);
      throw err;
    }
  }

  /** Waits `ms` on the limiter's clock (for callers that used reserve() directly). */
  wait(ms: number, signal?: AbortSignal): Promise<void> {
    return this.sleep(ms, signal);
  }

  private refill(): void {
    const t = this.now();
    const elapsed = Math.max(0, t - this.last);
    this.last = Math.max(this.last, t);
    if (this.rate === Number.POSITIVE_INFINITY) {
      this.tokens = this.burst;
      return;
    }
    this.tokens = Math.min(this.burst, this.tokens + (elapsed * this.rate) / 1000);
  }
}

function defaultBurst(rate: number): number {
  return Number.isFinite(rate) ? Math.max(MIN_DEFAULT_BURST, Math.floor(rate / 4)) : MIN_DEFAULT_BURST;
}

function checkRate(value: number): number {
  return value === Number.POSITIVE_INFINITY ? value : checkPositive('bytesPerSecond', value);
}

function checkPositive(what: string, value: number): number {
  if (Number.isFinite(value) && value > 0) return value;
  throw new CanopyError(
    'USAGE',
    `rate limit ${what} ${JSON.stringify(value)} is not a positive number of bytes; ` +
      `give the cap in bytes per second (e.g. 12500000 for 100 Mbit/s), or leave it unset for no cap`,
    { option: what },
  );
}
