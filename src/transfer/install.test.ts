/**
 * Tests of install.ts on real temp directories: destination checks against
 * roots, the atomic install and its failure paths, backups and rollback, the
 * MD5 cache and stale temp files. Owner tests need root (chown) and are
 * skipped otherwise.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, realpathSync, rmSync } from 'node:fs';
import {
  chmod,
  chown,
  link,
  lstat,
  mkdir,
  readdir,
  readFile,
  rename,
  stat,
  symlink,
  unlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { type TestContext, test } from 'node:test';
import { isCanopyError } from '../errors/index.js';
import { ChunkStore } from './chunk-store.js';
import {
  commitInstall,
  fileState,
  fixMeta,
  type InstallOptions,
  installFile,
  Md5Cache,
  md5File,
  md5Of,
  metaDiffers,
  recheckDest,
  removeStaleTemps,
  resolveDest,
  rollback,
  tempPathFor,
} from './install.js';
import { buildManifest } from './manifest.js';

const asRoot = process.getuid?.() === 0;
const TEMP_RE = /\.canopy-tmp-/;

/** A real (symlink-free) temp directory, removed after the test. */
function scratch(t: TestContext): string {
  const dir = realpathSync(mkdtempSync(path.join(tmpdir(), 'canopy-install-')));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A root `<tmp>/root` with a `sub` directory, a sibling `<tmp>/root2` and `<tmp>/outside`. */
async function roots(t: TestContext): Promise<{ base: string; root: string }> {
  const base = scratch(t);
  const root = path.join(base, 'root');
  await mkdir(path.join(root, 'sub'), { recursive: true });
  await mkdir(path.join(base, 'root2'));
  await mkdir(path.join(base, 'outside'));
  return { base, root };
}

async function refusal(dest: string, allowed: readonly string[]): Promise<string> {
  const r = await resolveDest(dest, allowed);
  assert.equal(r.ok, false, `${dest} was accepted`);
  return r.ok ? '' : r.reason;
}

function install(
  dest: string,
  text: string | Buffer,
  backupDir: string,
  extra: Partial<InstallOptions> = {},
): ReturnType<typeof installFile> {
  const content = Buffer.isBuffer(text) ? text : Buffer.from(text);
  return installFile({ dest, content, md5: md5Of(content), backupDir, ...extra });
}

async function tempsIn(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => TEMP_RE.test(n));
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<Error> {
  try {
    await p;
  } catch (err) {
    assert.ok(isCanopyError(err), `not a CanopyError: ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected ${code}, but it succeeded`);
}

// ------------------------------------------------------------ resolveDest

test('a destination inside a root is accepted with its directory', async (t) => {
  const { root } = await roots(t);
  const r = await resolveDest(path.join(root, 'sub', 'app.conf'), [root]);
  assert.deepEqual(r, { ok: true, path: path.join(root, 'sub', 'app.conf'), dir: path.join(root, 'sub') });
});

test('an existing regular file as destination is accepted', async (t) => {
  const { root } = await roots(t);
  await writeFile(path.join(root, 'app.conf'), 'old');
  const r = await resolveDest(path.join(root, 'app.conf'), [root]);
  assert.deepEqual(r, { ok: true, path: path.join(root, 'app.conf'), dir: root });
});

test('the root that contains the destination is found among several', async (t) => {
  const { base, root } = await roots(t);
  const r = await resolveDest(path.join(root, 'f'), [path.join(base, 'outside'), root]);
  assert.equal(r.ok, true);
});

test('a relative destination is refused', async (t) => {
  const { root } = await roots(t);
  assert.match(await refusal('sub/app.conf', [root]), /"sub\/app\.conf" is not an absolute path/);
  assert.match(await refusal('./app.conf', [root]), /is not an absolute path/);
});

test('with empty roots every destination is refused and the reason says roots is empty', async (t) => {
  const { root } = await roots(t);
  const reason = await refusal(path.join(root, 'f'), []);
  assert.match(reason, /is outside the allowed roots/);
  assert.match(reason, /allowed roots: none: roots is empty/);
});

test('a destination outside every root is refused naming the roots', async (t) => {
  const { base, root } = await roots(t);
  const reason = await refusal(path.join(base, 'outside', 'f'), [root]);
  assert.match(reason, /is outside the allowed roots; add a root/);
  assert.ok(reason.includes(`allowed roots: ${root}`), reason);
});

test('.. that climbs out of a root is refused', async (t) => {
  const { root } = await roots(t);
  assert.match(await refusal(`${root}/sub/../../outside/f`, [root]), /is outside the allowed roots/);
  assert.match(await refusal(`${root}/..`, [root]), /is outside the allowed roots/);
});

test('a refusal of a dest with .. shows where it resolves', async (t) => {
  const { base, root } = await roots(t);
  const reason = await refusal(`${root}/sub/../../outside/f`, [root]);
  assert.ok(reason.includes(`(it resolves to "${path.join(base, 'outside', 'f')}")`), reason);
});

test('.. that stays inside a root is allowed and the resolved path is returned', async (t) => {
  const { root } = await roots(t);
  const r = await resolveDest(`${root}/sub/../app.conf`, [root]);
  assert.deepEqual(r, { ok: true, path: path.join(root, 'app.conf'), dir: root });
});

test('a sibling directory sharing the root as a name prefix is not inside it', async (t) => {
  const { base, root } = await roots(t);
  // /x/root must not admit /x/root2/f (a string-prefix check would).
  assert.match(await refusal(path.join(base, 'root2', 'f'), [root]), /is outside the allowed roots/);
  assert.match(await refusal(`${root}2/f`, [`${root}/`]), /is outside the allowed roots/);
});

test('the root itself is not a destination', async (t) => {
  const { root } = await roots(t);
  assert.match(await refusal(root, [root]), /is outside the allowed roots/);
});

test('a relative root admits nothing', async (t) => {
  const { root } = await roots(t);
  const rel = path.relative(process.cwd(), root);
  assert.match(await refusal(path.join(root, 'f'), [rel]), /is outside the allowed roots/);
});

test('a symlinked parent directory pointing outside the root is refused', async (t) => {
  const { base, root } = await roots(t);
  await symlink(path.join(base, 'outside'), path.join(root, 'escape'));
  const reason = await refusal(path.join(root, 'escape', 'f'), [root]);
  assert.match(reason, /goes through a symlink/);
  assert.ok(reason.includes(`(to "${path.join(base, 'outside')}")`), reason);
});

test('a symlinked parent directory pointing inside the root is refused too', async (t) => {
  const { root } = await roots(t);
  await symlink(path.join(root, 'sub'), path.join(root, 'alias'));
  assert.match(await refusal(path.join(root, 'alias', 'f'), [root]), /goes through a symlink/);
});

test('a symlink at the destination is refused even when it points to a file inside the root', async (t) => {
  const { root } = await roots(t);
  await writeFile(path.join(root, 'sub', 'real.conf'), 'x');
  await symlink(path.join(root, 'sub', 'real.conf'), path.join(root, 'link.conf'));
  assert.match(await refusal(path.join(root, 'link.conf'), [root]), /is a symlink; canopy does not write/);
});

test('a dangling symlink at the destination is refused', async (t) => {
  const { root } = await roots(t);
  await symlink(path.join(root, 'nowhere'), path.join(root, 'dangling'));
  assert.match(await refusal(path.join(root, 'dangling'), [root]), /is a symlink/);
});

test('a directory at the destination is refused', async (t) => {
  const { root } = await roots(t);
  assert.match(await refusal(path.join(root, 'sub'), [root]), /exists and is not a regular file/);
});

test('a missing parent directory is refused with "create it first"', async (t) => {
  const { root } = await roots(t);
  const reason = await refusal(path.join(root, 'missing', 'f'), [root]);
  assert.match(reason, /its directory ".*\/missing" does not exist; create it first/);
});

test('a regular file used as a parent directory is refused', async (t) => {
  const { root } = await roots(t);
  await writeFile(path.join(root, 'plain'), 'x');
  assert.match(
    await refusal(path.join(root, 'plain', 'f'), [root]),
    /has a path component that is not a directory/,
  );
});

test('a root that is itself a symlink admits destinations below it', async (t) => {
  const { base, root } = await roots(t);
  const linkRoot = path.join(base, 'link-root');
  await symlink(root, linkRoot);
  const r = await resolveDest(path.join(linkRoot, 'sub', 'f'), [linkRoot]);
  assert.deepEqual(r, { ok: true, path: path.join(linkRoot, 'sub', 'f'), dir: path.join(linkRoot, 'sub') });
});

test('a symlinked root nested in another root is accepted whatever the order of roots', async (t) => {
  const { base, root } = await roots(t);
  const linkRoot = path.join(root, 'data');
  await symlink(path.join(base, 'outside'), linkRoot);
  const dest = path.join(linkRoot, 'f');
  assert.equal((await resolveDest(dest, [linkRoot, root])).ok, true);
  // Adding the broader root first must not take away what linkRoot allows.
  assert.equal((await resolveDest(dest, [root, linkRoot])).ok, true);
});

// ------------------------------------------------------------ installFile

test('installing a new file writes the content with mode 0644 and no temp file', async (t) => {
  const { root } = await roots(t);
  const dest = path.join(root, 'app.conf');
  const r = await install(dest, 'hello\n', path.join(root, '..', 'backups'));
  assert.deepEqual(r, { oldMd5: null, newMd5: md5Of('hello\n') });
  assert.equal(await readFile(dest, 'utf8'), 'hello\n');
  assert.equal((await stat(dest)).mode & 0o7777, 0o644);
  assert.deepEqual(await tempsIn(root), []);
});

test('an explicit mode is applied, including special bits when set-id files are allowed', async (t) => {
  const { root } = await roots(t);
  await install(path.join(root, 'a'), 'a', root, { mode: 0o600 });
  await install(path.join(root, 'b'), 'b', root, { mode: 0o4750, allowSetid: true });
  await install(path.join(root, 'c'), 'c', root, { mode: 0o1755 });
  assert.equal((await stat(path.join(root, 'a'))).mode & 0o7777, 0o600);
  assert.equal((await stat(path.join(root, 'b'))).mode & 0o7777, 0o4750);
  assert.equal((await stat(path.join(root, 'c'))).mode & 0o7777, 0o1755);
});

test('a setuid or setgid mode is refused unless allowed, asked for or kept from the file there; nothing changes', async (t) => {
  const { root } = await roots(t);
  for (const mode of [0o4755, 0o2755, 0o6711]) {
    const dest = path.join(root, `new-${mode.toString(8)}`);
    await assert.rejects(install(dest, 'x', root, { mode }), (err: unknown) => {
      assert.ok(isCanopyError(err, 'AGENT_SETID_REFUSED'), String(err));
      assert.match(
        err.message,
        new RegExp(`${dest}: mode 0${mode.toString(8)} is setuid/setgid.*allow_setid: true`),
      );
      return true;
    });
    await assert.rejects(stat(dest), /ENOENT/);
  }
  // An existing set-id file keeps its mode when none is given: replacing its content is refused too.
  const suid = path.join(root, 'tool');
  await writeFile(suid, 'old');
  await chmod(suid, 0o4755);
  await assert.rejects(install(suid, 'new', root), /tool: mode 04755 is setuid\/setgid/);
  assert.equal(await readFile(suid, 'utf8'), 'old');
  assert.equal((await stat(suid)).mode & 0o7777, 0o4755);
  // Asking for a plain mode replaces it.
  await install(suid, 'new', root, { mode: 0o755 });
  assert.equal((await stat(suid)).mode & 0o7777, 0o755);
  assert.deepEqual(await tempsIn(root), []);
});

test('installing over an existing file keeps its mode when none is given', async (t) => {
  const { root } = await roots(t);
  const dest = path.join(root, 'secret.conf');
  await writeFile(dest, 'old');
  await chmod(dest, 0o640);
  const r = await install(dest, 'new', root);
  assert.equal(r.oldMd5, md5Of('old'));
  assert.equal(await readFile(dest, 'utf8'), 'new');
  assert.equal((await stat(dest)).mode & 0o7777, 0o640);
});

test('an explicit mode overrides the existing file mode', async (t) => {
  const { root } = await roots(t);
  const dest = path.join(root, 'f');
  await writeFile(dest, 'old');
  await chmod(dest, 0o600);
  await install(dest, 'new', root, { mode: 0o755 });
  assert.equal((await stat(dest)).mode & 0o7777, 0o755);
});

test('the install replaces the file by rename: the inode changes', async (t) => {
  const { root } = await roots(t);
  const dest = path.join(root, 'f');
  await writeFile(dest, 'old');
  const before = (await stat(dest)).ino;
  await install(dest, 'new', root);
  assert.notEqual((await stat(dest)).ino, before);
});

test('an empty and a binary content are installed byte for byte', async (t) => {
  const { root } = await roots(t);
  const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  await install(path.join(root, 'bin'), bytes, root);
  await install(path.join(root, 'empty'), Buffer.alloc(0), root);
  assert.deepEqual(await readFile(path.join(root, 'bin')), bytes);
  assert.equal((await stat(path.join(root, 'empty'))).size, 0);
});

test('an MD5 mismatch installs nothing and leaves no temp file', async (t) => {
  const { root } = await roots(t);
  const dest = path.join(root, 'f');
  await writeFile(dest, 'old');
  const ino = (await stat(dest)).ino;
  const err = await rejectsWith(
    installFile({ dest, content: Buffer.from('new'), md5: md5Of('other'), backupDir: root }),
    'TRANSFER_DIGEST_MISMATCH',
  );
  assert.ok(err.message.includes(`has MD5 ${md5Of('new')}, expected ${md5Of('other')}`), err.message);
  assert.equal(await readFile(dest, 'utf8'), 'old');
  assert.equal((await stat(dest)).ino, ino);
  assert.deepEqual(await tempsIn(root), []);
});

test('an MD5 mismatch for a new destination creates no file', async (t) => {
  const { root } = await roots(t);
  const dest = path.join(root, 'f');
  await rejectsWith(
    installFile({ dest, content: Buffer.from('x'), md5: '0'.repeat(32), backupDir: root }),
    'TRANSFER_DIGEST_MISMATCH',
  );
  assert.deepEqual(await readdir(root), ['sub']);
});

test('validate sees the new content, mode and a temp path beside the destination', async (t) => {
  const { root } = await roots(t);
  const dest = path.join(root, 'nginx.conf');
  await writeFile(dest, 'old');
  const seen: { dir: string; name: string; text: string; mode: number; destText: string }[] = [];
  await install(dest, 'new', root, {
    mode: 0o640,
    validate: async (temp) => {
      seen.push({
        dir: path.dirname(temp),
        name: path.basename(temp),
        text: await readFile(temp, 'utf8'),
        mode: (await stat(temp)).mode & 0o7777,
        destText: await readFile(dest, 'utf8'),
      });
      return { ok: true, output: '' };
    },
  });
  assert.equal(seen.length, 1);
  const [s] = seen;
  assert.equal(s?.dir, root);
  assert.match(s?.name ?? '', /^\.nginx\.conf\.canopy-tmp-[0-9a-f]{12}$/);
  assert.equal(s?.text, 'new');
  assert.equal(s?.mode, 0o640);
  assert.equal(s?.destText, 'old', 'the destination changed before validate passed');
  assert.equal(await readFile(dest, 'utf8'), 'new');
});

test('a failing validate leaves the old content and inode and no temp file', async (t) => {
  const { root } = await roots(t);
  const dest = path.join(root, 'nginx.conf');
  await writeFile(dest, 'old');
  const ino = (await stat(dest)).ino;
  const err = await rejectsWith(
    install(dest, 'broken', root, {
      backup: true,
      backupDir: path.join(root, '..', 'backups'),
      validate: async () => ({ ok: false, output: 'nginx: [emerg] unexpected "}"\n' }),
    }),
    'PUSH_VALIDATE_FAILED',
  );
  assert.match(err.message, /the old file is unchanged:\nnginx: \[emerg\] unexpected "}"$/);
  assert.equal(await readFile(dest, 'utf8'), 'old');
  assert.equal((await stat(dest)).ino, ino);
  assert.deepEqual(await tempsIn(root), []);
  // Nothing was backed up either: a rollback has nothing to restore.
  await rejectsWith(rollback(dest, path.join(root, '..', 'backups')), 'PUSH_NO_BACKUP');
});

test('a validate that throws removes the temp file and the error reaches the caller', async (t) => {
  const { root } = await roots(t);
  const dest = path.join(root, 'f');
  await writeFile(dest, 'old');
  await assert.rejects(
    install(dest, 'new', root, {
      validate: async () => {
        throw new Error('validator crashed');
      },
    }),
    /validator crashed/,
  );
  assert.equal(await readFile(dest, 'utf8'), 'old');
  assert.deepEqual(await tempsIn(root), []);
});

test('a failing validate on a new destination creates no file', async (t) => {
  const { root } = await roots(t);
  const dest = path.join(root, 'new.conf');
  await rejectsWith(
    install(dest, 'x', root, { validate: async () => ({ ok: false, output: 'no' }) }),
    'PUSH_VALIDATE_FAILED',
  );
  assert.deepEqual(await readdir(root), ['sub']);
});

test('a backup that cannot be written installs nothing and removes the temp file', async (t) => {
  const { base, root } = await roots(t);
  const dest = path.join(root, 'f');
  await writeFile(dest, 'old');
  await writeFile(path.join(base, 'not-a-dir'), '');
  await assert.rejects(install(dest, 'new', path.join(base, 'not-a-dir'), { backup: true }), {
    code: 'ENOTDIR',
  });
  assert.equal(await readFile(dest, 'utf8'), 'old');
  assert.deepEqual(await tempsIn(root), []);
});

test('a rename that fails (a directory at dest) removes the temp file', async (t) => {
  const { root } = await roots(t);
  const dest = path.join(root, 'sub');
  await writeFile(path.join(root, 'sub', 'keep'), 'k');
  const st = await stat(root);
  // A stale `previous` (as a caller may pass) gets the install as far as the rename.
  const previous = { md5: md5Of('k'), size: 1, mode: 0o644, uid: st.uid, gid: st.gid, ino: 1, mtimeMs: 0 };
  let validated = false;
  const validate = async () => {
    validated = true;
    return { ok: true, output: '' };
  };
  await assert.rejects(install(dest, 'new', root, { previous, validate }), { code: 'EISDIR' });
  assert.ok(validated, 'the install failed before the rename');
  assert.deepEqual(await tempsIn(root), []);
  assert.equal(await readFile(path.join(root, 'sub', 'keep'), 'utf8'), 'k');
});

test('a missing directory fails the install without creating it', async (t) => {
  const { root } = await roots(t);
  await assert.rejects(install(path.join(root, 'missing', 'f'), 'x', root), { code: 'ENOENT' });
  assert.deepEqual(await readdir(root), ['sub']);
});

test('previous, when given, is reported as the old MD5 instead of reading the file', async (t) => {
  const { root } = await roots(t);
  const dest = path.join(root, 'f');
  await writeFile(dest, 'old');
  const st = await new Md5Cache().state(dest);
  assert.ok(st);
  const r = await install(dest, 'new', root, { previous: { ...st, md5: 'f'.repeat(32), mode: 0o600 } });
  assert.equal(r.oldMd5, 'f'.repeat(32));
  assert.equal((await stat(dest)).mode & 0o7777, 0o600, 'mode of previous not used');
});

test('owner and group are applied to a new file', { skip: !asRoot && 'needs root' }, async (t) => {
  const { root } = await roots(t);
  const dest = path.join(root, 'f');
  await install(dest, 'x', root, { uid: 1234, gid: 2345 });
  const st = await stat(dest);
  assert.deepEqual([st.uid, st.gid], [1234, 2345]);
});

test('installing over a file keeps its owner and group', { skip: !asRoot && 'needs root' }, async (t) => {
  const { root } = await roots(t);
  const dest = path.join(root, 'f');
  await writeFile(dest, 'old');
  await chown(dest, 1234, 2345);
  await install(dest, 'new', root);
  let st = await stat(dest);
  assert.deepEqual([st.uid, st.gid], [1234, 2345]);
  // Only the group given: the owner stays.
  await install(dest, 'newer', root, { gid: 3456 });
  st = await stat(dest);
  assert.deepEqual([st.uid, st.gid], [1234, 3456]);
});

test('a new file without owner given belongs to the agent', async (t) => {
  const { root } = await roots(t);
  const dest = path.join(root, 'f');
  await install(dest, 'x', root);
  const st = await stat(dest);
  assert.deepEqual([st.uid, st.gid], [process.getuid?.(), process.getgid?.()]);
});

// ------------------------------------------------------------ backups and rollback

/** Date.now() under the test's control, so backups get distinct, ordered names. */
function fakeClock(t: TestContext, start = 1_700_000_000_000): { tick: () => void } {
  let now = start;
  t.mock.method(Date, 'now', () => now);
  return {
    tick: () => {
      now += 1000;
    },
  };
}

test('backup keeps the previous file outside the destination directory', async (t) => {
  const { base, root } = await roots(t);
  const backups = path.join(base, 'backups');
  const dest = path.join(root, 'app.conf');
  await writeFile(dest, 'v1');
  const r = await install(dest, 'v2', backups, { backup: true });
  assert.ok(r.backup, 'no backup reported');
  assert.ok(r.backup.startsWith(`${backups}${path.sep}`), r.backup);
  assert.ok(path.basename(r.backup).endsWith(`-${md5Of('v1')}`), r.backup);
  assert.equal(await readFile(r.backup, 'utf8'), 'v1');
  assert.deepEqual((await readdir(root)).sort(), ['app.conf', 'sub']);
});

test('no backup is made of a destination that did not exist, or without backup: true', async (t) => {
  const { base, root } = await roots(t);
  const backups = path.join(base, 'backups');
  const dest = path.join(root, 'f');
  const first = await install(dest, 'v1', backups, { backup: true });
  assert.equal(first.backup, undefined);
  const second = await install(dest, 'v2', backups);
  assert.equal(second.backup, undefined);
  await rejectsWith(rollback(dest, backups), 'PUSH_NO_BACKUP');
});

test('rollback restores the newest backup, removes it, and a second rollback goes one further', async (t) => {
  const { base, root } = await roots(t);
  const clock = fakeClock(t);
  const backups = path.join(base, 'backups');
  const dest = path.join(root, 'app.conf');
  for (const v of ['v1', 'v2', 'v3']) {
    await install(dest, v, backups, { backup: true });
    clock.tick();
  }
  const r1 = await rollback(dest, backups);
  assert.equal(await readFile(dest, 'utf8'), 'v2');
  assert.deepEqual([r1.oldMd5, r1.newMd5], [md5Of('v3'), md5Of('v2')]);
  await assert.rejects(stat(r1.restoredFrom), { code: 'ENOENT' });

  const r2 = await rollback(dest, backups);
  assert.equal(await readFile(dest, 'utf8'), 'v1');
  assert.deepEqual([r2.oldMd5, r2.newMd5], [md5Of('v2'), md5Of('v1')]);

  const err = await rejectsWith(rollback(dest, backups), 'PUSH_NO_BACKUP');
  assert.ok(err.message.includes(`no backup of ${dest}`), err.message);
  assert.equal(await readFile(dest, 'utf8'), 'v1');
  assert.deepEqual(await tempsIn(root), []);
});

test("rollback restores the old file's permission bits along with its content", async (t) => {
  const { base, root } = await roots(t);
  const clock = fakeClock(t);
  const backups = path.join(base, 'backups');
  const dest = path.join(root, 'f');
  await install(dest, 'v1', backups, { mode: 0o600 });
  clock.tick();
  await install(dest, 'v2', backups, { backup: true, mode: 0o640 });
  await rollback(dest, backups);
  assert.equal(await readFile(dest, 'utf8'), 'v1');
  assert.equal((await stat(dest)).mode & 0o7777, 0o600);
});

test('a destination swapped for a symlink, or for another file, while it is replaced is not backed up through it', async (t) => {
  const { base, root } = await roots(t);
  const backups = path.join(base, 'backups');
  const secret = path.join(base, 'outside-secret');
  await writeFile(secret, 'TOPSECRET');
  const dest = path.join(root, 'app.conf');
  await writeFile(dest, 'old');
  const previous = await fileState(dest);
  assert.ok(previous);
  // Between the check (previous) and the backup, the file becomes a symlink to a file outside.
  await unlink(dest);
  await symlink(secret, dest);
  const content = Buffer.from('new');
  await assert.rejects(
    installFile({ dest, content, md5: md5Of(content), backupDir: backups, backup: true, previous }),
    /app\.conf is now a symlink: it changed while canopy was replacing it/,
  );
  assert.equal((await lstat(dest)).isSymbolicLink(), true, 'the symlink was replaced');
  const kept = async () =>
    (await readdir(backups, { recursive: true }).catch(() => [])).filter((n) => /\d{14}-/.test(n));
  assert.deepEqual(await kept(), [], 'a backup was taken through the symlink');
  // Another file at the path (another inode) is not taken for the one checked.
  await unlink(dest);
  await writeFile(dest, 'someone else');
  await assert.rejects(
    installFile({ dest, content, md5: md5Of(content), backupDir: backups, backup: true, previous }),
    /is now another file/,
  );
  assert.equal(await readFile(dest, 'utf8'), 'someone else');
  assert.deepEqual(await kept(), []);
  assert.deepEqual(await tempsIn(root), []);
});

test('rollback of a destination that was deleted recreates it', async (t) => {
  const { base, root } = await roots(t);
  const backups = path.join(base, 'backups');
  const dest = path.join(root, 'f');
  await writeFile(dest, 'v1');
  await install(dest, 'v2', backups, { backup: true });
  rmSync(dest);
  const r = await rollback(dest, backups);
  assert.equal(r.oldMd5, null);
  assert.equal(await readFile(dest, 'utf8'), 'v1');
});

test('backups of different destinations are kept apart', async (t) => {
  const { base, root } = await roots(t);
  const backups = path.join(base, 'backups');
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  await writeFile(a, 'a1');
  await writeFile(b, 'b1');
  await install(a, 'a2', backups, { backup: true });
  await install(b, 'b2', backups, { backup: true });
  await rollback(b, backups);
  assert.equal(await readFile(b, 'utf8'), 'b1');
  assert.equal(await readFile(a, 'utf8'), 'a2');
  await rollback(a, backups);
  assert.equal(await readFile(a, 'utf8'), 'a1');
});

test('at most three backups are kept, the oldest dropped first', async (t) => {
  const { base, root } = await roots(t);
  const clock = fakeClock(t);
  const backups = path.join(base, 'backups');
  const dest = path.join(root, 'f');
  for (const v of ['v1', 'v2', 'v3', 'v4', 'v5', 'v6']) {
    await install(dest, v, backups, { backup: true });
    clock.tick();
  }
  const [home] = await readdir(backups);
  assert.ok(home);
  const kept = (await readdir(path.join(backups, home))).filter((n) => n !== 'dest');
  assert.equal(kept.length, 3, kept.join(' '));
  assert.equal(await readFile(path.join(backups, home, 'dest'), 'utf8'), dest);
  const restored: string[] = [];
  for (let i = 0; i < 3; i++) {
    await rollback(dest, backups);
    restored.push(await readFile(dest, 'utf8'));
  }
  assert.deepEqual(restored, ['v5', 'v4', 'v3']);
  await rejectsWith(rollback(dest, backups), 'PUSH_NO_BACKUP');
});

test('rollback restores the newest backup even when two were made in the same millisecond', async (t) => {
  const { base, root } = await roots(t);
  fakeClock(t); // frozen: every backup gets the same timestamp
  const backups = path.join(base, 'backups');
  const dest = path.join(root, 'f');
  // md5('v1') = 6654c7..., md5('v2') = 1b2676...: sorted by name, v1's backup comes last.
  assert.ok(md5Of('v1') > md5Of('v2'));
  for (const v of ['v1', 'v2', 'v3']) await install(dest, v, backups, { backup: true });
  await rollback(dest, backups);
  assert.equal(await readFile(dest, 'utf8'), 'v2');
});

// ------------------------------------------------------------ Md5Cache

const LATER = 10_000;

/** Touches the inode until its ctime differs from `since` (the kernel's clock is coarse). */
async function untilCtimeMoves(file: string, since: bigint): Promise<void> {
  const deadline = Date.now() + 2000;
  while ((await stat(file, { bigint: true })).ctimeNs === since) {
    assert.ok(Date.now() < deadline, 'ctime did not change');
    await chmod(file, 0o644);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

test('state reports md5, size, mode, owner, inode and mtime as stat does', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'f');
  await writeFile(file, 'hello world');
  await chmod(file, 0o2750);
  const st = await stat(file, { bigint: true });
  const s = await new Md5Cache().state(file);
  assert.deepEqual(s, {
    md5: md5Of('hello world'),
    size: 11,
    mode: 0o2750,
    uid: Number(st.uid),
    gid: Number(st.gid),
    ino: Number(st.ino),
    mtimeMs: Number(st.mtimeNs / 1_000_000n),
  });
});

test('state of a missing file is undefined and counts neither hit nor miss', async (t) => {
  const dir = scratch(t);
  const cache = new Md5Cache();
  assert.equal(await cache.state(path.join(dir, 'none')), undefined);
  assert.deepEqual(cache.stats, { hits: 0, misses: 0, size: 0 });
});

test('a file unchanged for more than 2 s is cached: the second state is a hit', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'f');
  await writeFile(file, 'content');
  const cache = new Md5Cache();
  const now = Date.now() + LATER;
  const first = await cache.state(file, now);
  const second = await cache.state(file, now);
  assert.deepEqual(cache.stats, { hits: 1, misses: 1, size: 1 });
  assert.deepEqual(second, first);
  assert.equal(second?.md5, md5Of('content'));
});

