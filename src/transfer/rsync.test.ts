/**
 * rsync over the peer channel, end to end on loopback: the system rsync as
 * client, `canopy peer-rsh` (the real CLI subcommand, run by node through
 * tsx) as its remote shell, a real PeerServer with certificates of a CA made
 * here, and the system rsync as `--server --sender` on the serving side. Also
 * the server's command checks on their own, and crafted requests that no
 * rsync client would send. Every refusal is checked on both sides: what the
 * puller is told, and that the server started no rsync.
 */
import 'reflect-metadata';

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { type TestContext, test } from 'node:test';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { isCanopyError } from '../errors/index.js';
import { type CertAndKey, createCa, createKeyAndCsr, normalizeSerial, signCsr } from '../pki/index.js';
import { type PeerLog, PeerServer, type PeerServerOptions } from './peer-server.js';
import { runPeerRsync } from './peer-stream.js';
import {
  decodeReply,
  encodeFrame,
  FrameDecoder,
  PEER_ALPN,
  PEER_CODES,
  type PeerReply,
} from './peer-wire.js';
import { RateLimiter } from './rate-limit.js';
import {
  bwlimitKiB,
  PARTIAL_DIR,
  Progress2Reader,
  parseRsyncStats,
  parseServerCommand,
  rsyncClientArgv,
  type SyncFromPeerOptions,
  serverSpawn,
  syncFromPeer,
  treeFilter,
} from './rsync.js';

const HOUR = 3_600_000;
const MiB = 1024 * 1024;
/** The real `canopy` CLI, run from source: rsync runs `canopy peer-rsh` through this. */
const CANOPY = [
  process.execPath,
  '--import',
  import.meta.resolve('tsx'),
  fileURLToPath(new URL('../cli/main.ts', import.meta.url)),
];
/** What rsync 3.x clients send for `rsync -a host:PATH` (captured from a recording remote shell). */
const PULL = ['rsync', '--server', '--sender', '-logDtpre.iLsfxCIvu', '.'];

async function agentCert(ca: CertAndKey, name: string): Promise<CertAndKey> {
  const { keyPem, csrPem } = await createKeyAndCsr(name);
  const { certPem } = await signCsr(ca, csrPem, { name, ttlMs: HOUR });
  return { certPem, keyPem };
}

const ca = await createCa({ commonName: 'canopy test CA' });
const otherCa = await createCa({ commonName: 'canopy test CA' }); // same name, other key
const web01 = await agentCert(ca, 'web01'); // serves
const web02 = await agentCert(ca, 'web02'); // pulls
const impostor = await agentCert(otherCa, 'web02');

// --- fixtures

function tempDir(t: TestContext, prefix = 'canopy-rsync-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** An agent data directory holding identity.json as the agent writes it (name, url, CA, certificate, key). */
function dataDir(t: TestContext, name: string, cert: CertAndKey, caPem: string): string {
  const dir = join(tempDir(t, 'canopy agent data '), name); // a space: the --rsh command line must quote it
  mkdirSync(dir, { recursive: true });
  const identity = { name, url: 'https://127.0.0.1:1', caPem, ...cert };
  writeFileSync(join(dir, 'identity.json'), JSON.stringify(identity), { mode: 0o600 });
  return dir;
}

function recordingLog() {
  const lines: { level: string; event: string; fields: Record<string, unknown> }[] = [];
  const at = (level: string) => (fields: object, event: string) => {
    lines.push({ level, event, fields: fields as Record<string, unknown> });
  };
  const log: PeerLog = { debug: at('debug'), info: at('info'), warn: at('warn') };
  return { log, lines, events: (event: string) => lines.filter((l) => l.event === event) };
}

interface Harness {
  server: PeerServer;
  port: number;
  log: ReturnType<typeof recordingLog>;
}

/** web01's peer server: web02 may pull the trees in `trees` (id -> root). */
async function startServer(
  t: TestContext,
  trees: Record<string, string>,
  serve: Partial<PeerServerOptions> = {},
): Promise<Harness> {
  const log = recordingLog();
  const server = new PeerServer({
    identity: web01,
    caPem: ca.certPem,
    authorize: () => undefined,
    authorizeTree: (peer, tree) => {
      const root = peer === 'web02' && Object.hasOwn(trees, tree) ? trees[tree] : undefined;
      return root ? { root } : undefined;
    },
    isRevoked: () => false,
    log: log.log,
    ...serve,
  });
  const { port } = await server.listen(0, '127.0.0.1');
  t.after(() => server.close());
  return { server, port, log };
}

function pullOptions(
  port: number,
  data: string,
  o: Partial<SyncFromPeerOptions> & { localPath: string },
): SyncFromPeerOptions {
  return {
    peer: { name: 'web01', host: '127.0.0.1', port },
    tree: 't1',
    dataDir: data,
    canopy: CANOPY,
    ...o,
  };
}

/** Every entry under `dir` (type, permission bits, content or link target), by relative path. */
function snapshot(dir: string, skip: string[] = []): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (rel: string) => {
    for (const name of readdirSync(join(dir, rel)).sort()) {
      if (skip.includes(name)) continue;
      const path = join(dir, rel, name);
      const st = lstatSync(path);
      const mode = (st.mode & 0o7777).toString(8);
      const key = join(rel, name);
      if (st.isSymbolicLink()) out.set(key, `link -> ${readlinkSync(path)}`);
      else if (st.isDirectory()) {
        out.set(key, `dir ${mode}`);
        walk(key);
      } else out.set(key, `file ${mode} ${st.mtimeMs} ${readFileSync(path).toString('base64')}`);
    }
  };
  walk('');
  return out;
}

