import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tempTree } from '../../test/helpers/tree.js';
import { type CanopyError, isCanopyError } from '../errors/index.js';
import { expandHostPattern } from './ansible-inventory.js';
import { loadInventory } from './inventory.js';
import { VarResolver } from './vars.js';

type T = Parameters<typeof tempTree>[0];

const HOSTS = `all:
  vars:
    ansible_user: root
    level: all
  hosts:
    lone: {ansible_host: 198.18.0.1}
  children:
    idc_bj:
      vars: {ansible_group_priority: 1, canopy_group_kind: idc}
      hosts:
        web[01:02]: {}
        db01:
    web:
      vars: {ansible_group_priority: 2}
      hosts:
        web[01:02]:
      children:
        canary:
          hosts:
            web01: {inline: yes}
`;

function fleet(t: T, extra: Record<string, string> = {}) {
  const dir = tempTree(t, { 'hosts.yml': HOSTS, ...extra });
  return { dir, inv: loadInventory(`${dir}/hosts.yml`) };
}

test('an Ansible YAML inventory is detected and read with its groups and children', (t) => {
  const { inv } = fleet(t);
  assert.equal(inv.format, 'ansible');
  assert.deepEqual([...inv.hosts.keys()].sort(), ['db01', 'lone', 'web01', 'web02']);
  assert.deepEqual(
    inv.memberships.get('web01')?.map((g) => g.name),
    ['idc_bj', 'web', 'canary'],
  );
  assert.deepEqual(
    inv.memberships.get('db01')?.map((g) => g.name),
    ['idc_bj'],
  );
});

test('a host in a child group is also in its parent group', (t) => {
  const { inv } = fleet(t, {
    'hosts.yml': 'all:\n  children:\n    parent:\n      children:\n        kid:\n          hosts: {k1: {}}\n',
  });
  assert.deepEqual(
    inv.memberships.get('k1')?.map((g) => g.name),
    ['parent', 'kid'],
  );
});

test('ansible_host is the address; a host without it is addressed by name', (t) => {
  const { inv } = fleet(t);
  assert.equal(inv.hosts.get('lone')?.address, '198.18.0.1');
  assert.equal(inv.hosts.get('db01')?.address, 'db01');
});

test('canopy_group_kind makes an Ansible group an idc or set group; others are custom', (t) => {
  const { inv } = fleet(t);
  assert.equal(inv.groups.get('idc_bj')?.kind, 'idc');
  assert.equal(inv.groups.get('web')?.kind, 'custom');
});

test('group_vars and host_vars files beside the inventory are layered like Ansible', (t) => {
  const { inv } = fleet(t, {
    'group_vars/all.yml': 'level: all-file\nport: 1\n',
    'group_vars/idc_bj.yml': 'level: bj\nport: 2\n',
    'group_vars/web/main.yml': 'level: web\n',
    'group_vars/web/more.yaml': 'extra: true\n',
    'host_vars/web02.yml': 'level: host\n',
  });
  const r = new VarResolver(inv);
  assert.equal(r.vars('db01').level, 'bj');
  assert.equal(r.vars('web01').level, 'web');
  assert.equal(r.vars('web01').extra, true);
  assert.equal(r.vars('web02').level, 'host');
  assert.equal(r.vars('lone').level, 'all-file');
  assert.equal(r.vars('lone').port, 1);
});

test('a child group ranks above its parent, as in Ansible', (t) => {
  const { inv } = fleet(t, { 'group_vars/web.yml': 'x: web\n', 'group_vars/canary.yml': 'x: canary\n' });
  assert.equal(new VarResolver(inv).vars('web01').x, 'canary');
});

test('ansible_group_priority orders groups of the same depth', (t) => {
  const inv2 = `all:
  children:
    aaa: {vars: {ansible_group_priority: 9, x: aaa}, hosts: {h: }}
    zzz: {vars: {ansible_group_priority: 3, x: zzz}, hosts: {h: }}
`;
  const { inv } = fleet(t, { 'hosts.yml': inv2 });
  assert.equal(new VarResolver(inv).vars('h').x, 'aaa');
});

