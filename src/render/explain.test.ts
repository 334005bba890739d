import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tempTree } from '../../test/helpers/tree.js';
import { explainVar } from './explain.js';
import { loadInventory } from './inventory.js';
import { parseVarFlag } from './task-vars.js';

const INV = `vars:
  app:
    port: 80
    db: {host: g, port: 1}
groups:
  web:
    kind: set
    hosts: [h]
    vars:
      app:
        port: 8080
        db: {host: web}
  flat:
    kind: custom
    hosts: [f]
    vars:
      app: {db: none}
hosts:
  h:
    vars:
      app: {port: 9090}
  f: {}
`;

function setup(t: Parameters<typeof tempTree>[0]) {
  const dir = tempTree(t, { 'inv.yaml': INV });
  return { inv: loadInventory(`${dir}/inv.yaml`), file: `${dir}/inv.yaml` };
}

test('explain lists every layer defining a scalar, lowest first, and the highest wins', (t) => {
  const { inv, file } = setup(t);
  const e = explainVar(inv, 'h', 'app.port');
  assert.equal(e.defined, true);
  assert.equal(e.value, 9090);
  assert.deepEqual(
    e.entries.map((x) => [x.layer, x.origin, x.line, x.value, x.status]),
    [
      ['global', file, 3, 80, 'overridden'],
      ['group web (set, priority 0)', file, 11, 8080, 'overridden'],
      ['host h', file, 21, 9090, 'wins'],
    ],
  );
});

test('explain of a mapping shows each contributing layer as merged, and the merged value', (t) => {
  const { inv } = setup(t);
  const e = explainVar(inv, 'h', 'app.db');
  assert.deepEqual(e.value, { host: 'web', port: 1 });
  assert.deepEqual(
    e.entries.map((x) => x.status),
    ['merged', 'merged'],
  );
});

test('explain shows a parent set to a scalar, which replaces the key', (t) => {
  const { inv } = setup(t);
  const e = explainVar(inv, 'f', 'app.db.host');
  assert.equal(e.defined, false);
  assert.deepEqual(
    e.entries.map((x) => [x.path, x.value, x.status]),
    [
      ['app.db.host', 'g', 'overridden'],
      ['app.db', 'none', 'wins'],
    ],
  );
});

test('explain includes task variables, with the flag as their origin', (t) => {
  const { inv } = setup(t);
  const e = explainVar(inv, 'h', 'app.port', [parseVarFlag('app.port=1')]);
  const last = e.entries.at(-1);
  assert.deepEqual(
    [last?.layer, last?.origin, last?.status, e.value],
    ['task', '--var app.port=1', 'wins', 1],
  );
});

test('explain of an undefined key has no entries', (t) => {
  const { inv } = setup(t);
  const e = explainVar(inv, 'h', 'nope.nothing');
  assert.deepEqual([e.defined, e.entries.length], [false, 0]);
});

test('explain of canopy.* names the built-in host facts', (t) => {
  const { inv } = setup(t);
  const e = explainVar(inv, 'h', 'canopy.host.groups');
  assert.deepEqual(e.value, ['all', 'web']);
  assert.equal(e.entries[0]?.kind, 'builtin');
});