/** The biggest file anywhere under `dir`, hidden ones included (rsync's temp and partial files). */
function biggestFile(dir: string): number {
  let best = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) best = Math.max(best, lstatSync(join(entry.parentPath, entry.name)).size);
  }
  return best;
}

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function assertCanopy(code: string | string[], ...patterns: RegExp[]) {
  return (err: unknown) => {
    assert.ok(isCanopyError(err), `not a CanopyError: ${String(err)}`);
    assert.ok([code].flat().includes(err.code), `${err.code}: ${err.message}`);
    for (const p of patterns) assert.match(err.message, p);
    return true;
  };
}

// --- the server's command checks, on their own

test('the server accepts the command lines rsync clients send for a pull', () => {
  const lines = [
    [...PULL, 'some\\ dir/\\$\\(touch\\ x\\)/'],
    ['rsync', '--server', '--sender', '-logDtprce.LsfxCIvu', '.', 'sub/'],
    [
      'rsync',
      '--server',
      '--sender',
      '-lHogDtprze.LsfxCIvu',
      '--timeout=30',
      '--bwlimit=1000',
      '--numeric-ids',
      '.',
      '.',
    ],
    [
      'rsync',
      '--server',
      '--sender',
      '-logDtpre.iLsfxCIvu',
      '-B2048',
      '--inplace',
      '.',
      './-leading',
      '\\~x',
    ],
    ['rsync', '--server', '--sender', '-e31.0.iLsfx', '.'],
  ];
  for (const args of lines) assert.doesNotThrow(() => parseServerCommand(args), args.join(' '));
  assert.deepEqual(parseServerCommand(lines[0] as string[]).paths, ['some dir/$(touch x)/']);
  assert.deepEqual(parseServerCommand(lines[3] as string[]).paths, ['./-leading', '~x']);
});

test('the server refuses commands that write, run something else, follow links out or need a shell', () => {
  const cases: [string[], RegExp][] = [
    [['rsync', '--server', '-logDtpre.iLsfxCIvu', '.', 'x'], /not --server --sender.*write to this agent/],
    [
      ['sudo rsync', '--server', '--sender', '-logDtpre.iLsfxCIvu', '.', 'x'],
      /runs "sudo rsync".*--rsync-path/,
    ],
    [['sh', '-c', 'rsync --server --sender . x'], /runs "sh"/],
    [['rsync', '--server', '--sender', '-e', 'ssh', '.', 'x'], /-e in "-e"/],
    [['rsync', '--server', '--sender', '-le.iLsfx', '--rsync-path=/bin/sh', '.', 'x'], /--rsync-path/],
    [['rsync', '--server', '--sender', '-lL', '.', 'x'], /-L: .*follow symlinks/],
    [['rsync', '--server', '--sender', '-slogDtpre.iLsfxCIvu'], /-s: .*protect-args|no "\." argument/],
    [
      ['rsync', '--server', '--sender', '--remove-source-files', '.', 'x'],
      /delete files on the serving agent/,
    ],
    [['rsync', '--server', '--sender', '--files-from', '/etc/list', '.', 'x'], /--files-from/],
    [['rsync', '--server', '--sender', '--log-file=/tmp/x', '.', 'x'], /write a file/],
    [['rsync', '--server', '--sender', '--timeout=30;reboot', '.', 'x'], /--timeout needs =VALUE/],
    [['rsync', '--server', '--sender', '--daemon', '.', 'x'], /not an rsync daemon/],
    [[...PULL, 'x;touch y'], /unescaped ";"/],
    [[...PULL, '$(touch y)'], /unescaped "\$"/],
    [[...PULL, 'a b'], /unescaped " "/],
    [[...PULL, 'x*'], /unescaped "\*"/],
    [[...PULL, '~/x'], /starts with ~/],
    [[...PULL, 'x\\\ny'], /control character/],
    [[...PULL, 'x\\'], /trailing backslash/],
  ];
  for (const [args, pattern] of cases) {
    assert.throws(
      () => parseServerCommand(args),
      assertCanopy(PEER_CODES.forbidden, pattern),
      args.join(' '),
    );
  }
});