test('files are read as YAML 1.1, as Ansible reads them', (t) => {
  const { inv } = fleet(t, { 'group_vars/all.yml': 'mode: 0644\nflag: yes\nquoted: "0644"\n' });
  const v = new VarResolver(inv).vars('lone');
  assert.deepEqual([v.mode, v.flag, v.quoted], [420, true, '0644']);
  assert.equal(new VarResolver(inv).vars('web01').inline, true);
});

test('an inventory directory with group_vars is read as Ansible', (t) => {
  const { dir } = fleet(t, { 'group_vars/all.yml': 'z: 1\n' });
  const inv = loadInventory(dir);
  assert.equal(inv.format, 'ansible');
  assert.equal(new VarResolver(inv).vars('lone').z, 1);
});

test('a group_vars file for a group the inventory lacks is a warning with the closest name', (t) => {
  const { inv } = fleet(t, { 'group_vars/webb.yml': 'x: 1\n' });
  assert.match(
    inv.warnings[0]?.message ?? '',
    /no group "webb" in the inventory, so this file is not used; did you mean "web"\?/,
  );
});

function refused(t: T, files: Record<string, string>): CanopyError {
  const dir = tempTree(t, files);
  try {
    loadInventory(`${dir}/hosts.yml`);
  } catch (err) {
    if (isCanopyError(err)) return err;
    throw err;
  }
  assert.fail('expected the inventory to be refused');
}

test('a typo in a group body is an error with the closest key', (t) => {
  const err = refused(t, { 'hosts.yml': 'all:\n  children:\n    web:\n      host: {a: }\n' });
  assert.match(
    err.message,
    /hosts\.yml:4:7: unknown key "host" in Ansible group "web"; did you mean "hosts"\?/,
  );
});

test('a variable named canopy in group_vars is refused with its file and line', (t) => {
  const err = refused(t, { 'hosts.yml': HOSTS, 'group_vars/web.yml': 'a: 1\ncanopy: x\n' });
  assert.equal(err.code, 'VARS_RESERVED');
  assert.match(err.message, /group_vars\/web\.yml:2:1: the variable "canopy" is reserved/);
});

test('a bad canopy_group_kind is an error', (t) => {
  const err = refused(t, { 'hosts.yml': HOSTS, 'group_vars/web.yml': 'canopy_group_kind: sett\n' });
  assert.match(
    err.message,
    /group "web": canopy_group_kind must be one of idc, set, custom.*did you mean "set"\?/,
  );
});

test('a group containing itself is an error naming the cycle', (t) => {
  const err = refused(t, {
    'hosts.yml':
      'all:\n  children:\n    a:\n      children:\n        b:\n          children:\n            a:\n',
  });
  assert.match(err.message, /groups form a cycle: a -> b -> a/);
});

test('an INI inventory is refused with the command that converts it', (t) => {
  const err = refused(t, { 'hosts.yml': '[web]\nweb01 ansible_host=1.2.3.4\n' });
  assert.match(err.message, /INI inventory.*ansible-inventory -i .* --list --yaml/);
});

test('host ranges expand as in Ansible', () => {
  assert.deepEqual(expandHostPattern('web[01:03].x'), ['web01.x', 'web02.x', 'web03.x']);
  assert.deepEqual(expandHostPattern('db-[a:c]'), ['db-a', 'db-b', 'db-c']);
  assert.deepEqual(expandHostPattern('n[1:9:4]'), ['n1', 'n5', 'n9']);
  assert.deepEqual(expandHostPattern('r[1:2]-[a:b]'), ['r1-a', 'r1-b', 'r2-a', 'r2-b']);
  assert.deepEqual(expandHostPattern('plain'), ['plain']);
});
