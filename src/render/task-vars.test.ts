import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tempTree } from '../../test/helpers/tree.js';
import { isCanopyError } from '../errors/index.js';
import { parseTaskVars, parseVarFlag } from './task-vars.js';

test('--var parses its value as YAML', () => {
  assert.deepEqual(parseVarFlag('port=5433').vars, { port: 5433 });
  assert.deepEqual(parseVarFlag('on=true').vars, { on: true });
  assert.deepEqual(parseVarFlag('l=[a, b]').vars, { l: ['a', 'b'] });
  assert.deepEqual(parseVarFlag('s="5433"').vars, { s: '5433' });
});

test('--var with a dotted key sets a nested key', () => {
  assert.deepEqual(parseVarFlag('db.port=5433').vars, { db: { port: 5433 } });
});

test('--var keeps everything after the first = as the value', () => {
  assert.deepEqual(parseVarFlag('url=a=b').vars, { url: 'a=b' });
});

test('--var with an empty value is the empty string', () => {
  assert.deepEqual(parseVarFlag('x=').vars, { x: '' });
});

test('--var without = is an error naming the flag', () => {
  assert.throws(
    () => parseVarFlag('justkey'),
    (e) => isCanopyError(e, 'VARS_BAD_TASK_VAR') && /--var justkey/.test(e.message),
  );
});

test('--var with a bad key is an error', () => {
  assert.throws(
    () => parseVarFlag('a..b=1'),
    (e) => isCanopyError(e, 'VARS_BAD_TASK_VAR') && /not a variable name/.test(e.message),
  );
});

test('--var with invalid YAML is an error that says to quote it', () => {
  assert.throws(
    () => parseVarFlag('x=[1, 2'),
    (e) => isCanopyError(e, 'VARS_BAD_TASK_VAR') && /quote it/.test(e.message),
  );
});

test('--var canopy... is refused as reserved', () => {
  assert.throws(
    () => parseVarFlag('canopy.host.name=x'),
    (e) => isCanopyError(e, 'VARS_RESERVED'),
  );
});

test('--vars-file reads a mapping and keeps command-line order', (t) => {
  const dir = tempTree(t, { 'v.yaml': 'db: {port: 1, host: h}\n' });
  const sources = parseTaskVars([
    { kind: 'var', text: 'db.port=2' },
    { kind: 'file', path: `${dir}/v.yaml` },
  ]);
  assert.deepEqual(
    sources.map((s) => s.vars),
    [{ db: { port: 2 } }, { db: { port: 1, host: 'h' } }],
  );
});

test('--vars-file that is not a mapping is an error naming the file', (t) => {
  const dir = tempTree(t, { 'v.yaml': '- a\n- b\n' });
  assert.throws(
    () => parseTaskVars([{ kind: 'file', path: `${dir}/v.yaml` }]),
    (e) => isCanopyError(e, 'VARS_BAD_TASK_VAR') && e.message.includes('v.yaml'),
  );
});

test('--vars-file defining canopy is refused with its line', (t) => {
  const dir = tempTree(t, { 'v.yaml': 'a: 1\ncanopy: 2\n' });
  assert.throws(
    () => parseTaskVars([{ kind: 'file', path: `${dir}/v.yaml` }]),
    (e) => isCanopyError(e, 'VARS_RESERVED') && e.message.includes('v.yaml:2:1'),
  );
});

test('a missing --vars-file is INPUT_NOT_FOUND', () => {
  assert.throws(
    () => parseTaskVars([{ kind: 'file', path: '/nonexistent/v.yaml' }]),
    (e) => isCanopyError(e, 'INPUT_NOT_FOUND'),
  );
});