test('paths map into the tree: ".." and absolute paths outside and symlinks out are refused', async (t) => {
  const dir = tempDir(t);
  const root = join(dir, 'tree');
  mkdirSync(join(root, 'sub'), { recursive: true });
  writeFileSync(join(dir, 'secret'), 'outside');
  writeFileSync(join(root, 'sub', 'f'), 'inside');
  symlinkSync('../../secret', join(root, 'sub', 'escape'));
  symlinkSync('f', join(root, 'sub', 'ok'));
  const spawnFor = (path: string, r = root) => serverSpawn(parseServerCommand([...PULL, path]), r);
  assert.deepEqual(await spawnFor('sub/'), {
    cwd: root,
    argv: ['--server', '--sender', '-logDtpre.iLsfxCIvu', '--', '.', 'sub/'],
  });
  assert.deepEqual((await spawnFor('./sub//ok')).argv.at(-1), 'sub/ok');
  assert.deepEqual((await spawnFor(`${root}/sub`)).argv.at(-1), 'sub');
  assert.deepEqual((await serverSpawn(parseServerCommand(PULL), root)).argv.at(-1), '.');
  await assert.rejects(spawnFor('../secret'), assertCanopy(PEER_CODES.forbidden, /contains "\.\."/));
  await assert.rejects(spawnFor('sub/../../secret'), assertCanopy(PEER_CODES.forbidden, /contains "\.\."/));
  await assert.rejects(spawnFor('/etc/passwd'), assertCanopy(PEER_CODES.forbidden, /outside the tree/));
  await assert.rejects(spawnFor('sub/escape'), assertCanopy(PEER_CODES.forbidden, /through a symlink/));
  await assert.rejects(spawnFor('nope'), assertCanopy(PEER_CODES.missing, /does not exist in the tree/));
  // A tree that is one file: only the file itself, from the directory it is in.
  const file = join(root, 'sub', 'f');
  assert.deepEqual(await spawnFor('.', file), {
    cwd: join(root, 'sub'),
    argv: [...PULL.slice(1, 4), '--', '.', 'f'],
  });
  assert.equal((await spawnFor('f', file)).argv.at(-1), 'f');
  await assert.rejects(spawnFor('ok', file), assertCanopy(PEER_CODES.forbidden, /single file f/));
});

test('the client command quotes the remote shell for rsync and keeps the stats numbers plain', () => {
  const argv = rsyncClientArgv({
    peer: { name: 'web01', host: '::1', port: 7443 },
    tree: 't1',
    localPath: '/dst',
    dataDir: "/var/lib/it's here",
    canopy: ['/usr/bin/node', '/opt/canopy/main.js'],
    delete: true,
  });
  const rsh = argv[argv.indexOf('-e') + 1];
  assert.equal(
    rsh,
    "/usr/bin/node /opt/canopy/main.js peer-rsh --data '/var/lib/it''s here' --peer web01@[::1]:7443 --tree t1",
  );
  for (const flag of [
    '-a',
    '--partial',
    `--partial-dir=${PARTIAL_DIR}`,
    '--delay-updates',
    '--delete-delay',
  ]) {
    assert.ok(argv.includes(flag), flag);
  }
  assert.deepEqual(argv.slice(-3), ['--', 'web01:.', '/dst']);
  const stats = parseRsyncStats(
    'Number of files: 5 (reg: 3, dir: 2)\nNumber of regular files transferred: 3\nTotal file size: 1,234 bytes\n' +
      'Literal data: 1000 bytes\nMatched data: 234 bytes\nTotal bytes sent: 77\nTotal bytes received: 1,100\n',
  );
  assert.deepEqual(stats, {
    files: 3,
    filesTotal: 5,
    bytesReceived: 1100,
    bytesSent: 77,
    literalBytes: 1000,
    matchedBytes: 234,
    totalFileSize: 1234,
  });
});

