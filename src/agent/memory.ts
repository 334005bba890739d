/**
 * Keeps a relaying agent's chunk garbage small. Every chunk a peer client
 * receives is a fresh Buffer (its bytes outside V8's heap); V8 collects dead
 * ones only at a full mark-compact, which it starts for external memory
 * only after 64 MB more of it, or when its (deliberately large, see
 * AGENT_NODE_FLAGS) old generation fills. So an agent relaying at full speed
 * holds tens of MB of dead chunk buffers, and its peak RSS depends on luck.
 * The governor counts the bytes fetched and, every CHECK_EVERY_BYTES, asks
 * for a full collection (concurrent, not blocking the event loop) when the
 * process's ArrayBuffers exceed `budgetBytes`: live chunks (in flight, the
 * store's recent cache, the pack's read-ahead) stay well under it.
 *
 * The collector is V8's `gc` function, exposed at run time (`--expose-gc`
 * through v8.setFlagsFromString, then taken from a fresh context): the
 * agent's command line stays as it is, and nothing else sees a global `gc`.
 */
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';

/** Starts a full collection; resolves when it is done (V8's `gc({type: 'major', execution: 'async'})`). */
export type Collect = () => Promise<void>;

export interface MemoryGovernorOptions {
  /** ArrayBuffer bytes above which a collection is asked for; default 24 MiB. */
  budgetBytes?: number;
  /** Bytes of ArrayBuffers now (default process.memoryUsage().arrayBuffers). */
  arrayBuffers?: () => number;
  /** Default: V8's collector, exposed at the first use. */
  collect?: Collect;
}

/** Fetched bytes between two looks at the process's ArrayBuffers. */
const CHECK_EVERY_BYTES = 4 * 1024 * 1024;

export class MemoryGovernor {
  /** Collections started, for the log and tests. */
  collections = 0;
  private readonly budget: number;
  private readonly arrayBuffers: () => number;
  private collect: Collect | undefined;
  private sinceCheck = 0;
  private running = false;

  constructor(options: MemoryGovernorOptions = {}) {
    this.budget = options.budgetBytes ?? 24 * 1024 * 1024;
    this.arrayBuffers = options.arrayBuffers ?? (() => process.memoryUsage().arrayBuffers);
    this.collect = options.collect;
  }

  /** Counts `bytes` received; now and then collects if the ArrayBuffers are over budget. */
  received(bytes: number): void {
    this.sinceCheck += bytes;
    if (this.sinceCheck < CHECK_EVERY_BYTES || this.running) return;
    this.sinceCheck = 0;
    if (this.arrayBuffers() <= this.budget) return;
    this.collect ??= exposeCollector();
    this.running = true;
    this.collections++;
    this.collect().then(
      () => {
        this.running = false;
      },
      () => {
        this.running = false;
      },
    );
  }
}

/** V8's `gc` function, with the options form (Node 20: V8 11). */
export function exposeCollector(): Collect {
  v8.setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as (options: { type: 'major'; execution: 'async' }) => Promise<void>;
  return () => gc({ type: 'major', execution: 'async' });
}
