/**
 * A file distribution's manifest, from the peers: a dist task carries only
 * the blob id (and the file's MD5), so the coordinator never queues one copy
 * of a large manifest per host (80,000 chunk digests for 20 GB are 5 MB).
 * The agent asks its candidates in the order it fetches chunks from (its
 * parent, the re-parenting, the fallbacks, the source last) and accepts
 * bytes only if they hash to the blob id. A candidate that does not serve
 * the blob yet (a relay still getting the manifest from its own parent
 * answers once it has it, a long poll) is asked again until its stall
 * windows pass (three; twelve for the last candidate), then the next one;
 * one that cannot be reached is left at once (the last one is retried), and
 * one whose bytes are wrong is never asked again.
 */
import { setTimeout as wait } from 'node:timers/promises';
import { CanopyError, isCanopyError } from '../errors/index.js';
import type { DistTask, PeerAddress } from '../protocol/index.js';
import { type Manifest, type PeerClient, parseManifest } from '../transfer/index.js';

export interface ManifestContext {
  connect: (peer: PeerAddress) => Promise<PeerClient>;
  signal?: AbortSignal;
  now?: () => number;
}

const MAX_BACKOFF_MS = 1_000;

/** The blob's manifest from the first candidate that serves it; throws naming every candidate and why. */
export async function fetchManifest(
  task: DistTask,
  candidates: PeerAddress[],
  ctx: ManifestContext,
): Promise<Manifest> {
  const now = ctx.now ?? Date.now;
  const { blob, stallMs } = task.spec;
  const tried: string[] = [];
  for (const [at, candidate] of candidates.entries()) {
    const last = at === candidates.length - 1;
    const until = now() + (last ? 12 : 3) * stallMs;
    let backoff = 0;
    let why = 'no answer';
    let client: PeerClient | undefined;
    try {
      for (;;) {
        ctx.signal?.throwIfAborted();
        try {
          client ??= await ctx.connect(candidate);
          const bytes = await client.fetchManifest(blob, ctx.signal ? { signal: ctx.signal } : {});
          return await parseManifest(bytes.toString('utf8'), {
            id: blob,
            source: `the manifest of blob ${blob} from peer ${candidate.name}`,
          });
        } catch (err) {
          if (ctx.signal?.aborted) throw ctx.signal.reason;
          why = (err as Error).message.split('\n')[0] ?? String(err);
          const code = isCanopyError(err) ? err.code : '';
          if (client?.closed) client = undefined;
          // Not serving the blob yet: ask again while the window lasts. Unreachable or stalled: the
          // next candidate at once, but the last one (the source) is retried. Wrong bytes: never again.
          const notYet = code === 'TRANSFER_PEER_FORBIDDEN' || code === 'TRANSFER_CHUNK_MISSING';
          const wrong = code === 'TRANSFER_DIGEST_MISMATCH' || code === 'TRANSFER_MANIFEST_INVALID';
          if (wrong || !(notYet || last) || now() >= until) break;
          backoff = Math.min(MAX_BACKOFF_MS, Math.max(50, backoff * 2));
          await wait(backoff, undefined, { signal: ctx.signal }).catch(() => {}); // an abort: checked above
        }
      }
    } finally {
      await client?.close();
    }
    tried.push(`${candidate.name}: ${why}`);
  }
  throw new CanopyError(
    'TRANSFER_PEER_LOST',
    `no peer could serve the manifest of blob ${blob} for ${task.spec.dest} (tried ${tried.join('; ')}); ` +
      `check that the distribution is still running (canopy dists) and its source reachable`,
    { blob },
  );
}
