import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, realpath, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { currentAccount, lookupAccount } from './accounts.js';
import { type CommandSpec, type ExecPolicy, runCommand } from './executor.js';

let dir = '';
let policy: ExecPolicy;

before(async () => {
  dir = await realpath(await mkdtemp(path.join(tmpdir(), 'canopy-exec-')));
  await mkdir(path.join(dir, 'app', 'sub'), { recursive: true });
  await mkdir(path.join(dir, 'app2'));
  await mkdir(path.join(dir, 'outside'));
  await symlink(path.join(dir, 'outside'), path.join(dir, 'app', 'escape'));
  policy = { roots: [dir], runAs: [], defaultCwd: dir };
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const run = (spec: Partial<CommandSpec> & Pick<CommandSpec, 'command'>, p: ExecPolicy = policy) =>
  runCommand({ timeoutMs: 5000, ...spec }, p);

/** Dead, or a zombie: this sandbox's init does not reap orphans, so a killed grandchild may linger as Z. */
function isGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.startsWith('Z') ?? false;
  } catch {
    return true;
  }
}

async function waitGone(pid: number, deadlineMs = 2000): Promise<boolean> {
  const until = Date.now() + deadlineMs;
  while (!isGone(pid)) {
    if (Date.now() > until) return false;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return true;
}

async function readPid(file: string): Promise<number> {
  const pid = Number((await readFile(path.join(dir, file), 'utf8')).trim());
  assert.ok(Number.isInteger(pid) && pid > 0, `bad pid in ${file}`);
  return pid;
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

test('a command that exits 0 is ok and its stdout is captured', async () => {
  const res = await run({ command: ['printf', 'hello\n'] });
  assert.equal(res.state, 'ok');
  assert.equal(res.exitCode, 0);
  assert.equal(res.signal, null);
  assert.equal(res.stdout, 'hello\n');
  assert.equal(res.stdoutBytes, 6);
  assert.equal(res.stdoutTruncated, false);
  assert.equal(res.error, undefined);
  assert.ok(res.endedAt >= res.startedAt);
});

test('a shell string runs under /bin/sh -c and stderr is captured apart', async () => {
  const res = await run({ command: 'echo out; echo err >&2' });
  assert.equal(res.state, 'ok');
  assert.equal(res.stdout, 'out\n');
  assert.equal(res.stderr, 'err\n');
});

test("a shell string that starts with '-' is the command, not options of sh", async () => {
  const res = await run({ command: '-n; echo ran' });
  assert.equal(res.state, 'ok');
  assert.match(res.stderr, /-n: not found/);
  assert.equal(res.stdout, 'ran\n');
  const s = await run({ command: '-s' });
  assert.match(s.stderr, /-s: not found/);
});

test('a nonzero exit is failed with the exit code', async () => {
  const res = await run({ command: 'exit 3' });
  assert.equal(res.state, 'failed');
  assert.equal(res.exitCode, 3);
  assert.equal(res.signal, null);
});

test('a process killed by a signal is failed with the signal', async () => {
  const res = await run({ command: 'kill -TERM $$' });
  assert.equal(res.state, 'failed');
  assert.equal(res.exitCode, null);
  assert.equal(res.signal, 'SIGTERM');
});

test('a command that does not exist is failed with an error naming it', async () => {
  const res = await run({ command: ['canopy-no-such-command-7f3a', '--x'] });
  assert.equal(res.state, 'failed');
  assert.equal(res.exitCode, null);
  assert.match(res.error ?? '', /"canopy-no-such-command-7f3a" was not found on PATH/);
});

test('a timeout kills the whole process group, grandchildren included', async () => {
  const res = await run({ command: 'sleep 30 & echo $! > grandchild.pid; sleep 30', timeoutMs: 300 });
  const grandchild = await readPid('grandchild.pid');
  try {
    assert.equal(res.state, 'timeout');
    assert.equal(res.signal, 'SIGTERM');
    assert.match(res.error ?? '', /timed out after 300 ms/);
    assert.ok(res.durationMs >= 290, `durationMs ${res.durationMs}`);
    assert.ok(await waitGone(grandchild), `grandchild ${grandchild} survived the timeout`);
  } finally {
    killQuietly(grandchild);
  }
});

test('a process that ignores SIGTERM is killed with SIGKILL after killGraceMs', async () => {
  const res = await run({ command: 'trap "" TERM; sleep 30', timeoutMs: 200, killGraceMs: 200 });
  assert.equal(res.state, 'timeout');
  assert.equal(res.signal, 'SIGKILL');
  assert.ok(res.durationMs >= 390, `durationMs ${res.durationMs}`);
  assert.match(res.error ?? '', /SIGKILL/);
});

test('a grandchild that escaped the group with setsid does not keep the result waiting', async () => {
  const res = await run({
    command: 'setsid sleep 30 & echo $! > escaped.pid; sleep 30',
    timeoutMs: 300,
    killGraceMs: 200,
  });
  const escaped = await readPid('escaped.pid');
  try {
    assert.equal(res.state, 'timeout');
    assert.ok(res.durationMs < 2000, `waited ${res.durationMs} ms on the escaped grandchild's pipes`);
  } finally {
    killQuietly(escaped);
  }
});

test('after a normal exit, a background grandchild holding the pipes is left running but not waited for', async () => {
  const res = await run({ command: 'sleep 30 & echo $! > background.pid; echo done' });
  const background = await readPid('background.pid');
  try {
    assert.equal(res.state, 'ok');
    assert.equal(res.stdout, 'done\n');
    assert.ok(res.durationMs < 2000, `waited ${res.durationMs} ms on the grandchild's pipes`);
    assert.equal(isGone(background), false);
  } finally {
    killQuietly(background);
  }
});

test('aborting stops the process group and reports failed with an "aborted" error', async () => {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new Error('agent shutting down')), 100);
  const res = await runCommand({ command: 'sleep 30', timeoutMs: 5000, killGraceMs: 200 }, policy, {
    signal: controller.signal,
  });
  clearTimeout(timer);
  assert.equal(res.state, 'failed');
  assert.equal(res.signal, 'SIGTERM');
  assert.match(res.error ?? '', /^aborted \(agent shutting down\)/);
});

