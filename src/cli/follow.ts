/**
 * Following a run's events (server-sent events) until it is done, resuming
 * from the last event id after a dropped connection or a coordinator
 * restart, then fetching the final state. `canopy run` and `canopy push`
 * both use it.
 */
import type { HostResult, RunSummary } from '../coordinator/index.js';
import { isCanopyError } from '../errors/index.js';
import type { ApiClient } from './client.js';

export interface FinalRun {
  run: { createdAt: number; finishedAt?: number; deadline: number };
  results: HostResult[];
  summary: RunSummary;
}

export async function followRun(
  api: ApiClient,
  run: { id: string; deadline: number },
  onResult: (r: HostResult) => void,
  onReconnect: (why: string) => void,
  onProgress?: (progress: unknown) => void,
): Promise<FinalRun> {
  let lastId = 0;
  let done = false;
  const seen = new Set<string>();
  const giveUp = run.deadline + 60_000;
  while (!done) {
    try {
      await api.events(`/v1/runs/${run.id}/events`, lastId, (event, data, id) => {
        if (event === 'done') {
          done = true;
          return;
        }
        if (event === 'progress') {
          onProgress?.(JSON.parse(data));
          return;
        }
        if (event !== 'result') return;
        lastId = Math.max(lastId, id);
        const r = JSON.parse(data) as HostResult;
        if (seen.has(r.host)) return;
        seen.add(r.host);
        onResult(r);
      });
      if (!done) throw new Error('stream ended early');
    } catch (err) {
      if (Date.now() > giveUp) throw err;
      onReconnect(isCanopyError(err) ? err.message : (err as Error).message);
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  return api.call<FinalRun>('GET', `/v1/runs/${run.id}`);
}
