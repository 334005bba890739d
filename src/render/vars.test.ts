import assert from 'node:assert/strict';
import { test } from 'node:test';
import { stringify } from 'yaml';
import { tempTree } from '../../test/helpers/tree.js';
import { isCanopyError } from '../errors/index.js';
import { loadInventory } from './inventory.js';
import { LAYER_KINDS, type LayerKind } from './inventory-model.js';
import { parseVarFlag } from './task-vars.js';
import { hostLayers, VarResolver } from './vars.js';

/** An inventory where exactly the given layers set `x` (to the layer's name) for host h. */
function inventoryWith(layers: readonly LayerKind[]) {
  const set = (k: LayerKind) => (layers.includes(k) ? { x: k } : {});
  return {
    vars: set('global'),
    groups: {
      all: { vars: set('all') },
      g_idc: { kind: 'idc', hosts: ['h'], vars: set('idc') },
      g_set: { kind: 'set', hosts: ['h'], vars: set('set') },
      g_custom: { kind: 'custom', hosts: ['h'], vars: set('custom') },
    },
    hosts: { h: { vars: set('host') } },
  };
}

function resolve(t: Parameters<typeof tempTree>[0], doc: unknown, task: string[] = []) {
  const dir = tempTree(t, { 'inv.yaml': stringify(doc) });
  const inv = loadInventory(`${dir}/inv.yaml`);
  return { inv, resolver: new VarResolver(inv, task.map(parseVarFlag)) };
}

for (let i = 0; i < LAYER_KINDS.length; i++) {
  for (let j = i + 1; j < LAYER_KINDS.length; j++) {
    const low = LAYER_KINDS[i] as LayerKind;
    const high = LAYER_KINDS[j] as LayerKind;
    test(`layer ${high} beats layer ${low}`, (t) => {
      const { resolver } = resolve(
        t,
        inventoryWith([low, high].filter((k) => k !== 'task')),
        high === 'task' ? ['x=task'] : [],
      );
      assert.equal(resolver.vars('h').x, high);
    });
  }
}

test('every layer applies in the documented order', (t) => {
  const { inv } = resolve(t, inventoryWith([...LAYER_KINDS]));
  assert.deepEqual(
    hostLayers(inv, 'h').map((l) => l.kind),
    ['global', 'all', 'idc', 'set', 'custom', 'host', 'task'],
  );
});

test('among groups of one kind the higher priority wins, whatever the names', (t) => {
  const { resolver } = resolve(t, {
    groups: {
      aaa: { kind: 'set', priority: 5, hosts: ['h'], vars: { x: 'aaa' } },
      zzz: { kind: 'set', priority: 1, hosts: ['h'], vars: { x: 'zzz' } },
    },
    hosts: { h: {} },
  });
  assert.equal(resolver.vars('h').x, 'aaa');
});

test('on a priority tie the group whose name sorts later wins', (t) => {
  const { resolver } = resolve(t, {
    groups: {
      beta: { hosts: ['h'], vars: { x: 'beta' } },
      alpha: { hosts: ['h'], vars: { x: 'alpha' } },
    },
    hosts: { h: {} },
  });
  assert.equal(resolver.vars('h').x, 'beta');
});

test('a group kind outranks any priority of a lower kind', (t) => {
  const { resolver } = resolve(t, {
    groups: {
      dc: { kind: 'idc', priority: 1000, hosts: ['h'], vars: { x: 'idc' } },
      role: { kind: 'set', priority: -5, hosts: ['h'], vars: { x: 'set' } },
    },
    hosts: { h: {} },
  });
  assert.equal(resolver.vars('h').x, 'set');
});

test('the result does not depend on the order groups and keys are written in', (t) => {
  const groups = {
    a: { kind: 'set', hosts: ['h'], vars: { m: { p: 1, q: 1 }, x: 'a' } },
    b: { kind: 'set', hosts: ['h'], vars: { m: { q: 2 }, x: 'b' } },
    c: { kind: 'idc', hosts: ['h'], vars: { m: { r: 3 }, x: 'c' } },
  };
  const reversed = Object.fromEntries(Object.entries(groups).reverse());
  const one = resolve(t, { groups, hosts: { h: {} } }).resolver.vars('h');
  const two = resolve(t, { hosts: { h: {} }, groups: reversed }).resolver.vars('h');
  assert.deepEqual(one, two);
  assert.deepEqual(one, { m: { p: 1, q: 2, r: 3 }, x: 'b' });
});

test('mappings deep-merge across layers while lists replace', (t) => {
  const { resolver } = resolve(t, {
    vars: { app: { db: { host: 'g', port: 1 }, nodes: ['a', 'b'] } },
    groups: { web: { hosts: ['h'], vars: { app: { db: { host: 'web' }, nodes: ['c'] } } } },
    hosts: { h: { vars: { app: { db: { pool: 5 } } } } },
  });
  assert.deepEqual(resolver.vars('h'), { app: { db: { host: 'web', port: 1, pool: 5 }, nodes: ['c'] } });
});

test('task variables: later --var wins, dotted keys merge into mappings', (t) => {
  const { resolver } = resolve(t, { vars: { db: { host: 'x', port: 1 } }, hosts: { h: {} } }, [
    'db.port=2',
    'db.port=3',
  ]);
  assert.deepEqual(resolver.vars('h'), { db: { host: 'x', port: 3 } });
});

test('templates see canopy.host facts, read-only', (t) => {
  const { resolver } = resolve(t, {
    groups: { web: { kind: 'set', match: { role: 'web' } } },
    hosts: { h: { address: '198.18.0.9', labels: { role: 'web' } } },
  });
  const facts = resolver.templateVars('h').canopy as { host: Record<string, unknown> };
  assert.deepEqual(facts.host, {
    name: 'h',
    address: '198.18.0.9',
    labels: { role: 'web' },
    groups: ['all', 'web'],
  });
  assert.ok(Object.isFrozen(facts.host));
  assert.ok(Object.isFrozen(facts.host.labels));
});

test('hosts in the same groups share the group merge but get their own host layer', (t) => {
  const { resolver } = resolve(t, {
    groups: { web: { hosts: ['a', 'b'], vars: { m: { g: 1 } } } },
    hosts: { a: { vars: { m: { h: 'a' } } }, b: { vars: { m: { h: 'b' } } } },
  });
  assert.deepEqual(resolver.vars('a'), { m: { g: 1, h: 'a' } });
  assert.deepEqual(resolver.vars('b'), { m: { g: 1, h: 'b' } });
});

test('an unknown host is an error with the closest name', (t) => {
  const { resolver } = resolve(t, { hosts: { 'web-01': {} } });
  assert.throws(
    () => resolver.vars('web-1'),
    (e) => isCanopyError(e, 'INVENTORY_UNKNOWN_HOST') && /did you mean "web-01"/.test(e.message),
  );
});