test('a file changed within the last 2 s is racy and not cached', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'f');
  await writeFile(file, 'content');
  const cache = new Md5Cache();
  const now = Date.now() + 1500;
  await cache.state(file, now);
  await cache.state(file, now);
  assert.deepEqual(cache.stats, { hits: 0, misses: 2, size: 0 });
});

test('a racy file becomes cacheable once 2 s have passed', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'f');
  await writeFile(file, 'content');
  const cache = new Md5Cache();
  await cache.state(file);
  await cache.state(file, Date.now() + LATER);
  await cache.state(file, Date.now() + LATER);
  assert.deepEqual(cache.stats, { hits: 1, misses: 2, size: 1 });
});

test('backdating mtime does not make a just-changed file cacheable: ctime counts', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'f');
  await writeFile(file, 'content');
  await utimes(file, new Date(2020, 0, 1), new Date(2020, 0, 1));
  const cache = new Md5Cache();
  await cache.state(file);
  await cache.state(file);
  assert.deepEqual(cache.stats, { hits: 0, misses: 2, size: 0 });
});

test('new content of the same size and mtime is re-read (ctime differs)', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'f');
  await writeFile(file, 'aaaa');
  const old = new Date(2020, 0, 1);
  await utimes(file, old, old);
  const cache = new Md5Cache();
  const now = Date.now() + LATER;
  assert.equal((await cache.state(file, now))?.md5, md5Of('aaaa'));
  const first = (await stat(file, { bigint: true })).ctimeNs;
  await writeFile(file, 'bbbb');
  await utimes(file, old, old);
  await untilCtimeMoves(file, first);
  assert.equal((await cache.state(file, now + LATER))?.md5, md5Of('bbbb'));
  assert.deepEqual(cache.stats, { hits: 0, misses: 2, size: 1 });
});

