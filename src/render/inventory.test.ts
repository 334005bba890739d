import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tempTree } from '../../test/helpers/tree.js';
import { type CanopyError, isCanopyError } from '../errors/index.js';
import { loadInventory } from './inventory.js';
import { VarResolver } from './vars.js';

function load(t: Parameters<typeof tempTree>[0], yaml: string) {
  const dir = tempTree(t, { 'inv.yaml': yaml });
  return { inv: loadInventory(`${dir}/inv.yaml`), file: `${dir}/inv.yaml` };
}

function loadError(
  t: Parameters<typeof tempTree>[0],
  files: Record<string, string>,
  entry = 'inv.yaml',
): { err: CanopyError; dir: string } {
  const dir = tempTree(t, files);
  try {
    loadInventory(`${dir}/${entry}`);
  } catch (err) {
    if (isCanopyError(err)) return { err, dir };
    throw err;
  }
  assert.fail('expected the inventory to be refused');
}

const FLEET = `
groups:
  bj: {kind: idc, match: {idc: bj}}
  web: {kind: set, hosts: [w1, w2]}
hosts:
  w1: {address: 198.18.1.1, labels: {idc: bj}}
  w2: {labels: {idc: sh}}
  d1: {labels: {idc: bj}}
`;

test('groups take members from static hosts and from label matches', (t) => {
  const { inv } = load(t, FLEET);
  const groupsOf = (h: string) => inv.memberships.get(h)?.map((g) => g.name);
  assert.deepEqual(groupsOf('w1'), ['bj', 'web']);
  assert.deepEqual(groupsOf('w2'), ['web']);
  assert.deepEqual(groupsOf('d1'), ['bj']);
  assert.equal(inv.format, 'canopy');
});

test('a host without address is addressed by its name', (t) => {
  const { inv } = load(t, FLEET);
  assert.equal(inv.hosts.get('w1')?.address, '198.18.1.1');
  assert.equal(inv.hosts.get('w2')?.address, 'w2');
});

test('an empty inventory file loads as an empty fleet', (t) => {
  const { inv } = load(t, '# nothing yet\n');
  assert.equal(inv.hosts.size, 0);
});

test('a YAML syntax error names file, line and column', (t) => {
  const { err, dir } = loadError(t, { 'inv.yaml': 'hosts:\n  a: {labels: [x\n' });
  assert.equal(err.code, 'INVENTORY_YAML');
  assert.match(err.message, new RegExp(`^${dir}/inv.yaml:\\d+:\\d+: YAML syntax error`));
});

test('a duplicate key in one file is a YAML error with its line', (t) => {
  const { err } = loadError(t, { 'inv.yaml': 'hosts:\n  a: {}\n  a: {}\n' });
  assert.equal(err.code, 'INVENTORY_YAML');
  assert.match(err.message, /inv\.yaml:3:3: duplicate key "a" \(first at line 2\)/);
});

test('an unknown key is an error at its line and column with the closest known key', (t) => {
  const { err } = loadError(t, { 'inv.yaml': 'groups:\n  web:\n    prioriy: 10\nhosts: {}\n' });
  assert.equal(err.code, 'INVENTORY_INVALID');
  assert.match(err.message, /inv\.yaml:3:5: unknown key "prioriy" in group "web"; did you mean "priority"\?/);
});

test('an unknown top-level key in a canopy inventory is reported, not taken for Ansible', (t) => {
  const { err } = loadError(t, { 'inv.yaml': 'hosts: {a: {}}\ngroup: {}\n' });
  // "group" is not a canopy key, so the file reads as Ansible; Ansible refuses "a: {}" under a group named hosts.
  assert.ok(err.code === 'INVENTORY_INVALID', err.message);
});

test('every problem of a file is reported at once, in line order', (t) => {
  const { err } = loadError(t, {
    'inv.yaml': 'groups:\n  web:\n    kind: idcc\n    priority: high\nhosts:\n  "bad host": {}\n',
  });
  const problems = err.subject.problems as { message: string }[];
  assert.equal(problems.length, 3);
  assert.match(err.message, /has 3 problems/);
  assert.match(
    err.message,
    /:3:\d+: group "web": kind must be one of idc, set, custom, not the string "idcc"; did you mean "idc"\?/,
  );
  assert.match(err.message, /:4:\d+: group "web" priority must be an integer/);
  assert.match(err.message, /:6:\d+: host name "bad host" is not allowed/);
});

test('a group naming an undefined host is an error with the closest host name', (t) => {
  const { err } = loadError(t, {
    'inv.yaml': 'groups:\n  web: {hosts: [web-01, web-2]}\nhosts:\n  web-01: {}\n  web-02: {}\n',
  });
  assert.equal(err.code, 'INVENTORY_UNKNOWN_HOST');
  assert.match(
    err.message,
    /inv\.yaml:2:\d+: group "web" names host "web-2", which is not defined under "hosts"; did you mean "web-02"\?/,
  );
});

