// The steps on a staged distributed file (verify, activate, discard) on real
// files in a temp dir: the checks, the switch with its backup, and that each
// step run twice (a re-sent or resumed task) is harmless.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import type { ActivationStep, ActivationTask } from '../protocol/index.js';
import { Md5Cache } from '../transfer/index.js';
import { runActivation, stagedPathFor, stageFile } from './activation-task.js';

const BLOB = '0123456789abcdef'.repeat(4);
const md5 = (b: Buffer | string) => createHash('md5').update(b).digest('hex');

function world(t: TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'canopy-activation-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const root = join(dir, 'root');
  mkdirSync(root);
  const dest = join(root, 'app.bin');
  const content = Buffer.from('the new build\n'.repeat(1000));
  const ctx = {
    policy: { roots: [root], runAs: [], defaultCwd: root },
    backupDir: join(dir, 'backups'),
    cache: new Md5Cache(),
  };
  const task = (step: ActivationStep, over: Partial<ActivationTask['spec']> = {}): ActivationTask => ({
    id: `r1:h1:${step}`,
    runId: 'r1',
    host: 'h1',
    kind: 'activation',
    expiresInMs: 60_000,
    spec: { step, blob: BLOB, dest, size: content.length, md5: md5(content), mode: 0o640, ...over },
  });
  const stage = async () => {
    const temp = join(root, '.app.bin.canopy-tmp-test');
    writeFileSync(temp, content);
    return stageFile(temp, { dest, blob: BLOB, meta: { mode: 0o640 }, previous: undefined });
  };
  return { dir, root, dest, content, ctx, task, stage };
}

test('the staged copy sits beside the destination under a name made from the blob, with its mode', async (t) => {
  const w = world(t);
  const staged = await w.stage();
  assert.equal(staged, join(w.root, '.app.bin.canopy-staged-0123456789abcdef'));
  assert.equal(stagedPathFor(w.dest, BLOB), staged);
  assert.deepEqual(readdirSync(w.root), ['.app.bin.canopy-staged-0123456789abcdef']);
  assert.equal((await import('node:fs')).statSync(staged).mode & 0o7777, 0o640);
});

test('verify changes nothing; activate switches with a backup of the old file; a second activate is a no-op', async (t) => {
  const w = world(t);
  writeFileSync(w.dest, 'old build\n');
  const staged = await w.stage();
  const v = await runActivation(w.task('verify'), w.ctx);
  assert.equal(v.state, 'ok', v.error);
  assert.equal(v.files?.[0]?.state, 'staged');
  assert.equal(readFileSync(w.dest, 'utf8'), 'old build\n');
  const a = await runActivation(w.task('activate'), w.ctx);
  assert.equal(a.state, 'ok', a.error);
  assert.equal(a.files?.[0]?.state, 'changed');
  assert.equal(a.files?.[0]?.oldMd5, md5('old build\n'));
  assert.deepEqual(readFileSync(w.dest), w.content);
  assert.equal(existsSync(staged), false);
  const [home] = readdirSync(w.ctx.backupDir);
  const backups = readdirSync(join(w.ctx.backupDir, home ?? '')).filter((n) => n !== 'dest');
  assert.equal(backups.length, 1);
  assert.equal(readFileSync(join(w.ctx.backupDir, home ?? '', backups[0] ?? ''), 'utf8'), 'old build\n');
  // Re-sent after it switched (the agent died before its result): reports the file in place.
  const again = await runActivation(w.task('activate'), w.ctx);
  assert.equal(again.state, 'ok', again.error);
  assert.equal(again.files?.[0]?.state, 'unchanged');
  assert.equal(readdirSync(join(w.ctx.backupDir, home ?? '')).length, 2, 'no second backup');
});

test('a staged copy changed after staging is refused, naming both MD5s; the destination is untouched', async (t) => {
  const w = world(t);
  writeFileSync(w.dest, 'old build\n');
  const staged = await w.stage();
  const tampered = Buffer.from(w.content);
  tampered[100] = (tampered[100] ?? 0) ^ 0xff;
  writeFileSync(staged, tampered);
  const v = await runActivation(w.task('verify'), w.ctx);
  assert.equal(v.state, 'failed');
  assert.equal(v.files?.[0]?.code, 'TRANSFER_DIGEST_MISMATCH');
  assert.match(v.error ?? '', new RegExp(`has MD5 ${md5(tampered)}, the manifest says ${md5(w.content)}`));
  assert.match(v.error ?? '', /canopy-staged-0123456789abcdef/);
  assert.equal(existsSync(staged), true, 'verify leaves it for the discard');
  const a = await runActivation(w.task('activate'), w.ctx);
  assert.equal(a.state, 'failed');
  assert.equal(readFileSync(w.dest, 'utf8'), 'old build\n');
  assert.equal(existsSync(staged), false, 'a failed activate removes the bad copy');
  writeFileSync(staged, 'short');
  const short = await runActivation(w.task('verify'), w.ctx);
  assert.match(short.error ?? '', /has 5 bytes, the manifest says 14000/);
});

test('discard removes the staged copy and nothing else, and may run twice', async (t) => {
  const w = world(t);
  writeFileSync(w.dest, 'old build\n');
  const staged = await w.stage();
  for (let i = 0; i < 2; i++) {
    const d = await runActivation(w.task('discard'), w.ctx);
    assert.equal(d.state, 'ok', d.error);
    assert.equal(d.files?.[0]?.state, 'discarded');
  }
  assert.equal(existsSync(staged), false);
  assert.deepEqual(readdirSync(w.root), ['app.bin']);
  assert.equal(readFileSync(w.dest, 'utf8'), 'old build\n');
});

test('a missing staged copy and a destination now outside the roots are refused clearly', async (t) => {
  const w = world(t);
  const gone = await runActivation(w.task('activate'), w.ctx);
  assert.equal(gone.state, 'failed');
  assert.equal(gone.files?.[0]?.code, 'DIST_STAGED_MISSING');
  assert.match(gone.error ?? '', /staged copy .*canopy-staged-0123456789abcdef of .*app\.bin is gone/);
  const outside = await runActivation(w.task('verify', { dest: join(w.dir, 'elsewhere.bin') }), w.ctx);
  assert.equal(outside.state, 'refused');
  assert.equal(outside.files?.[0]?.code, 'PUSH_DEST_REFUSED');
  assert.match(outside.error ?? '', /outside the allowed roots/);
});