test('a file replaced by rename is re-read even with the same size and mtime', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'f');
  const old = new Date(2020, 0, 1);
  await writeFile(file, 'aaaa');
  await utimes(file, old, old);
  const cache = new Md5Cache();
  const now = Date.now() + LATER;
  await cache.state(file, now);
  await writeFile(path.join(dir, 'g'), 'bbbb');
  await utimes(path.join(dir, 'g'), old, old);
  await rename(path.join(dir, 'g'), file);
  const s = await cache.state(file, now);
  assert.equal(s?.md5, md5Of('bbbb'));
  assert.deepEqual(cache.stats, { hits: 0, misses: 2, size: 1 });
});

test('forget drops a cached entry', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'f');
  await writeFile(file, 'x');
  const cache = new Md5Cache();
  const now = Date.now() + LATER;
  await cache.state(file, now);
  cache.forget(file);
  assert.equal(cache.stats.size, 0);
  await cache.state(file, now);
  assert.deepEqual(cache.stats, { hits: 0, misses: 2, size: 1 });
});

test('the cache holds at most max entries', async (t) => {
  const dir = scratch(t);
  const cache = new Md5Cache(2);
  const now = Date.now() + LATER;
  for (const n of ['a', 'b', 'c']) {
    await writeFile(path.join(dir, n), n);
    await cache.state(path.join(dir, n), now);
  }
  assert.equal(cache.stats.size, 2);
  // The oldest entry went: a is read again, c is still cached.
  await cache.state(path.join(dir, 'c'), now);
  await cache.state(path.join(dir, 'a'), now);
  assert.deepEqual(cache.stats, { hits: 1, misses: 4, size: 2 });
});

