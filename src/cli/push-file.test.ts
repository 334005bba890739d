/**
 * Tests of push-file.ts: the push file schema (every refusal names
 * file:line:column and the key), and what collectTemplates/collectSources
 * send from real temp directories.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { tempTree } from '../../test/helpers/tree.js';
import { isCanopyError } from '../errors/index.js';
import { PUSH_BODY_LIMIT } from '../protocol/limits.js';
import {
  checkPushSize,
  collectSources,
  collectTemplates,
  distAbove,
  MAX_INLINE_BYTES,
  type PushFileSpec,
  readPushFile,
} from './push-file.js';

/** A push file with `text` in a fresh temp directory; returns its path. */
function pushFile(t: TestContext, text: string, files: Record<string, string> = {}): string {
  const dir = tempTree(t, { 'push.yaml': text, ...files });
  return join(dir, 'push.yaml');
}

interface Refusal {
  code: string;
  message: string;
  line: number;
  column: number;
}

/** The CanopyError `fn` throws; fails the test if it returns. */
function thrown(fn: () => unknown): Refusal & { subject: Record<string, unknown> } {
  try {
    fn();
  } catch (err) {
    assert.ok(isCanopyError(err), `not a CanopyError: ${String(err)}`);
    const s = err.subject as Record<string, unknown>;
    return {
      code: err.code,
      message: err.message,
      line: s.line as number,
      column: s.column as number,
      subject: s,
    };
  }
  assert.fail('expected an error, but it succeeded');
}

/** Reads a push file that must be refused: code PUSH_FILE, message `file:line:column: reason`. */
function refused(t: TestContext, text: string): Refusal & { reason: string } {
  const file = pushFile(t, text);
  const r = thrown(() => readPushFile(file));
  assert.equal(r.code, 'PUSH_FILE', r.message);
  assert.equal(r.subject.file, file);
  const prefix = `${file}:${r.line}:${r.column}: `;
  assert.ok(r.message.startsWith(prefix), `${r.message} does not start with ${prefix}`);
  return { ...r, reason: r.message.slice(prefix.length) };
}

/** A push file with one entry `entry` (YAML lines under `- `, indented by 4). */
function withEntry(entry: string, top = ''): string {
  const lines = entry.split('\n').filter(Boolean);
  return `targets: all\nfiles:\n  - ${lines.join('\n    ')}\n${top}`;
}

// ------------------------------------------------------------ readPushFile: accepted

test('the documented example reads into a spec', (t) => {
  const file = pushFile(
    t,
    [
      'targets: role=web',
      'files:',
      '  - template: templates/nginx.conf.njk',
      '    dest: /etc/nginx/nginx.conf',
      '    mode: "0644"',
      '    owner: root',
      '    group: www-data',
      '    validate: nginx -t -c %s',
      '    backup: true',
      '  - src: files/logrotate.conf',
      '    dest: /etc/logrotate.d/app',
      'notify: systemctl reload nginx',
      'timeout: 60s',
      'concurrency: 5',
      '',
    ].join('\n'),
  );
  assert.deepEqual(readPushFile(file), {
    path: file,
    templateRoot: dirname(file),
    targets: ['role=web'],
    files: [
      {
        template: 'templates/nginx.conf.njk',
        dest: '/etc/nginx/nginx.conf',
        mode: '0644',
        owner: 'root',
        group: 'www-data',
        validate: 'nginx -t -c %s',
        backup: true,
      },
      { src: 'files/logrotate.conf', dest: '/etc/logrotate.d/app' },
    ],
    notify: 'systemctl reload nginx',
    timeout: 60,
    concurrency: 5,
  });
});

test('targets may be a list', (t) => {
  const file = pushFile(t, 'targets: [web-01, role=db]\nfiles:\n  - {src: a, dest: /a}\n');
  assert.deepEqual(readPushFile(file).targets, ['web-01', 'role=db']);
});

test('optional keys left out stay out of the spec', (t) => {
  const file = pushFile(t, withEntry('src: a\ndest: /a'));
  const spec = readPushFile(file);
  assert.deepEqual(Object.keys(spec).sort(), ['files', 'path', 'targets', 'templateRoot']);
  assert.deepEqual(spec.files, [{ src: 'a', dest: '/a' }]);
});

