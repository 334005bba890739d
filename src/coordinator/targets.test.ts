import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { tempTree } from '../../test/helpers/tree.js';
import { loadInventory } from '../render/index.js';
import { type FleetView, resolveTargets } from './targets.js';

function view(t: Parameters<typeof tempTree>[0]): FleetView {
  const dir = tempTree(t, {});
  writeFileSync(
    `${dir}/inv.yaml`,
    `groups:
  web: {kind: set, match: {role: web}}
hosts:
  web-01: {labels: {role: web, idc: bj}}
  web-02: {labels: {role: web, idc: sh}}
  db-01: {labels: {role: db, idc: bj}}
`,
  );
  return {
    inventory: loadInventory(`${dir}/inv.yaml`),
    agents: new Map<string, Record<string, string>>([
      ['web-01', { rack: 'r1' }],
      ['lone-01', { role: 'web', idc: 'bj' }],
    ]),
  };
}

test('all, groups, hosts, ranges and selectors resolve to sorted, unique host names', (t) => {
  const v = view(t);
  assert.deepEqual(resolveTargets(['all'], v), { ok: true, hosts: ['db-01', 'lone-01', 'web-01', 'web-02'] });
  assert.deepEqual(resolveTargets(['web', 'web-01'], v), { ok: true, hosts: ['web-01', 'web-02'] });
  assert.deepEqual(resolveTargets(['web-[01-02]'], v), { ok: true, hosts: ['web-01', 'web-02'] });
  // Selectors see inventory labels over the agent's own, and agents outside the inventory.
  assert.deepEqual(resolveTargets(['role=web,idc=bj'], v), { ok: true, hosts: ['lone-01', 'web-01'] });
  assert.deepEqual(resolveTargets(['role=web,idc!=bj'], v), { ok: true, hosts: ['web-02'] });
  assert.deepEqual(resolveTargets(['rack=r1'], v), { ok: true, hosts: ['web-01'] });
});

test('a target that names nothing is refused with its index and a suggestion', (t) => {
  const v = view(t);
  const typo = resolveTargets(['web', 'wbe-01'], v);
  assert.equal(typo.ok, false);
  assert.equal(!typo.ok && typo.index, 1);
  assert.match(!typo.ok ? typo.message : '', /"wbe-01" is not a host.*did you mean "web-01"/);
  const none = resolveTargets(['role=cache'], v);
  assert.match(!none.ok ? none.message : '', /matches no host/);
  const range = resolveTargets(['web-[01-03]'], v);
  assert.match(!range.ok ? range.message : '', /no host named web-03/);
  const bad = resolveTargets(['role=web,idc'], v);
  assert.match(!bad.ok ? bad.message : '', /"idc" is not KEY=VALUE/);
});