test('md5File streams the same digest as md5Of', async (t) => {
  const dir = scratch(t);
  const data = Buffer.alloc(3 * 1024 * 1024 + 7, 'abc');
  await writeFile(path.join(dir, 'big'), data);
  assert.equal(await md5File(path.join(dir, 'big')), md5Of(data));
  assert.equal(md5Of(''), 'd41d8cd98f00b204e9800998ecf8427e');
});

// ------------------------------------------------------------ metaDiffers and fixMeta

test('metaDiffers compares only what is asked for', async (t) => {
  const dir = scratch(t);
  await writeFile(path.join(dir, 'f'), 'x');
  const st = await new Md5Cache().state(path.join(dir, 'f'));
  assert.ok(st);
  const s = { ...st, mode: 0o644, uid: 10, gid: 20 };
  assert.equal(metaDiffers(s, {}), false);
  assert.equal(metaDiffers(s, { mode: 0o644, uid: 10, gid: 20 }), false);
  assert.equal(metaDiffers(s, { mode: 0o600 }), true);
  assert.equal(metaDiffers(s, { uid: 11 }), true);
  assert.equal(metaDiffers(s, { gid: 21 }), true);
  assert.equal(metaDiffers(s, { uid: 0 }), true);
});

test('fixMeta changes the mode in place: content and inode stay', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'f');
  await writeFile(file, 'keep');
  await chmod(file, 0o600);
  const before = await new Md5Cache().state(file);
  assert.ok(before);
  await fixMeta(file, { mode: 0o640 }, before);
  const after = await stat(file);
  assert.equal(after.mode & 0o7777, 0o640);
  assert.equal(after.ino, before.ino);
  assert.equal(await readFile(file, 'utf8'), 'keep');
});

