/**
 * The agent's durable memory of tasks, in plain files under DATA/journal
 * (small, fsynced, and no database in the agent's 60 MB budget):
 *
 *   started/ID.json   written (and fsynced) before a task's process starts;
 *                     never removed while the coordinator may still resend
 *                     the task, so an id is never started twice
 *   results/ID.json   a finished task's result, until the coordinator acks it
 *   done/ID.json      the acknowledged result, kept for local audit
 *
 * After a crash, a task that started but has no result was interrupted: it
 * gets an `interrupted` result and is not run again (commands are not
 * assumed idempotent). Distribution tasks are the exception: fetching
 * verified chunks and installing a file by its MD5 is idempotent, so they
 * are listed in `resumable` and the agent runs them again (from the chunks
 * it already verified).
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { NO_OUTPUT, type Task, type TaskResult } from '../protocol/index.js';
import { syncDir, writeSynced } from '../transfer/index.js';

const KEEP_MS = 14 * 86_400_000;

function fileName(id: string): string {
  return `${encodeURIComponent(id)}.json`;
}

async function writeDurable(dir: string, name: string, data: string): Promise<void> {
  const tmp = join(dir, `.${name}.tmp`);
  await writeSynced(tmp, data, 'w');
  await rename(tmp, join(dir, name));
  await syncDir(dir);
}

export class Journal {
  private readonly started: string;
  private readonly results: string;
  private readonly done: string;
  /** Distribution tasks found unfinished by open(): to be run again. */
  readonly resumable: Task[] = [];

  constructor(dir: string) {
    this.started = join(dir, 'started');
    this.results = join(dir, 'results');
    this.done = join(dir, 'done');
  }

  /**
   * Creates the directories, prunes old entries, and turns every task that
   * was started but never finished into an `interrupted` result. Returns those.
   */
  async open(now = Date.now()): Promise<TaskResult[]> {
    for (const d of [this.started, this.results, this.done]) await mkdir(d, { recursive: true, mode: 0o700 });
    const interrupted: TaskResult[] = [];
    for (const name of await readdir(this.started)) {
      if (!name.endsWith('.json')) continue;
      const path = join(this.started, name);
      const finished = existsSync(join(this.results, name)) || existsSync(join(this.done, name));
      if (finished) {
        if (now - (await stat(path)).mtimeMs > KEEP_MS) {
          await unlink(path).catch(() => {});
          await unlink(join(this.done, name)).catch(() => {});
        }
        continue;
      }
      const entry = JSON.parse(await readFile(path, 'utf8')) as { task: Task; startedAt: number };
      if (entry.task.kind === 'dist') {
        this.resumable.push(entry.task);
        continue;
      }
      const result: TaskResult = {
        taskId: entry.task.id,
        runId: entry.task.runId,
        state: 'interrupted',
        ...NO_OUTPUT,
        startedAt: entry.startedAt,
        endedAt: now,
        durationMs: now - entry.startedAt,
        error:
          'the agent stopped while this task was running; it was not run again (commands are not assumed idempotent)',
      };
      await this.saveResult(result);
      interrupted.push(result);
    }
    return interrupted;
  }

  /** The task as it was when started here, or undefined. */
  async startedTask(id: string): Promise<Task | undefined> {
    try {
      return (JSON.parse(await readFile(join(this.started, fileName(id)), 'utf8')) as { task: Task }).task;
    } catch {
      return undefined;
    }
  }

  /** True once the task was ever started here (finished or not). */
  hasStarted(id: string): boolean {
    return existsSync(join(this.started, fileName(id)));
  }

  /** Durably records that the task is starting; call before spawning anything. */
  async markStarted(task: Task, startedAt: number): Promise<void> {
    await writeDurable(this.started, fileName(task.id), JSON.stringify({ task, startedAt }));
  }

  async saveResult(result: TaskResult): Promise<void> {
    await writeDurable(this.results, fileName(result.taskId), JSON.stringify(result));
  }

  /** The stored result of a started task that the coordinator has not acknowledged. */
  async result(id: string): Promise<TaskResult | undefined> {
    try {
      return JSON.parse(await readFile(join(this.results, fileName(id)), 'utf8')) as TaskResult;
    } catch {
      return undefined;
    }
  }

  /** Every result not yet acknowledged, oldest first. */
  async unacknowledged(): Promise<TaskResult[]> {
    const out: TaskResult[] = [];
    for (const name of await readdir(this.results)) {
      if (!name.endsWith('.json') || name.startsWith('.')) continue;
      out.push(JSON.parse(await readFile(join(this.results, name), 'utf8')) as TaskResult);
    }
    return out.sort((a, b) => a.endedAt - b.endedAt);
  }

  /** The coordinator stored the result: move it out of the resend set. */
  async acknowledge(id: string): Promise<void> {
    const name = fileName(id);
    try {
      await rename(join(this.results, name), join(this.done, name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}
