import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tempTree } from '../../test/helpers/tree.js';
import { isCanopyError } from '../errors/index.js';
import {
  checkAgentConfig,
  DEFAULT_AGENT_CONFIG,
  loadAgentConfig,
  parseDuration,
  parseHostPort,
  parseSize,
} from './config.js';

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

test('peer_listen is HOST:PORT and chunk_quota a size; bad values name the key', () => {
  assert.deepEqual(parseHostPort('127.0.0.1:0'), { host: '127.0.0.1', port: 0 });
  assert.deepEqual(parseHostPort('[::1]:7444'), { host: '::1', port: 7444 });
  for (const bad of ['127.0.0.1', ':80', 'host:99999', 'a b:1'])
    assert.equal(parseHostPort(bad), undefined, bad);
  assert.equal(parseSize('10G', 'q'), 10 * 1024 ** 3);
  assert.equal(parseSize('512M', 'q'), 512 * 1024 ** 2);
  assert.equal(parseSize('1.5KiB', 'q'), 1536);
  assert.equal(parseSize(4096, 'q'), 4096);
  assert.throws(() => parseSize('lots', 'chunk_quota'), /chunk_quota: "lots" is not a size/);
  assert.throws(
    () =>
      checkAgentConfig({ ...DEFAULT_AGENT_CONFIG, labels: {}, peerListen: 'nope' }, (k) => `agent.yaml:${k}`),
    /agent\.yaml:peer_listen: "nope" is not HOST:PORT/,
  );
});

test('allow_setid is off unless set to true; a value that is not a boolean names the line', (t) => {
  const dir = tempTree(t, {
    'on.yaml': 'roots: [/srv]\nallow_setid: true\n',
    'off.yaml': 'roots: [/srv]\n',
    'bad.yaml': 'roots: [/srv]\nallow_setid: yes\n',
  });
  assert.equal(DEFAULT_AGENT_CONFIG.allowSetid, false);
  assert.equal(loadAgentConfig(`${dir}/on.yaml`).allowSetid, true);
  assert.equal(loadAgentConfig(`${dir}/off.yaml`).allowSetid, false);
  assert.throws(() => loadAgentConfig(`${dir}/bad.yaml`), /bad\.yaml:2: allow_setid: must be true or false/);
});