test('fixMeta on a file with another hard link (outside the roots, say) replaces it by a copy; the other name keeps its mode', async (t) => {
  const dir = scratch(t);
  const outside = path.join(dir, 'outside-secret');
  await writeFile(outside, 'keep');
  await chmod(outside, 0o600);
  const file = path.join(dir, 'linked.conf');
  await link(outside, file);
  const before = await new Md5Cache().state(file);
  assert.ok(before);
  await fixMeta(file, { mode: 0o666 }, before);
  assert.equal((await stat(outside)).mode & 0o7777, 0o600, 'the other link changed mode');
  assert.equal((await stat(outside)).nlink, 1);
  const after = await stat(file);
  assert.equal(after.mode & 0o7777, 0o666);
  assert.notEqual(after.ino, before.ino);
  assert.equal(await readFile(file, 'utf8'), 'keep');
  assert.deepEqual(await tempsIn(dir), []);
});

test('fixMeta refuses a destination that became a symlink', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'f');
  await writeFile(file, 'x');
  const before = await new Md5Cache().state(file);
  assert.ok(before);
  const target = path.join(dir, 'target');
  await writeFile(target, 'y');
  await chmod(target, 0o600);
  await unlink(file);
  await symlink(target, file);
  await assert.rejects(fixMeta(file, { mode: 0o644 }, before), /f is now a symlink/);
  assert.equal((await stat(target)).mode & 0o7777, 0o600);
});