test('mode "0644", "644" and \'0644\' read as "0644"', (t) => {
  for (const m of ['"0644"', '"644"', "'0644'"]) {
    const file = pushFile(t, withEntry(`src: a\ndest: /a\nmode: ${m}`));
    assert.equal(readPushFile(file).files[0]?.mode, '0644', `mode: ${m}`);
  }
});

test('modes with special bits and other permissions are kept', (t) => {
  const cases: [string, string][] = [
    ['"0600"', '0600'],
    ['"755"', '0755'],
    ['"1777"', '1777'],
    ['"4755"', '4755'],
    ['"0000"', '0000'],
  ];
  for (const [m, want] of cases) {
    const file = pushFile(t, withEntry(`src: a\ndest: /a\nmode: ${m}`));
    assert.equal(readPushFile(file).files[0]?.mode, want, `mode: ${m}`);
  }
});

test('dest may start with a template expression', (t) => {
  const file = pushFile(t, withEntry('template: t.njk\ndest: "{{ app_root }}/app.conf"'));
  assert.equal(readPushFile(file).files[0]?.dest, '{{ app_root }}/app.conf');
});

test('timeout takes a duration or a number of seconds', (t) => {
  const cases: [string, number][] = [
    ['60s', 60],
    ['2m', 120],
    ['500ms', 0.5],
    ['90', 90],
    ['"45"', 45],
    ['1.5', 1.5],
  ];
  for (const [v, want] of cases) {
    const file = pushFile(t, withEntry('src: a\ndest: /a', `timeout: ${v}\n`));
    assert.equal(readPushFile(file).timeout, want, `timeout: ${v}`);
  }
});

test('templates: sets the template root relative to the push file', (t) => {
  const file = pushFile(t, `templates: roles/web/templates\n${withEntry('template: app.njk\ndest: /a')}`);
  assert.equal(readPushFile(file).templateRoot, join(dirname(file), 'roles', 'web', 'templates'));
});

test('backup: false is kept as false', (t) => {
  const file = pushFile(t, withEntry('src: a\ndest: /a\nbackup: false'));
  assert.equal(readPushFile(file).files[0]?.backup, false);
});

// ------------------------------------------------------------ readPushFile: refused

test('a push file that is not a mapping is refused at 1:1', (t) => {
  for (const text of ['- a\n', 'just text\n', '']) {
    const r = refused(t, text);
    assert.deepEqual([r.line, r.column], [1, 1]);
    assert.equal(r.reason, 'a push file is a mapping with targets: and files:');
  }
});