test('an already aborted signal spawns nothing', async () => {
  const controller = new AbortController();
  controller.abort();
  const res = await runCommand({ command: ['touch', 'aborted-marker'], timeoutMs: 1000 }, policy, {
    signal: controller.signal,
  });
  assert.equal(res.state, 'failed');
  assert.match(res.error ?? '', /^aborted before the command started/);
  assert.equal(existsSync(path.join(dir, 'aborted-marker')), false);
});

test('output beyond maxOutputBytes is counted but not kept', async () => {
  const res = await run({
    command: "head -c 3000000 /dev/zero | tr '\\0' x; head -c 5000 /dev/zero | tr '\\0' y >&2",
    maxOutputBytes: 1000,
  });
  assert.equal(res.state, 'ok');
  assert.equal(res.stdout, 'x'.repeat(1000));
  assert.equal(res.stdoutTruncated, true);
  assert.equal(res.stdoutBytes, 3_000_000);
  assert.equal(res.stderr, 'y'.repeat(1000));
  assert.equal(res.stderrTruncated, true);
  assert.equal(res.stderrBytes, 5000);
});

test('the output cap does not split a multi-byte character', async () => {
  // a, then é twice (c3 a9 c3 a9): a cap of 4 bytes would cut the second é in half.
  const res = await run({ command: ['printf', 'a\\303\\251\\303\\251'], maxOutputBytes: 4 });
  assert.equal(res.stdout, 'aé');
  assert.equal(res.stdoutTruncated, true);
  assert.equal(res.stdoutBytes, 5);
});

test('a shell metacharacter in an argv argument is passed literally', async () => {
  const res = await run({ command: ['printf', '%s', 'a;touch X $(touch Y) `touch Z`'] });
  assert.equal(res.state, 'ok');
  assert.equal(res.stdout, 'a;touch X $(touch Y) `touch Z`');
  for (const name of ['X', 'Y', 'Z']) assert.equal(existsSync(path.join(dir, name)), false, name);
});