test('fixMeta without a mode keeps the previous mode', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'f');
  await writeFile(file, 'x');
  await chmod(file, 0o600);
  const before = await new Md5Cache().state(file);
  assert.ok(before);
  await chmod(file, 0o666);
  await fixMeta(file, {}, before);
  assert.equal((await stat(file)).mode & 0o7777, 0o600);
});

test('fixMeta sets the owner, keeping what is not given', { skip: !asRoot && 'needs root' }, async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'f');
  await writeFile(file, 'x');
  await chown(file, 1234, 2345);
  const before = await new Md5Cache().state(file);
  assert.ok(before);
  await fixMeta(file, { uid: 4321 }, before);
  const st = await stat(file);
  assert.deepEqual([st.uid, st.gid], [4321, 2345]);
});

// ------------------------------------------------------------ removeStaleTemps

test('removeStaleTemps deletes the temp files of that destination only', async (t) => {
  const dir = scratch(t);
  const dest = path.join(dir, 'app.conf');
  await writeFile(dest, 'live');
  for (const n of [
    '.app.conf.canopy-tmp-aaaaaaaaaaaa',
    '.app.conf.canopy-tmp-bbbbbbbbbbbb',
    '.other.conf.canopy-tmp-cccccccccccc',
    '.app.conf.bak',
    'app.conf.canopy-tmp-dddddddddddd',
  ]) {
    await writeFile(path.join(dir, n), 'x');
  }
  const removed = await removeStaleTemps(dest);
  assert.deepEqual(removed.sort(), [
    path.join(dir, '.app.conf.canopy-tmp-aaaaaaaaaaaa'),
    path.join(dir, '.app.conf.canopy-tmp-bbbbbbbbbbbb'),
  ]);
  assert.deepEqual((await readdir(dir)).sort(), [
    '.app.conf.bak',
    '.other.conf.canopy-tmp-cccccccccccc',
    'app.conf',
    'app.conf.canopy-tmp-dddddddddddd',
  ]);
  assert.equal(await readFile(dest, 'utf8'), 'live');
});

