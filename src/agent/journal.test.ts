import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tempTree } from '../../test/helpers/tree.js';
import { NO_OUTPUT, type Task, type TaskResult } from '../protocol/index.js';
import { Journal } from './journal.js';

const task = (id: string): Task => ({
  id,
  runId: id.split(':')[0] ?? '',
  host: 'h1',
  kind: 'command',
  spec: { command: 'true', timeoutMs: 1000 },
  expiresInMs: 1000,
});

const result = (id: string): TaskResult => ({
  taskId: id,
  runId: id.split(':')[0] ?? '',
  state: 'ok',
  ...NO_OUTPUT,
  exitCode: 0,
  startedAt: 1,
  endedAt: 2,
  durationMs: 1,
});

test('a started task without a result becomes interrupted on reopen, and stays started forever', async (t) => {
  const dir = tempTree(t, {});
  const j = new Journal(dir);
  assert.deepEqual(await j.open(), []);
  await j.markStarted(task('r1:h1'), 100);
  await j.markStarted(task('r2:h1'), 100);
  await j.saveResult(result('r2:h1'));
  const reopened = new Journal(dir);
  const interrupted = await reopened.open(5000);
  assert.deepEqual(
    interrupted.map((r) => [r.taskId, r.state, r.durationMs]),
    [['r1:h1', 'interrupted', 4900]],
  );
  assert.equal(reopened.hasStarted('r1:h1'), true);
  // Both results wait for acknowledgement; a second reopen does not invent another.
  assert.deepEqual((await reopened.unacknowledged()).map((r) => r.taskId).sort(), ['r1:h1', 'r2:h1']);
  assert.deepEqual(await new Journal(dir).open(6000), []);
});

test('acknowledged results leave the resend set but the id is still known as started', async (t) => {
  const j = new Journal(tempTree(t, {}));
  await j.open();
  await j.markStarted(task('r1:h1'), 1);
  await j.saveResult(result('r1:h1'));
  assert.equal((await j.result('r1:h1'))?.state, 'ok');
  await j.acknowledge('r1:h1');
  await j.acknowledge('r1:h1'); // twice is harmless
  assert.deepEqual(await j.unacknowledged(), []);
  assert.equal(await j.result('r1:h1'), undefined);
  assert.equal(j.hasStarted('r1:h1'), true);
  assert.equal(j.hasStarted('r9:h1'), false);
});
