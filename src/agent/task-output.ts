/**
 * The result fields of a task that runs no process (distribution, directory
 * pull, activation step, source): no process output, its times, and (for
 * files) its outcome. One shape for all of them, so the coordinator and the
 * journal see the same fields whatever the kind.
 */
import { type FileOutcome, NO_OUTPUT, type TaskResult } from '../protocol/index.js';

export type TaskOutput = Omit<TaskResult, 'taskId' | 'runId'>;

export function output(
  startedAt: number,
  endedAt: number,
  state: TaskOutput['state'],
  error: string | undefined,
  files?: FileOutcome[],
): TaskOutput {
  return {
    state,
    ...NO_OUTPUT,
    startedAt,
    endedAt,
    durationMs: endedAt - startedAt,
    ...(error ? { error } : {}),
    ...(files ? { files } : {}),
  };
}