test('removeStaleTemps matches the temp names installFile uses', async (t) => {
  const dir = scratch(t);
  const dest = path.join(dir, 'f.conf');
  let tempName = '';
  await install(dest, 'x', dir, {
    validate: async (temp) => {
      tempName = path.basename(temp);
      return { ok: true, output: '' };
    },
  });
  // What a process killed between write and rename would leave behind.
  await writeFile(path.join(dir, tempName), 'half');
  assert.deepEqual(await removeStaleTemps(dest), [path.join(dir, tempName)]);
  assert.deepEqual(await readdir(dir), ['f.conf']);
});

test('removeStaleTemps of a missing directory or with nothing to do returns []', async (t) => {
  const dir = scratch(t);
  assert.deepEqual(await removeStaleTemps(path.join(dir, 'missing', 'f')), []);
  await writeFile(path.join(dir, 'f'), 'x');
  assert.deepEqual(await removeStaleTemps(path.join(dir, 'f')), []);
});

test('commitInstall publishes a file assembled from chunks in tempPathFor(dest), keeping a backup', async (t) => {
  const dir = scratch(t);
  const src = path.join(dir, 'blob.bin');
  const data = Buffer.alloc(300 * 1024 + 7, 0);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31) % 251;
  await writeFile(src, data);
  const manifest = await buildManifest(src, { chunkSize: 64 * 1024 });
  const store = await ChunkStore.open(path.join(dir, 'store'), { quotaBytes: 10 * 1024 * 1024 });
  t.after(() => store.close());
  for (const [i, digest] of manifest.chunks.entries()) {
    await store.put(digest, data.subarray(i * 64 * 1024, (i + 1) * 64 * 1024));
  }
  const dest = path.join(dir, 'image.bin');
  await writeFile(dest, 'old image\n');
  const temp = tempPathFor(dest);
  assert.equal(path.dirname(temp), dir);
  await store.assemble(manifest, temp);
  const r = await commitInstall(temp, manifest.md5, {
    dest,
    mode: 0o600,
    backup: true,
    backupDir: path.join(dir, 'b'),
  });
  assert.deepEqual(await readFile(dest), data);
  assert.equal((await stat(dest)).mode & 0o7777, 0o600);
  assert.equal(r.newMd5, manifest.md5);
  assert.equal(r.oldMd5, md5Of('old image\n'));
  assert.deepEqual(await tempsIn(dir), []);
  await rollback(dest, path.join(dir, 'b'));
  assert.equal(await readFile(dest, 'utf8'), 'old image\n');
});

