import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { test } from 'node:test';
import { AGENT_NODE_FLAGS } from './agent-command.js';

test('bin/canopy starts `canopy agent` with exactly AGENT_NODE_FLAGS (the demo, tests and benchmarks use the constant)', () => {
  const launcher = readFileSync(resolve(import.meta.dirname, '..', '..', 'bin', 'canopy'), 'utf8');
  const line = launcher.split('\n').find((l) => l.trim().startsWith('agent)'));
  assert.ok(line, 'bin/canopy has no `agent)` case');
  const m = /exec node (.*) "\$main"/.exec(line);
  assert.ok(m, `unexpected agent line in bin/canopy: ${line}`);
  assert.deepEqual((m[1] as string).split(/\s+/), AGENT_NODE_FLAGS);
});
