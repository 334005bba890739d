import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tempTree } from '../../test/helpers/tree.js';
import { isCanopyError } from '../errors/index.js';
import { loadAgentConfig, parseDuration } from './config.js';

test('a config file sets roots, run_as, labels, heartbeat and bind', (t) => {
  const dir = tempTree(t, {
    'agent.yaml':
      'name: web-01\nroots: [/srv/app]\nrun_as: [deploy]\nlabels: {role: web, idc: bj}\nheartbeat: 2s\nbind: 127.0.0.11\n',
  });
  const c = loadAgentConfig(`${dir}/agent.yaml`);
  assert.deepEqual(
    { name: c.name, roots: c.roots, runAs: c.runAs, labels: c.labels, hb: c.heartbeatMs, bind: c.bind },
    {
      name: 'web-01',
      roots: ['/srv/app'],
      runAs: ['deploy'],
      labels: { role: 'web', idc: 'bj' },
      hb: 2000,
      bind: '127.0.0.11',
    },
  );
});

test('bad config is refused naming file, line and key', (t) => {
  const dir = tempTree(t, {
    'typo.yaml': 'roots: [/srv]\nrun-as: [x]\n',
    'rel.yaml': 'labels: {a: b}\nroots: [relative/dir]\n',
    'hb.yaml': 'heartbeat: soon\n',
    'yaml.yaml': 'roots: [/a\n',
  });
  const message = (f: string) => {
    try {
      loadAgentConfig(`${dir}/${f}`);
      return 'accepted';
    } catch (err) {
      assert.ok(isCanopyError(err));
      return err.message;
    }
  };
  assert.match(message('typo.yaml'), /typo\.yaml:2: run-as: unknown key \(known: .*run_as/);
  assert.match(message('rel.yaml'), /rel\.yaml:2: roots: root "relative\/dir" must be an absolute path/);
  assert.match(message('hb.yaml'), /hb\.yaml:1: heartbeat: "soon" is not a duration/);
  assert.match(message('yaml.yaml'), /yaml\.yaml:\d+:/);
});

test('durations', () => {
  assert.equal(parseDuration('500ms', 'x'), 500);
  assert.equal(parseDuration('2m', 'x'), 120_000);
  assert.equal(parseDuration('1.5', 'x'), 1500);
  assert.equal(parseDuration(3, 'x'), 3000);
  assert.throws(() => parseDuration('0s', 'x'), /not a duration/);
  assert.throws(() => parseDuration('-1', 'x'), /not a duration/);
});