test('commitInstall removes the temporary file and keeps the old one when validate refuses', async (t) => {
  const dir = scratch(t);
  const dest = path.join(dir, 'x.conf');
  await writeFile(dest, 'old\n');
  const temp = tempPathFor(dest);
  await writeFile(temp, 'new\n');
  const err = await rejectsWith(
    commitInstall(temp, md5Of('new\n'), {
      dest,
      backupDir: path.join(dir, 'b'),
      validate: async () => ({ ok: false, output: 'no' }),
    }),
    'PUSH_VALIDATE_FAILED',
  );
  assert.match(err.message, /old file is unchanged/);
  assert.equal(await readFile(dest, 'utf8'), 'old\n');
  assert.deepEqual(await tempsIn(dir), []);
});

test('a directory swapped for a symlink after the check: recheckDest refuses it, and commitInstall refuses the rename', async (t) => {
  const { base, root } = await roots(t);
  const outside = path.join(base, 'outside');
  const dest = path.join(root, 'sub', 'big.bin');
  assert.equal((await resolveDest(dest, [root])).ok, true);
  const swap = async () => {
    await rename(path.join(root, 'sub'), path.join(root, 'sub.real'));
    await symlink(outside, path.join(root, 'sub'));
  };
  // Swapped before the file is written (during a download): refused before anything is written.
  await swap();
  await assert.rejects(recheckDest(dest, [root]), (err: unknown) => {
    assert.ok(isCanopyError(err, 'PUSH_DEST_REFUSED'), String(err));
    assert.match(
      err.message,
      /goes through a symlink.*it changed after it was first checked, so nothing was written/,
    );
    return true;
  });
  // Swapped while the install validates: the rename is refused, nothing lands outside.
  await unlink(path.join(root, 'sub'));
  await rename(path.join(root, 'sub.real'), path.join(root, 'sub'));
  const content = Buffer.from('payload');
  await assert.rejects(
    installFile({
      dest,
      content,
      md5: md5Of(content),
      backupDir: path.join(base, 'backups'),
      validate: async () => {
        await swap();
        return { ok: true, output: '' };
      },
    }),
    /sub was replaced: it changed while canopy was replacing it/,
  );
  assert.deepEqual(await readdir(outside), []);
});