test('--rate-limit becomes rsync --bwlimit in whole KiB/s, rounded down; below 1 KiB/s it is refused', () => {
  const base = {
    peer: { name: 'web01', host: '127.0.0.1', port: 7443 },
    tree: 't1',
    localPath: '/dst',
    dataDir: '/data',
    canopy: ['canopy'],
  };
  const plain = rsyncClientArgv(base);
  assert.ok(!plain.some((a) => a.startsWith('--bwlimit') || a.startsWith('--info')), plain.join(' '));
  const capped = rsyncClientArgv({ ...base, rateLimit: 2 * MiB, progress: () => {} });
  // Options, not part of the remote shell's command line or the paths.
  const options = capped.slice(0, capped.indexOf('-e'));
  assert.ok(options.includes('--bwlimit=2048'), capped.join(' '));
  assert.ok(options.includes('--info=progress2'), capped.join(' '));
  // The serving side accepts what the client hands it.
  parseServerCommand([...PULL.slice(0, -1), '--bwlimit=2048', '.', 'dir/']);

  assert.equal(bwlimitKiB(40_000_000), 39_062); // 40MB/s: 39062.5 KiB/s, never above the cap
  assert.equal(bwlimitKiB(1024), 1);
  assert.equal(bwlimitKiB(2047), 1);
  for (const bad of [1023, 0, -5, Number.NaN, Number.POSITIVE_INFINITY]) {
    assert.throws(
      () => rsyncClientArgv({ ...base, rateLimit: bad }),
      assertCanopy('USAGE', /below rsync's smallest --bwlimit \(1 KiB\/s = 1024 bytes\/s\)/),
      String(bad),
    );
  }
});

/** What rsync 3.5 wrote to stdout for a 5 MB tree pulled with --info=progress2 --stats (captured here). */
const PROGRESS2_OUTPUT =
  '\r              0   0%    0.00kB/s    0:00:00  ' +
  '\r        1048576  20% 1001.96kB/s    0:00:03  ' +
  '\r        2097152  41% 1000.98kB/s    0:00:02  ' +
  '\r        3000000  59%    1.02MB/s    0:00:02 (xfr#1, to-chk=3/5)' +
  '\r        3000003  60%    1.02MB/s    0:00:02 (xfr#2, to-chk=2/5)' +
  '\r        4179651  83% 1000.66kB/s    0:00:00  ' +
  '\r        5000003 100% 1007.18kB/s    0:00:04 (xfr#3, to-chk=0/5)' +
  '\r        5000003 100% 1006.97kB/s    0:00:04 (xfr#3, to-chk=0/5)\n\n' +
  'Number of files: 5 (reg: 3, dir: 2)\nNumber of regular files transferred: 3\n' +
  'Total file size: 5000003 bytes\nLiteral data: 5000003 bytes\nTotal bytes received: 5001234\n\n' +
  'sent 1234 bytes  received 5001234 bytes  1000000.00 bytes/sec\ntotal size is 5000003  speedup is 1.00\n';
const PROGRESS2_COUNTS = [0, 1048576, 2097152, 3000000, 3000003, 4179651, 5000003];

test('progress2 lines are read as they come, whole or cut anywhere; the count only grows', () => {
  // In one piece.
  const whole = new Progress2Reader();
  assert.equal(whole.push(PROGRESS2_OUTPUT), 5000003);
  // Every cut position: the counts come out in order, each once, none misread from half a number.
  for (let cut = 1; cut < PROGRESS2_OUTPUT.length; cut += 7) {
    const reader = new Progress2Reader();
    const seen: number[] = [];
    for (const piece of [PROGRESS2_OUTPUT.slice(0, cut), PROGRESS2_OUTPUT.slice(cut)]) {
      const n = reader.push(piece);
      if (n !== undefined) seen.push(n);
    }
    assert.equal(seen.at(-1), 5000003, `cut at ${cut}`);
    for (const n of seen) assert.ok(PROGRESS2_COUNTS.includes(n), `cut at ${cut}: read ${n}`);
  }
  // A byte at a time: every count, in order (a line is read before the next one ends it).
  const slow = new Progress2Reader();
  const seen: number[] = [];
  for (const c of PROGRESS2_OUTPUT) {
    const n = slow.push(c);
    if (n !== undefined) seen.push(n);
  }
  assert.deepEqual(seen, PROGRESS2_COUNTS);
  // A line rsync has not ended yet counts once it holds a whole figure.
  const live = new Progress2Reader();
  assert.equal(live.push('\r        1048'), undefined);
  assert.equal(live.push('576  20% 1001.96kB/s    0:00:03  '), 1048576);
  // Not a figure: separators, lower counts, stats, other text, an endless line.
  const other = new Progress2Reader();
  assert.equal(other.push('\r    1,234,567  20%  1.00MB/s  0:00:01  '), 1234567);
  assert.equal(other.push('\r    1000000  19%  1.00MB/s  0:00:01  '), undefined);
  assert.equal(other.push('\nTotal file size: 99999999 bytes\n20 files to consider\n'), undefined);
  assert.equal(other.push(`${'x'.repeat(10_000)}\r   2000000  40% `), 2000000);
});

// --- pulls with the real rsync

test('a directory tree with nested dirs, a symlink and modes is pulled byte for byte', async (t) => {
  const dir = tempDir(t);
  const root = join(dir, 'src');
  mkdirSync(join(root, 'a', 'b', 'c'), { recursive: true });
  writeFileSync(join(root, 'top.txt'), 'top\n');
  writeFileSync(join(root, 'a', 'run.sh'), '#!/bin/sh\necho hi\n', { mode: 0o755 });
  writeFileSync(join(root, 'a', 'b', 'secret.conf'), randomBytes(70_000), { mode: 0o640 });
  writeFileSync(join(root, 'a', 'b', 'c', 'empty'), '');
  chmodSync(join(root, 'a', 'b'), 0o750);
  symlinkSync('../top.txt', join(root, 'a', 'link'));
  const { port, server, log } = await startServer(t, { t1: root });
  const data = dataDir(t, 'web02', web02, ca.certPem);
  const dest = join(dir, 'dest');

  const first = await syncFromPeer(pullOptions(port, data, { localPath: dest }));
  assert.deepEqual(snapshot(dest), snapshot(root));
  assert.equal(first.exitCode, 0);
  assert.equal(first.files, 4);
  assert.equal(first.literalBytes, 4 + 18 + 70_000);
  assert.ok(first.bytesReceived > 70_000);
  assert.equal(server.rsyncStats.started, 1);
  assert.ok(log.events('transfer.peer.rsync_finished').length === 1);

  // Unchanged: nothing moves. A file gone from the tree goes with delete.
  rmSync(join(root, 'top.txt'));
  const second = await syncFromPeer(pullOptions(port, data, { localPath: dest, delete: true }));
  assert.equal(second.files, 0);
  assert.equal(second.literalBytes, 0);
  assert.deepEqual(snapshot(dest), snapshot(root));
  await until(() => server.rsyncStats.running === 0, 5000, 'the server rsync to exit');
});

test('a new version of a large file is pulled as a delta of the old one', async (t) => {
  const dir = tempDir(t);
  const root = join(dir, 'model.bin');
  const content = randomBytes(32 * MiB);
  writeFileSync(root, content);
  const { port } = await startServer(t, { t1: root });
  const data = dataDir(t, 'web02', web02, ca.certPem);
  const dest = join(dir, 'dest', 'model.bin');
  const first = await syncFromPeer(pullOptions(port, data, { localPath: dest }));
  assert.equal(first.literalBytes, 32 * MiB);
  assert.ok(readFileSync(dest).equals(content));

  randomBytes(MiB).copy(content, 15 * MiB + 12_345); // 1 MiB changed in the middle
  writeFileSync(root, content);
  const delta = await syncFromPeer(pullOptions(port, data, { localPath: dest }));
  assert.ok(readFileSync(dest).equals(content));
  assert.equal(delta.files, 1);
  assert.ok(delta.literalBytes < 2 * MiB, `literal ${delta.literalBytes}`);
  assert.ok(delta.matchedBytes > 30 * MiB, `matched ${delta.matchedBytes}`);
  assert.ok(delta.bytesReceived < 3 * MiB, `received ${delta.bytesReceived}`);
});

test('a rate-limited pull reports growing progress, and the serving rsync runs with the --bwlimit', async (t) => {
  const dir = tempDir(t);
  const root = join(dir, 'src');
  mkdirSync(join(root, 'sub'), { recursive: true });
  const big = randomBytes(6 * MiB);
  writeFileSync(join(root, 'sub', 'big.bin'), big);
  writeFileSync(join(root, 'small.txt'), 'small\n');
  const { port, log } = await startServer(t, { t1: root });
  const data = dataDir(t, 'web02', web02, ca.certPem);
  const dest = join(dir, 'dest');
  const seen: number[] = [];
  // 2 MiB/s and nothing else limiting: only the serving rsync's --bwlimit paces this pull.
  const r = await syncFromPeer(
    pullOptions(port, data, { localPath: dest, rateLimit: 2 * MiB, progress: (p) => seen.push(p.bytes) }),
  );
  assert.ok(readFileSync(join(dest, 'sub', 'big.bin')).equals(big));
  assert.equal(readFileSync(join(dest, 'small.txt'), 'utf8'), 'small\n');
  assert.equal(r.literalBytes, 6 * MiB + 6);
  assert.ok(r.argv.includes('--bwlimit=2048'), r.argv.join(' '));
  const started = log.events('transfer.peer.rsync_started');
  assert.equal(started.length, 1);
  const served = started[0]?.fields.argv as string[];
  assert.ok(served.includes('--bwlimit=2048'), `the serving rsync ran ${served.join(' ')}`);
  // Progress: strictly growing, some of it mid-file, ending at the tree's file bytes.
  for (let i = 1; i < seen.length; i++) assert.ok((seen[i] ?? 0) > (seen[i - 1] ?? 0), JSON.stringify(seen));
  assert.equal(seen.at(-1), 6 * MiB + 6);
  const midway = seen.filter((n) => n > MiB / 2 && n < 6 * MiB);
  assert.ok(midway.length >= 2, `progress while pulling: ${JSON.stringify(seen)}`);
});

test('a pull cut off halfway resumes from its partial file, and the server kills its rsync', async (t) => {
  const dir = tempDir(t);
  const root = join(dir, 'src');
  mkdirSync(root);
  const content = randomBytes(24 * MiB);
  writeFileSync(join(root, 'big.bin'), content);
  const data = dataDir(t, 'web02', web02, ca.certPem);
  const dest = join(dir, 'dest');
  // 8 MiB/s: three seconds for the file, so there is a middle to cut.
  const slow = await startServer(t, { t1: root }, { limiter: new RateLimiter({ bytesPerSecond: 8 * MiB }) });
  const pull = syncFromPeer(pullOptions(slow.port, data, { localPath: dest }));
  const failed = assert.rejects(
    pull,
    assertCanopy(PEER_CODES.lost, /peer web01 .*hung up before rsync exited while serving tree t1/),
  );
  await until(() => existsSync(dest) && biggestFile(dest) >= 8 * MiB, 20_000, 'half of the file to arrive');
  await slow.server.close(); // drops the connection; waits for the server's rsync to be gone
  await failed;
  assert.equal(slow.server.rsyncStats.running, 0);
  assert.equal(slow.log.events('transfer.peer.rsync_killed').length, 1);
  const kept = biggestFile(join(dest, PARTIAL_DIR));
  assert.ok(kept >= 4 * MiB, `partial file of ${kept} bytes`);

  const fresh = await startServer(t, { t1: root });
  const resumed = await syncFromPeer(pullOptions(fresh.port, data, { localPath: dest }));
  assert.ok(readFileSync(join(dest, 'big.bin')).equals(content));
  assert.ok(resumed.matchedBytes >= kept - MiB, `matched ${resumed.matchedBytes} of ${kept} kept`);
  assert.ok(resumed.literalBytes <= 24 * MiB - kept + MiB, `literal ${resumed.literalBytes}`);
  assert.equal(existsSync(join(dest, PARTIAL_DIR)), false);
});

test('an aborted pull kills the local rsync, rejects with the reason, and the server stops too', async (t) => {
  const dir = tempDir(t);
  const root = join(dir, 'big.bin');
  writeFileSync(root, randomBytes(16 * MiB));
  const data = dataDir(t, 'web02', web02, ca.certPem);
  const dest = join(dir, 'dest', 'big.bin');
  const { server } = await startServer(
    t,
    { t1: root },
    { limiter: new RateLimiter({ bytesPerSecond: 4 * MiB }) },
  );
  const stop = new AbortController();
  const pull = syncFromPeer({
    ...pullOptions(server.address.port, data, { localPath: dest }),
    signal: stop.signal,
  });
  await until(() => server.rsyncStats.bytesSent >= 2 * MiB, 20_000, 'the pull to be under way');
  const reason = new Error('operator cancelled');
  stop.abort(reason);
  await assert.rejects(pull, (err) => err === reason);
  await until(() => server.rsyncStats.running === 0, 10_000, 'the server rsync to be killed');
});

test('file names with shell syntax and spaces are pulled as names, and nothing runs them', async (t) => {
  const dir = tempDir(t);
  const root = join(dir, 'src');
  const marker = `canopy-pwned-${randomBytes(4).toString('hex')}`;
  const odd = join(root, `a b`, `$(touch ${marker})`);
  mkdirSync(odd, { recursive: true });
  writeFileSync(join(odd, `c; touch ${marker} \`touch ${marker}\` 'q' "d".txt`), 'odd\n');
  const { port } = await startServer(t, { t1: root });
  const data = dataDir(t, 'web02', web02, ca.certPem);
  const whole = join(dir, 'whole');
  await syncFromPeer(pullOptions(port, data, { localPath: whole }));
  assert.deepEqual(snapshot(whole), snapshot(root));
  const part = join(dir, 'part');
  const r = await syncFromPeer(
    pullOptions(port, data, { localPath: part, remotePath: `a b/$(touch ${marker})/` }),
  );
  assert.equal(r.files, 1);
  assert.deepEqual(snapshot(part), snapshot(odd));
  for (const where of [root, odd, whole, part, dir, process.cwd(), tmpdir()]) {
    assert.equal(existsSync(join(where, marker)), false, `${marker} in ${where}`);
  }
});

// --- refusals

test('a tree not authorized, a path out of the tree and a certificate of another CA are refused', async (t) => {
  const dir = tempDir(t);
  const root = join(dir, 'src');
  mkdirSync(root);
  writeFileSync(join(dir, 'secret'), 'outside');
  symlinkSync(dir, join(root, 'escape'));
  const { port, server, log } = await startServer(t, { t1: root });
  const data = dataDir(t, 'web02', web02, ca.certPem);
  const dest = join(dir, 'dest');
  const pull = (o: Partial<SyncFromPeerOptions>) =>
    syncFromPeer(pullOptions(port, data, { localPath: dest, ...o }));
  await assert.rejects(
    pull({ tree: 'other' }),
    assertCanopy(
      PEER_CODES.forbidden,
      /web01 refuses to serve tree other to web02: no running distribution lets web02 pull it from web01/,
    ),
  );
  await assert.rejects(
    pull({ remotePath: '../secret' }),
    assertCanopy(PEER_CODES.forbidden, /contains "\.\."/),
  );
  await assert.rejects(pull({ remotePath: '/etc/' }), assertCanopy(PEER_CODES.forbidden, /outside the tree/));
  await assert.rejects(
    pull({ remotePath: 'escape/' }),
    assertCanopy(PEER_CODES.forbidden, /through a symlink/),
  );
  assert.equal(log.events('transfer.peer.rsync_refused').length, 4);
  assert.deepEqual(log.events('transfer.peer.rsync_refused')[0]?.fields.tree, 'other');

  const stranger = dataDir(t, 'web02', impostor, otherCa.certPem);
  await assert.rejects(
    syncFromPeer(pullOptions(port, stranger, { localPath: dest })),
    assertCanopy(['PKI_WRONG_PEER', 'AGENT_CERT_REFUSED', PEER_CODES.lost], /web01/),
  );
  const mixed = dataDir(t, 'web02', impostor, ca.certPem); // trusts our CA, but its own certificate is not ours
  await assert.rejects(
    syncFromPeer(pullOptions(port, mixed, { localPath: dest })),
    assertCanopy(['AGENT_CERT_REFUSED', PEER_CODES.lost], /web01/),
  );
  assert.ok(log.events('transfer.peer.tls_refused').length >= 1);
  assert.equal(server.rsyncStats.started, 0);
  assert.equal(existsSync(dest), false);
});

test('peer-rsh hangs up on a server the agent was told is revoked (revoked.json), sending nothing', async (t) => {
  const dir = tempDir(t);
  mkdirSync(join(dir, 'src'));
  writeFileSync(join(dir, 'src', 'f'), 'x');
  const { port, server } = await startServer(t, { t1: join(dir, 'src') });
  const data = dataDir(t, 'web02', web02, ca.certPem);
  const dest = join(dir, 'dest');
  const serial = normalizeSerial(new X509Certificate(web01.certPem).serialNumber);
  // As the agent writes it when the coordinator sends `revoked` (another serial first: a set).
  writeFileSync(join(data, 'revoked.json'), JSON.stringify({ serials: ['7', serial.toUpperCase()] }));
  await assert.rejects(
    syncFromPeer(pullOptions(port, data, { localPath: dest })),
    assertCanopy(
      PEER_CODES.revoked,
      new RegExp(
        `peer web01 \\(127\\.0\\.0\\.1:${port}\\) presented a revoked certificate \\(serial ${serial}\\)`,
      ),
    ),
  );
  assert.equal(server.rsyncStats.started, 0);
  assert.equal(existsSync(dest), false);

  // A revoked.json that is not a list of serials: the pull refuses to guess, naming the file.
  writeFileSync(join(data, 'revoked.json'), '{"serials": ["../etc"]}');
  await assert.rejects(
    syncFromPeer(pullOptions(port, data, { localPath: dest })),
    assertCanopy('AGENT_CONFIG', /revoked\.json is not a list of revoked certificate serials .*: remove it/),
  );
  // Without one (an agent never told of a revocation) the same pull works.
  rmSync(join(data, 'revoked.json'));
  const ok = await syncFromPeer(pullOptions(port, data, { localPath: dest }));
  assert.equal(ok.exitCode, 0);
  assert.equal(readFileSync(join(dest, 'f'), 'utf8'), 'x');
});

test('crafted requests that write, run another program or smuggle shell syntax are refused, naming why', async (t) => {
  const dir = tempDir(t);
  mkdirSync(join(dir, 'src'));
  const { port, server, log } = await startServer(t, { t1: join(dir, 'src') });
  const request = (args: string[]) =>
    runPeerRsync({
      host: '127.0.0.1',
      port,
      peer: 'web01',
      identity: web02,
      caPem: ca.certPem,
      tree: 't1',
      args,
      stdin: new PassThrough(),
      stdout: new PassThrough(),
      stderr: new PassThrough(),
    });
  const cases: [string[], RegExp][] = [
    [['rsync', '--server', '-logDtpre.iLsfxCIvu', '.', 'incoming/'], /write to this agent/],
    [['rsync --server --sender . x; reboot'], /runs "rsync --server --sender/],
    [['rsync', '--server', '--sender', '--rsync-path=sh', '.', 'x'], /--rsync-path/],
    [[...PULL, '`reboot`'], /unescaped "`"/],
  ];
  for (const [args, pattern] of cases) {
    await assert.rejects(
      request(args),
      assertCanopy(
        PEER_CODES.forbidden,
        /^peer web01 \(127\.0\.0\.1:\d+\): web01 refuses to serve tree t1 to web02: /,
        pattern,
      ),
    );
  }
  const refused = log.events('transfer.peer.rsync_refused');
  assert.equal(refused.length, cases.length);
  assert.deepEqual(refused[0]?.fields.args, cases[0]?.[0]);
  assert.equal(server.rsyncStats.started, 0);
  assert.equal(server.rsyncStats.refused, cases.length);
});

test('an rsync request after a chunk request on the same connection is a protocol error', async (t) => {
  const { port, server } = await startServer(t, { t1: tmpdir() });
  const socket = tls.connect({
    host: '127.0.0.1',
    port,
    key: web02.keyPem,
    cert: web02.certPem,
    ca: [ca.certPem],
    checkServerIdentity: () => undefined,
    ALPNProtocols: [PEER_ALPN],
  });
  const frames: PeerReply[] = [];
  const decoder = new FrameDecoder(
    decodeReply,
    { bytes: 0, what: 'x' },
    { onHeader: (m) => frames.push(m), onPayload: () => {}, onFrameEnd: () => {} },
  );
  socket.on('data', (d: Buffer) => decoder.push(d));
  await once(socket, 'secureConnect');
  socket.write(
    Buffer.concat([
      encodeFrame({ type: 'get', id: 1, blob: 'ab'.repeat(32), chunk: 0 }),
      encodeFrame({ type: 'rsync', id: 2, tree: 't1', args: PULL }),
    ]),
  );
  await once(socket, 'close');
  const last = frames.at(-1);
  assert.equal(last?.type === 'error' && last.id, undefined);
  assert.equal(last?.type === 'error' && last.code, PEER_CODES.protocol);
  assert.match(last?.type === 'error' ? last.message : '', /must be the first frame/);
  assert.equal(server.rsyncStats.started, 0);
});

test('a server without rsync, or with every rsync slot taken, says so instead of hanging', async (t) => {
  const dir = tempDir(t);
  const request = (port: number) =>
    runPeerRsync({
      host: '127.0.0.1',
      port,
      peer: 'web01',
      identity: web02,
      caPem: ca.certPem,
      tree: 't1',
      args: [...PULL, '.'],
      stdin: new PassThrough(),
      stdout: new PassThrough(),
      stderr: new PassThrough(),
    });
  const missing = await startServer(t, { t1: dir }, { rsyncPath: join(dir, 'no-rsync-here') });
  await assert.rejects(request(missing.port), assertCanopy('AGENT_CONFIG', /cannot run .*no-rsync-here/));
  assert.equal(missing.log.events('transfer.peer.rsync_spawn_failed').length, 1);
  assert.equal(missing.server.rsyncStats.running, 0);
  const busy = await startServer(t, { t1: dir }, { maxRsyncSessions: 0 });
  await assert.rejects(
    request(busy.port),
    assertCanopy(PEER_CODES.lost, /0 rsync pulls are running already/),
  );
  assert.equal(busy.server.rsyncStats.started, 0);
});

test('treeFilter lets rsync send exactly the listed entries, wildcard characters taken literally', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'canopy-filter-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const src = join(dir, 'src');
  mkdirSync(join(src, 'etc', 'conf.d'), { recursive: true });
  mkdirSync(join(src, 'own'));
  const files = [
    'etc/app.conf',
    'etc/conf.d/x.conf',
    'we*ird[1].txt',
    'own/key',
    'weXird1.txt',
    'relay.key',
    'etc/secret',
  ];
  for (const f of files) writeFileSync(join(src, f), f);
  const listed = ['etc/', 'etc/app.conf', 'etc/conf.d/', 'etc/conf.d/x.conf', 'we*ird[1].txt'];
  const rules = join(dir, 'tree.filter');
  writeFileSync(rules, treeFilter(listed));
  const r = spawnSync('rsync', ['-a', `--filter=merge ${rules}`, `${src}/`, join(dir, 'dst')], {
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  const got = readdirSync(join(dir, 'dst'), { recursive: true, encoding: 'utf8' }).sort();
  assert.deepEqual(got, ['etc', 'etc/app.conf', 'etc/conf.d', 'etc/conf.d/x.conf', 'we*ird[1].txt']);
});

test('treeFilter with no entries sends nothing; names rsync escaped are left out', () => {
  assert.equal(treeFilter([]), '- *\n');
  assert.equal(treeFilter(['a\\#012b', 'c']), '+ /c\n- *\n');
});