test('an unknown top-level key is refused at its line with a suggestion', (t) => {
  const r = refused(t, 'targets: all\nfiles:\n  - {src: a, dest: /a}\nnotfy: reload\n');
  assert.deepEqual([r.line, r.column], [4, 1]);
  assert.match(
    r.reason,
    /^unknown key "notfy"; did you mean "notify"\? \(known: targets, .*notify, run_as, timeout/,
  );
});

test('an unknown key far from any known one gets no suggestion', (t) => {
  const r = refused(t, 'targets: all\nhandlers: x\n');
  assert.equal(r.line, 2);
  assert.doesNotMatch(r.reason, /did you mean/);
  assert.match(r.reason, /^unknown key "handlers" \(known: /);
});

test('an unknown key in a file entry is refused at that key with a suggestion', (t) => {
  const r = refused(t, withEntry('src: a\ndst: /a'));
  assert.deepEqual([r.line, r.column], [4, 5]);
  assert.match(r.reason, /^unknown key "dst" in files\[0\]; did you mean "dest"\?/);
  assert.match(r.reason, /\(known: template, src, dest, mode, owner, group, validate, backup\)/);
});

test('an error in a later entry names its index and line', (t) => {
  const r = refused(
    t,
    'targets: all\nfiles:\n  - src: a\n    dest: /a\n  - src: b\n    dest: /b\n    mod: "0644"\n',
  );
  assert.deepEqual([r.line, r.column], [7, 5]);
  assert.match(r.reason, /unknown key "mod" in files\[1\]; did you mean "mode"\?/);
});

test('targets must be a non-empty target or list of targets', (t) => {
  for (const text of [
    'files:\n  - {src: a, dest: /a}\n',
    'targets: []\nfiles:\n  - {src: a, dest: /a}\n',
    'targets: ""\nfiles:\n  - {src: a, dest: /a}\n',
    'targets: [web, 3]\nfiles:\n  - {src: a, dest: /a}\n',
    'targets: {role: web}\nfiles:\n  - {src: a, dest: /a}\n',
  ]) {
    const r = refused(t, text);
    assert.match(r.reason, /^targets: must be a target/, text);
  }
});

test('a refusal of targets points at the targets line', (t) => {
  const r = refused(t, 'files:\n  - {src: a, dest: /a}\ntargets: []\n');
  assert.deepEqual([r.line, r.column], [3, 1]);
});

test('files must be a non-empty list', (t) => {
  for (const text of ['targets: all\n', 'targets: all\nfiles: []\n', 'targets: all\nfiles: {src: a}\n']) {
    assert.match(refused(t, text).reason, /^files: must be a list of \{template or src, dest\}/, text);
  }
});

test('a file entry must be a mapping', (t) => {
  const r = refused(t, 'targets: all\nfiles:\n  - /etc/x\n');
  assert.deepEqual([r.line, r.column], [3, 5]);
  assert.match(r.reason, /^files\[0\] must be a mapping with template or src, and dest/);
});

test('an entry needs exactly one of template and src', (t) => {
  const both = refused(t, withEntry('template: t.njk\nsrc: a\ndest: /a'));
  assert.match(both.reason, /^files\[0\] needs exactly one of template: .* and src:/);
  assert.equal(both.line, 3);
  const neither = refused(t, withEntry('dest: /a\nmode: "0644"'));
  assert.match(neither.reason, /^files\[0\] needs exactly one of template:/);
});

test('dest is required, a non-empty string, and absolute', (t) => {
  assert.match(refused(t, withEntry('src: a')).reason, /^files\[0\] needs dest: \(the absolute path/);
  assert.match(refused(t, withEntry('src: a\ndest: ""')).reason, /^dest: must be a non-empty string/);
  assert.match(refused(t, withEntry('src: a\ndest: 5')).reason, /^dest: must be a non-empty string/);
  const rel = refused(t, withEntry('src: a\ndest: etc/app.conf'));
  assert.equal(rel.reason, 'dest: "etc/app.conf" must be an absolute path');
  assert.deepEqual([rel.line, rel.column], [4, 5]);
  assert.match(refused(t, withEntry('src: a\ndest: ./x')).reason, /must be an absolute path/);
});

test('string keys must be non-empty strings', (t) => {
  for (const k of ['template', 'src', 'owner', 'group', 'validate']) {
    const entry = k === 'template' || k === 'src' ? `${k}: ""\ndest: /a` : `src: a\ndest: /a\n${k}: ""`;
    const r = refused(t, withEntry(entry));
    assert.equal(r.reason, `${k}: must be a non-empty string`, k);
  }
  assert.equal(refused(t, withEntry('src: [a]\ndest: /a')).reason, 'src: must be a non-empty string');
  assert.equal(
    refused(t, withEntry('src: a\ndest: /a\nowner: 0')).reason,
    'owner: must be a non-empty string',
  );
});

test('bad modes are refused naming the value', (t) => {
  for (const m of [
    '"888"',
    '"0o644"',
    '"rw-r--r--"',
    '"64"',
    '"10644"',
    '"-644"',
    'true',
    '"07777 "',
    '""',
  ]) {
    const r = refused(t, withEntry(`src: a\ndest: /a\nmode: ${m}`));
    assert.match(r.reason, /^mode: .* is not an octal mode such as "0644"$/, `mode: ${m}`);
    assert.equal(r.line, 5, `mode: ${m}`);
  }
  for (const m of ['644', '0644', '888', '6.44']) {
    const r = refused(t, withEntry(`src: a\ndest: /a\nmode: ${m}`));
    assert.match(
      r.reason,
      /^mode: [\d.]+ is a number; quote it as a string, e\.g\. mode: "0644"$/,
      `mode: ${m}`,
    );
  }
});

test('mode: 0o644 (YAML 1.2 octal) means 0644 or is refused, never another mode', (t) => {
  for (const m of ['0o644', '0x1a4']) {
    const file = pushFile(t, withEntry(`src: a\ndest: /a\nmode: ${m}`));
    let mode: string | undefined;
    try {
      mode = readPushFile(file).files[0]?.mode;
    } catch (err) {
      assert.ok(isCanopyError(err, 'PUSH_FILE'), String(err));
      continue;
    }
    assert.equal(mode, '0644', `mode: ${m}`);
  }
});

test('backup must be a boolean (YAML 1.2: yes is a string)', (t) => {
  for (const v of ['yes', '"true"', '1']) {
    const r = refused(t, withEntry(`src: a\ndest: /a\nbackup: ${v}`));
    assert.equal(r.reason, 'backup: must be true or false', v);
    assert.equal(r.line, 5);
  }
});

test('validate must contain %s', (t) => {
  const r = refused(t, withEntry('src: a\ndest: /a\nvalidate: nginx -t'));
  assert.match(r.reason, /^validate: must contain %s/);
  assert.deepEqual([r.line, r.column], [5, 5]);
});

test('notify must be a non-blank shell command', (t) => {
  for (const v of ['""', '"   "', '5', '[a, b]']) {
    const r = refused(t, withEntry('src: a\ndest: /a', `notify: ${v}\n`));
    assert.equal(r.reason, 'notify: must be a shell command', v);
    assert.equal(r.line, 5);
  }
});

test('run_as is an account name', (t) => {
  for (const v of ['""', '"a b"', '5', '[root]', '"-x"']) {
    const r = refused(t, withEntry('src: a\ndest: /a', `run_as: ${v}\n`));
    assert.equal(r.reason, 'run_as: must be an account name (validate and notify run as it)', v);
  }
  const ok = readPushFile(pushFile(t, withEntry('src: a\ndest: /a', 'run_as: deploy\n')));
  assert.equal(ok.runAs, 'deploy');
});

test('timeout must be a positive duration', (t) => {
  for (const v of ['soon', '0s', '"-5"', '5 minutes']) {
    const r = refused(t, withEntry('src: a\ndest: /a', `timeout: ${v}\n`));
    assert.match(r.reason, /is not a duration \(use e\.g\. 500ms/, v);
    assert.equal(r.line, 5);
  }
  for (const v of ['0', '-5', 'true', '[1]']) {
    const r = refused(t, withEntry('src: a\ndest: /a', `timeout: ${v}\n`));
    assert.equal(r.reason, 'timeout: must be a duration such as 60s or 2m', v);
  }
});

test('timeout: .inf is refused', (t) => {
  const file = pushFile(t, withEntry('src: a\ndest: /a', 'timeout: .inf\n'));
  assert.throws(() => readPushFile(file), { code: 'PUSH_FILE' });
});

test('concurrency must be a positive whole number', (t) => {
  for (const v of ['0', '-1', '2.5', '"4"', 'many']) {
    const r = refused(t, withEntry('src: a\ndest: /a', `concurrency: ${v}\n`));
    assert.equal(r.reason, 'concurrency: must be a positive whole number', v);
    assert.deepEqual([r.line, r.column], [5, 1]);
  }
});

test('dist_above takes a size, a number of bytes, or 0', (t) => {
  for (const [v, bytes] of [
    ['512K', 512 * 1024],
    ['8M', 8 * 1024 * 1024],
    ['1.5M', 1.5 * 1024 * 1024],
    ['4096', 4096],
    ['0', 0],
  ] as const) {
    assert.equal(
      readPushFile(pushFile(t, withEntry('src: a\ndest: /a', `dist_above: ${v}\n`))).distAbove,
      bytes,
      v,
    );
  }
  assert.equal(readPushFile(pushFile(t, withEntry('src: a\ndest: /a'))).distAbove, undefined);
});

test('dist_above above 8M or not a size is refused at its line', (t) => {
  const big = refused(t, withEntry('src: a\ndest: /a', 'dist_above: 9M\n'));
  assert.equal(big.line, 5);
  assert.match(big.reason, /dist_above: 9M is more than 8M/);
  const bad = refused(t, withEntry('src: a\ndest: /a', 'dist_above: lots\n'));
  assert.match(bad.reason, /dist_above: "lots" is not a size/);
  const neg = refused(t, withEntry('src: a\ndest: /a', 'dist_above: -1\n'));
  assert.match(neg.reason, /not a size/);
});

test('distAbove (the --dist-above flag) allows up to exactly 8 MiB', () => {
  assert.equal(distAbove('8M', '--dist-above'), MAX_INLINE_BYTES);
  assert.equal(distAbove(String(MAX_INLINE_BYTES), '--dist-above'), MAX_INLINE_BYTES);
  const r = thrown(() => distAbove(String(MAX_INLINE_BYTES + 1), '--dist-above'));
  assert.equal(r.code, 'USAGE');
  assert.match(r.message, /^--dist-above: 8388609 is more than 8M/);
});

test('templates: must be a non-empty string', (t) => {
  for (const v of ['""', '5', '[a, b]', '{a: b}']) {
    const r = refused(t, `targets: all\ntemplates: ${v}\nfiles:\n  - {template: a.njk, dest: /a}\n`);
    assert.equal(r.reason, 'templates: must be a directory (relative to the push file)', v);
    assert.deepEqual([r.line, r.column], [2, 1], v);
  }
});

test('a YAML syntax error and a duplicate key are PUSH_FILE errors with a position', (t) => {
  const syntax = refused(t, 'targets: [a\nfiles: x\n');
  assert.match(syntax.reason, /^YAML syntax error: /);
  const dup = refused(t, 'targets: a\nfiles: []\ntargets: b\n');
  assert.deepEqual([dup.line, dup.column], [3, 1]);
  assert.match(dup.reason, /duplicate key "targets" \(first at line 1\)/);
});

test('a missing push file is INPUT_NOT_FOUND naming it', (t) => {
  const dir = tempTree(t, {});
  const r = thrown(() => readPushFile(join(dir, 'nope.yaml')));
  assert.equal(r.code, 'INPUT_NOT_FOUND');
  assert.ok(r.message.startsWith(`${join(dir, 'nope.yaml')}: cannot read`), r.message);
});

// ------------------------------------------------------------ collectTemplates

/** A spec for the push file at `path`, templates resolving beside it unless `templateRoot` says otherwise. */
function spec(path: string, files: PushFileSpec['files'], templateRoot = dirname(path)): PushFileSpec {
  return { path, templateRoot, targets: ['all'], files };
}

test('collectTemplates sends every file in the directories of the named templates', (t) => {
  const file = pushFile(t, '', {
    'templates/nginx.conf.njk': 'server {% include "partials/head.njk" %}',
    'templates/partials/head.njk': 'head',
    'templates/macros.njk': 'macros',
    'templates/.hidden': 'secret',
    'other/unrelated.njk': 'no',
    'files/logrotate.conf': 'plain',
  });
  const s = spec(file, [
    { template: 'templates/nginx.conf.njk', dest: '/etc/nginx/nginx.conf' },
    { src: 'files/logrotate.conf', dest: '/etc/logrotate.d/app' },
  ]);
  assert.deepEqual(collectTemplates(s), {
    'templates/nginx.conf.njk': 'server {% include "partials/head.njk" %}',
    'templates/partials/head.njk': 'head',
    'templates/macros.njk': 'macros',
  });
});

test('templates named literally from elsewhere in the root are sent too, and what they name in turn', (t) => {
  const file = pushFile(t, '', {
    'troot/pages/site.njk':
      '{% extends "layouts/base.njk" %}{% include "common/header.njk" %}{%- import \'lib/m.njk\' as m %}' +
      '{% from "./near.njk" import x %}{% include "../../outside.njk" %}{% include "common/missing.njk" %}',
    'troot/pages/near.njk': 'near',
    'troot/layouts/base.njk': 'base {% include "common/footer.njk" %}',
    'troot/common/header.njk': 'header',
    'troot/common/footer.njk': 'footer',
    'troot/lib/m.njk': 'macros',
    'troot/unrelated/big.njk': 'not named',
    'outside.njk': 'outside the root',
  });
  const out = collectTemplates(
    spec(file, [{ template: 'pages/site.njk', dest: '/a' }], join(dirname(file), 'troot')),
  );
  assert.deepEqual(Object.keys(out).sort(), [
    'common/footer.njk',
    'common/header.njk',
    'layouts/base.njk',
    'lib/m.njk',
    'pages/near.njk',
    'pages/site.njk',
  ]);
});

test('a looping or dangling symlink beside a template is skipped, not a crash', (t) => {
  const file = pushFile(t, '', { 'templates/app.njk': 'app' });
  symlinkSync('loop', join(dirname(file), 'templates', 'loop'));
  symlinkSync('nowhere', join(dirname(file), 'templates', 'dangling'));
  const out = collectTemplates(spec(file, [{ template: 'templates/app.njk', dest: '/a' }]));
  assert.deepEqual(Object.keys(out), ['templates/app.njk']);
});

test('collectTemplates walks only the named directories, not their parents', (t) => {
  const file = pushFile(t, '', {
    'templates/app/app.conf.njk': 'app',
    'templates/app/inc.njk': 'inc',
    'templates/db/db.conf.njk': 'db',
    'templates/top.njk': 'top',
  });
  const out = collectTemplates(spec(file, [{ template: 'templates/app/app.conf.njk', dest: '/a' }]));
  assert.deepEqual(Object.keys(out).sort(), ['templates/app/app.conf.njk', 'templates/app/inc.njk']);
});

test('collectTemplates walks the directory of each named template', (t) => {
  const file = pushFile(t, '', {
    'a/one.njk': '1',
    'a/one-inc.njk': '1i',
    'b/two.njk': '2',
    'b/two-inc.njk': '2i',
  });
  const out = collectTemplates(
    spec(file, [
      { template: 'a/one.njk', dest: '/1' },
      { template: 'b/two.njk', dest: '/2' },
    ]),
  );
  assert.deepEqual(Object.keys(out).sort(), ['a/one-inc.njk', 'a/one.njk', 'b/two-inc.njk', 'b/two.njk']);
});

test('a template beside the push file sends the files beside it', (t) => {
  const file = pushFile(t, 'x', { 'app.njk': 'app', 'inc.njk': 'inc', 'sub/deep.njk': 'deep' });
  const out = collectTemplates(spec(file, [{ template: 'app.njk', dest: '/a' }]));
  assert.equal(out['app.njk'], 'app');
  assert.equal(out['inc.njk'], 'inc');
  assert.equal(out['sub/deep.njk'], 'deep');
});

test('files over 1 MiB in a template directory are not sent', (t) => {
  const file = pushFile(t, '', {
    'templates/app.njk': 'app',
    'templates/huge.bin': 'x'.repeat(1024 * 1024 + 1),
    'templates/edge.txt': 'y'.repeat(1024 * 1024),
  });
  const out = collectTemplates(spec(file, [{ template: 'templates/app.njk', dest: '/a' }]));
  assert.deepEqual(Object.keys(out).sort(), ['templates/app.njk', 'templates/edge.txt']);
});

test('at most 2000 template files are sent, the named one among them', (t) => {
  const files: Record<string, string> = { 'templates/zz-main.njk': 'main' };
  for (let i = 0; i < 2100; i++) files[`templates/f${String(i).padStart(4, '0')}.njk`] = String(i);
  const file = pushFile(t, '', files);
  const out = collectTemplates(spec(file, [{ template: 'templates/zz-main.njk', dest: '/a' }]));
  assert.equal(Object.keys(out).length, 2000);
  assert.equal(out['templates/zz-main.njk'], 'main');
});

test('template names are normalised inside the push file directory and the entry updated', (t) => {
  const file = pushFile(t, '', { 'templates/app.njk': 'app' });
  const s = spec(file, [{ template: './templates/../templates/app.njk', dest: '/a' }]);
  const out = collectTemplates(s);
  assert.equal(s.files[0]?.template, 'templates/app.njk');
  assert.deepEqual(Object.keys(out), ['templates/app.njk']);
});

test('a template name leaving the push file directory is refused', (t) => {
  const file = pushFile(t, '', { 'templates/app.njk': 'app' });
  for (const name of ['../x.njk', 'templates/../../x.njk', '..', '/etc/passwd', '.', 'templates/..']) {
    const r = thrown(() => collectTemplates(spec(file, [{ template: name, dest: '/a' }])));
    assert.equal(r.code, 'PUSH_FILE', name);
    assert.ok(
      r.message.startsWith(`${file}: template ${JSON.stringify(name)} must be a path inside`),
      r.message,
    );
  }
});

test('a missing template is INPUT_NOT_FOUND naming the push file and template', (t) => {
  const file = pushFile(t, '', { 'templates/app.njk': 'app' });
  const r = thrown(() => collectTemplates(spec(file, [{ template: 'templates/gone.njk', dest: '/a' }])));
  assert.equal(r.code, 'INPUT_NOT_FOUND');
  assert.ok(r.message.startsWith(`${file}: template templates/gone.njk:`), r.message);
  assert.equal(r.subject.template, 'templates/gone.njk');
});

test('a push without templates sends none', (t) => {
  const file = pushFile(t, '', { 'files/a': 'a' });
  assert.deepEqual(collectTemplates(spec(file, [{ src: 'files/a', dest: '/a' }])), {});
});

test('readPushFile then collectTemplates works end to end', (t) => {
  const file = pushFile(t, withEntry('template: tpl/app.njk\ndest: /etc/app.conf'), {
    'tpl/app.njk': '{{ x }}',
    'tpl/base.njk': 'base',
  });
  const out = collectTemplates(readPushFile(file));
  assert.deepEqual(out, { 'tpl/app.njk': '{{ x }}', 'tpl/base.njk': 'base' });
});

test('with a template root, names and the keys sent are relative to it', (t) => {
  const file = pushFile(t, '', {
    'tpl/nginx.conf.njk': 'nginx',
    'tpl/inc/head.njk': 'head',
    'beside-push-file.njk': 'not sent',
  });
  const s = spec(file, [{ template: 'nginx.conf.njk', dest: '/a' }], join(dirname(file), 'tpl'));
  assert.deepEqual(collectTemplates(s), { 'nginx.conf.njk': 'nginx', 'inc/head.njk': 'head' });
});

test('a template name may not leave the template root, even to the push file directory', (t) => {
  const file = pushFile(t, '', { 'tpl/a.njk': 'a', 'shared.njk': 'shared' });
  const root = join(dirname(file), 'tpl');
  const r = thrown(() => collectTemplates(spec(file, [{ template: '../shared.njk', dest: '/a' }], root)));
  assert.equal(r.code, 'PUSH_FILE');
  assert.ok(r.message.includes(`"../shared.njk" must be a path inside ${root}`), r.message);
});

test('readPushFile with templates: then collectTemplates and collectSources work end to end', (t) => {
  const file = pushFile(
    t,
    'targets: all\ntemplates: tpl\nfiles:\n  - {template: app.njk, dest: /etc/app.conf}\n  - {src: files/raw, dest: /raw}\n',
    { 'tpl/app.njk': '{{ x }}', 'tpl/base.njk': 'base', 'files/raw': 'raw' },
  );
  const s = readPushFile(file);
  assert.deepEqual(collectTemplates(s), { 'app.njk': '{{ x }}', 'base.njk': 'base' });
  // src: stays relative to the push file, not to the template root.
  assert.deepEqual(collectSources(s, 100).sources, { 'files/raw': Buffer.from('raw').toString('base64') });
});

// ------------------------------------------------------------ collectSources

test('collectSources sends src files base64, byte for byte', (t) => {
  const file = pushFile(t, '');
  const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  writeFileSync(join(file, '..', 'blob.bin'), bytes);
  writeFileSync(join(file, '..', 'empty'), '');
  const { sources, distributed } = collectSources(
    spec(file, [
      { src: 'blob.bin', dest: '/b' },
      { src: 'empty', dest: '/e' },
      { template: 'ignored.njk', dest: '/t' },
    ]),
    1024,
  );
  assert.deepEqual(Object.keys(sources).sort(), ['blob.bin', 'empty']);
  assert.deepEqual(Buffer.from(sources['blob.bin'] ?? '', 'base64'), bytes);
  assert.equal(sources.empty, '');
  assert.deepEqual(distributed, []);
});

test('a src file of exactly dist_above is sent; one byte more goes by its absolute path, unread', (t) => {
  const file = pushFile(t, '', { 'files/ok': 'x'.repeat(100), 'files/big': 'x'.repeat(101) });
  const s = spec(file, [
    { src: 'files/ok', dest: '/a' },
    { src: './files/big', dest: '/b' },
    { src: 'files/big', dest: '/c' },
  ]);
  const { sources, distributed } = collectSources(s, 100);
  assert.deepEqual(Object.keys(sources), ['files/ok']);
  const abs = join(dirname(file), 'files', 'big');
  // The entries name the file by its absolute path (the coordinator reads it there); listed once.
  assert.deepEqual(
    s.files.map((f) => f.src),
    ['files/ok', abs, abs],
  );
  assert.deepEqual(distributed, [{ src: 'files/big', path: abs, size: 101 }]);
});

test('dist_above 0 sends every non-empty src file peer to peer; an empty one travels with the push', (t) => {
  const file = pushFile(t, '', { empty: '', one: '1' });
  const { sources, distributed } = collectSources(
    spec(file, [
      { src: 'empty', dest: '/a' },
      { src: 'one', dest: '/b' },
    ]),
    0,
  );
  assert.deepEqual(sources, { empty: '' });
  assert.deepEqual(
    distributed.map((d) => [d.src, d.size]),
    [['one', 1]],
  );
});

test('a src file over 2 GiB goes peer to peer without being read', (t) => {
  const file = pushFile(t, '', { huge: '' });
  truncateSync(join(file, '..', 'huge'), 3 * 1024 ** 3); // sparse: no disk used
  const { sources, distributed } = collectSources(
    spec(file, [{ src: 'huge', dest: '/a' }]),
    MAX_INLINE_BYTES,
  );
  assert.deepEqual(sources, {});
  assert.equal(distributed[0]?.size, 3 * 1024 ** 3);
});

test('a src that is a directory is INPUT_NOT_FOUND naming it', (t) => {
  const file = pushFile(t, '', { 'files/a': 'a' });
  const r = thrown(() => collectSources(spec(file, [{ src: 'files', dest: '/a' }]), 100));
  assert.equal(r.code, 'INPUT_NOT_FOUND');
  assert.match(r.message, /src files: not a regular file/);
});

test('a missing src is INPUT_NOT_FOUND naming it', (t) => {
  const file = pushFile(t, '');
  const r = thrown(() => collectSources(spec(file, [{ src: 'files/gone', dest: '/a' }]), 100));
  assert.equal(r.code, 'INPUT_NOT_FOUND');
  assert.ok(r.message.startsWith(`${file}: src files/gone:`), r.message);
  assert.equal(r.subject.path, 'files/gone');
});

test('a src name leaving the push file directory is refused', (t) => {
  const file = pushFile(t, '', { 'files/a': 'a' });
  for (const name of ['../secret', 'files/../../secret', '/etc/shadow', '.']) {
    const r = thrown(() => collectSources(spec(file, [{ src: name, dest: '/a' }]), 100));
    assert.equal(r.code, 'PUSH_FILE', name);
    assert.ok(r.message.startsWith(`${file}: src ${JSON.stringify(name)} must be a path inside`), r.message);
  }
});

test('src names are normalised and the entry updated', (t) => {
  const file = pushFile(t, '', { 'files/a': 'a' });
  const s = spec(file, [{ src: './files//a', dest: '/a' }]);
  assert.deepEqual(collectSources(s, 100).sources, { 'files/a': Buffer.from('a').toString('base64') });
  assert.equal(s.files[0]?.src, 'files/a');
});

test('checkPushSize passes a request up to the API limit and refuses a larger one naming its three largest parts', () => {
  const spec = { path: '/p/push.yaml' } as PushFileSpec;
  const templates = { 'a.njk': 'x'.repeat(3 * 1024 * 1024), 'b.njk': 'y' };
  const sources = {
    'big.bin': 'A'.repeat(5 * 1024 * 1024),
    'mid.bin': 'B'.repeat(4 * 1024 * 1024),
    'tiny.bin': 'C',
  };
  checkPushSize(spec, PUSH_BODY_LIMIT, templates, sources);
  const r = thrown(() => checkPushSize(spec, PUSH_BODY_LIMIT + 1, templates, sources));
  assert.equal(r.code, 'PUSH_TOO_LARGE');
  assert.match(r.message, /^\/p\/push\.yaml: the push request would be 96\.0 MiB, more than the 96\.0 MiB/);
  assert.match(
    r.message,
    /largest as sent: src big\.bin 5\.00 MiB, src mid\.bin 4\.00 MiB, template a\.njk 3\.00 MiB\)/,
  );
  assert.doesNotMatch(r.message, /tiny|b\.njk/);
  assert.match(r.message, /dist_above/);
  assert.equal(r.subject.file, '/p/push.yaml');
  assert.equal(r.subject.limit, PUSH_BODY_LIMIT);
});

test('a named template that is a fifo is refused, not read (the read would block)', (t) => {
  const file = pushFile(t, '', { 'templates/ok.njk': 'ok' });
  const fifo = join(dirname(file), 'templates', 'pipe.njk');
  const made = spawnSync('mkfifo', [fifo]);
  assert.equal(made.status, 0);
  const r = thrown(() => collectTemplates(spec(file, [{ template: 'templates/pipe.njk', dest: '/a' }])));
  assert.equal(r.code, 'INPUT_NOT_FOUND');
  assert.match(r.message, /template templates\/pipe\.njk: not a regular file/);
});