test('a match on a label no host has is a warning, not an error', (t) => {
  const { inv } = load(t, 'groups:\n  dbs: {match: {rol: db}}\nhosts:\n  a: {labels: {role: db}}\n');
  assert.equal(inv.warnings.length, 1);
  assert.match(
    inv.warnings[0]?.message ?? '',
    /group "dbs": match selects no host: no host has a label "rol"/,
  );
  assert.equal(inv.warnings[0]?.pos?.line, 2);
});

test('a match whose label exists with other values warns about the value', (t) => {
  const { inv } = load(t, 'groups:\n  dbs: {match: {role: dbs}}\nhosts:\n  a: {labels: {role: db}}\n');
  assert.match(inv.warnings[0]?.message ?? '', /no host has label role=dbs/);
});

for (const [where, yaml, line] of [
  ['global vars', 'vars: {canopy: 1}\n', 1],
  ['group vars', 'groups:\n  g:\n    vars:\n      canopy: {x: 1}\n', 4],
  ['host vars', 'hosts:\n  a:\n    vars: {canopy: 1}\n', 3],
  ['group all vars', 'groups:\n  all:\n    vars:\n      canopy: 1\n', 4],
] as const) {
  test(`a variable named canopy in ${where} is refused as reserved`, (t) => {
    const { err } = loadError(t, { 'inv.yaml': yaml });
    assert.equal(err.code, 'VARS_RESERVED');
    assert.match(err.message, new RegExp(`inv\\.yaml:${line}:\\d+: the variable "canopy" is reserved`));
  });
}

test('group all takes only vars', (t) => {
  const { err } = loadError(t, { 'inv.yaml': 'groups:\n  all:\n    hosts: [a]\nhosts: {a: {}}\n' });
  assert.match(
    err.message,
    /unknown key "hosts" in group "all" \(it holds every host: only "vars" is allowed\)/,
  );
});

test('a directory inventory merges its *.yaml files', (t) => {
  const dir = tempTree(t, {
    'a.yaml': 'vars: {x: 1}\nhosts: {h1: {}}\n',
    'b.yaml': 'vars: {y: 2}\ngroups: {g: {hosts: [h1, h2]}}\nhosts: {h2: {}}\n',
    'notes.txt': 'ignored',
  });
  const inv = loadInventory(dir);
  assert.deepEqual([...inv.hosts.keys()].sort(), ['h1', 'h2']);
  assert.deepEqual(new VarResolver(inv).vars('h2'), { x: 1, y: 2 });
});

test('a host defined in two files of a directory is an error naming both files and lines', (t) => {
  const { err, dir } = loadError(t, { 'a.yaml': 'hosts:\n  h1: {}\n', 'b.yaml': '\nhosts:\n  h1: {}\n' }, '');
  assert.equal(err.code, 'INVENTORY_DUPLICATE');
  assert.match(
    err.message,
    new RegExp(`${dir}/b.yaml:3:3: host "h1" is already defined at ${dir}/a.yaml:2:3`),
  );
});

test('a group defined in two files is an error naming both', (t) => {
  const { err } = loadError(t, { 'a.yaml': 'groups: {g: {}}\n', 'b.yaml': 'groups:\n  g: {}\n' }, '');
  assert.equal(err.code, 'INVENTORY_DUPLICATE');
  assert.match(err.message, /b\.yaml:2:3: group "g" is already defined at .*a\.yaml:1:10/);
});

test('a global variable set in two files is an error (the result would depend on file order)', (t) => {
  const { err } = loadError(
    t,
    { 'a.yaml': 'vars: {db: {port: 1}}\n', 'b.yaml': 'vars:\n  db: {port: 2}\n' },
    '',
  );
  assert.equal(err.code, 'INVENTORY_DUPLICATE');
  assert.match(err.message, /b\.yaml:2:\d+: global variable "db.port" is also set at .*a\.yaml:1:\d+/);
});

test('a global mapping extended by two files is fine', (t) => {
  const dir = tempTree(t, { 'a.yaml': 'vars: {db: {port: 1}}\n', 'b.yaml': 'vars: {db: {host: h}}\n' });
  assert.deepEqual(loadInventory(dir).global.length, 2);
});

test('a missing inventory is INPUT_NOT_FOUND naming the path', () => {
  assert.throws(
    () => loadInventory('/nonexistent/inv.yaml'),
    (e) => isCanopyError(e, 'INPUT_NOT_FOUND') && e.message.includes('/nonexistent/inv.yaml'),
  );
});

test('labels and addresses with shell metacharacters are refused', (t) => {
  const { err } = loadError(t, {
    'inv.yaml': 'hosts:\n  a:\n    address: "x; rm -rf /"\n    labels: {role: "web,db"}\n',
  });
  assert.match(err.message, /:3:\d+: host "a": address must be a host name or IP address/);
  assert.match(err.message, /:4:\d+: label "role" value "web,db" in host "a" labels is not allowed/);
});