test('the command gets a minimal env: the base variables plus its own, not the agent environment', async () => {
  process.env.CANOPY_EXECUTOR_TEST_LEAK = 'leaked';
  try {
    const res = await run({ command: ['env'], env: { FOO: 'bar baz' } });
    const vars = new Map(
      res.stdout
        .trim()
        .split('\n')
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
    assert.deepEqual([...vars.keys()].sort(), ['FOO', 'HOME', 'LANG', 'LOGNAME', 'PATH', 'SHELL', 'USER']);
    assert.equal(vars.get('FOO'), 'bar baz');
    assert.equal(vars.get('LANG'), 'C.UTF-8');
    assert.equal(vars.get('USER'), currentAccount().name);
    const own = await run({ command: ['env'], env: { LANG: 'en_US.UTF-8' } });
    assert.match(own.stdout, /^LANG=en_US\.UTF-8$/m);
  } finally {
    delete process.env.CANOPY_EXECUTOR_TEST_LEAK;
  }
});

test('cwd defaults to policy.defaultCwd and may be any directory inside a root', async () => {
  assert.equal((await run({ command: ['pwd', '-P'] })).stdout, `${dir}\n`);
  const sub = path.join(dir, 'app', 'sub');
  assert.equal((await run({ command: ['pwd', '-P'], cwd: sub })).stdout, `${sub}\n`);
});

test('a cwd outside the roots is refused, by path segment and after resolving symlinks', async () => {
  const app = path.join(dir, 'app');
  const appPolicy: ExecPolicy = { roots: [app], runAs: [], defaultCwd: app };
  const sibling = await run({ command: ['touch', 'spawned'], cwd: path.join(dir, 'app2') }, appPolicy);
  assert.equal(sibling.state, 'refused');
  assert.equal(
    sibling.error,
    `working directory "${dir}/app2" is outside the allowed roots (allowed: ${app}); ` +
      'use a directory under one of them, or add a root to roots in the agent config',
  );
  assert.equal(existsSync(path.join(dir, 'app2', 'spawned')), false);
  const viaSymlink = await run({ command: ['true'], cwd: path.join(app, 'escape') }, appPolicy);
  assert.equal(viaSymlink.state, 'refused');
  assert.match(viaSymlink.error ?? '', /resolves to ".*\/outside", which is outside the allowed roots/);
});

test('a relative or missing cwd is refused', async () => {
  const relative = await run({ command: ['true'], cwd: 'app' });
  assert.equal(relative.state, 'refused');
  assert.match(relative.error ?? '', /working directory "app" is not an absolute path/);
  const missing = await run({ command: ['true'], cwd: path.join(dir, 'nope') });
  assert.equal(missing.state, 'refused');
  assert.match(missing.error ?? '', /nope" does not exist/);
});

test('a run-as account not in the allowlist is refused, naming the allowed ones', async () => {
  const res = await run({ command: ['true'], runAs: 'bob' }, { ...policy, runAs: ['root', 'deploy'] });
  assert.equal(res.state, 'refused');
  assert.equal(
    res.error,
    'run-as account "bob" is not in this agent\'s run_as allowlist (allowed: root, deploy); ' +
      'add it to run_as in the agent config',
  );
  const onlySelf = await run({ command: ['true'], runAs: 'daemon' });
  assert.equal(onlySelf.state, 'refused');
  assert.match(onlySelf.error ?? '', /allowlist is empty/);
});

test("without runAs the agent's own account must be allowed too", async () => {
  const self = currentAccount().name;
  const res = await run({ command: ['true'] }, { ...policy, runAs: ['canopy-other-account'] });
  assert.equal(res.state, 'refused');
  assert.match(res.error ?? '', new RegExp(`agent's own account "${self}", which is not in`));
});

test('an unknown run-as account is refused', async () => {
  const name = 'canopy-no-such-user';
  const res = await run({ command: ['true'], runAs: name }, { ...policy, runAs: [name] });
  assert.equal(res.state, 'refused');
  assert.match(res.error ?? '', /run-as account "canopy-no-such-user" does not exist on this host/);
});

test('an allowed run-as account runs with its uid when the agent is root, and is refused otherwise', async () => {
  const nobody = await lookupAccount('nobody');
  assert.ok(nobody !== undefined, 'this host has no "nobody" account');
  const rootPolicy: ExecPolicy = { roots: ['/'], runAs: ['nobody'], defaultCwd: '/' };
  const res = await run({ command: 'id -u; echo "$HOME"', runAs: 'nobody' }, rootPolicy);
  if (process.getuid?.() === 0) {
    assert.equal(res.state, 'ok', res.error);
    assert.equal(res.stdout, `${nobody.uid}\n${nobody.home}\n`);
  } else {
    assert.equal(res.state, 'refused');
    assert.match(res.error ?? '', /only an agent running as root can switch accounts/);
  }
});

test('an env key that is not a variable name, or a value with NUL, is refused naming the key', async () => {
  const badKey = await run({ command: ['true'], env: { 'BAD-KEY': 'x' } });
  assert.equal(badKey.state, 'refused');
  assert.match(badKey.error ?? '', /env key "BAD-KEY" is not a valid variable name/);
  const digit = await run({ command: ['true'], env: { '1X': 'x' } });
  assert.match(digit.error ?? '', /"1X"/);
  const nul = await run({ command: ['true'], env: { GOOD: 'a\0b' } });
  assert.equal(nul.state, 'refused');
  assert.match(nul.error ?? '', /env GOOD contains a NUL byte/);
});

test('a timeout that is not a positive finite number is refused and nothing runs', async () => {
  for (const timeoutMs of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
    const res = await run({ command: ['touch', 'timeout-marker'], timeoutMs });
    assert.equal(res.state, 'refused', String(timeoutMs));
    assert.match(res.error ?? '', /timeoutMs .* is not a positive number/);
  }
  assert.equal(existsSync(path.join(dir, 'timeout-marker')), false);
});

test('an empty command is refused', async () => {
  assert.equal((await run({ command: [] })).state, 'refused');
  assert.equal((await run({ command: '  ' })).state, 'refused');
  assert.equal((await run({ command: [''] })).state, 'refused');
});
