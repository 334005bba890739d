import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MASK, maskDiff, maskSecrets, secretValues } from './secrets.js';

test('values under secret-looking names, at any depth, are secret', () => {
  const vars = {
    db: { password: 'hunter22', host: 'db.internal', creds: { api_token: 'tok-123' } },
    ssl_key_path: '/etc/ssl/k.pem',
    app_secret: 12345,
    plain: 'visible',
    SECRET_LIST: ['aaa-1', 'bbb-2'],
  };
  assert.deepEqual(secretValues(vars, []), [
    '/etc/ssl/k.pem',
    'hunter22',
    'tok-123',
    '12345',
    'aaa-1',
    'bbb-2',
  ]);
});

test('declared secrets (names and dotted paths) are secret; missing paths are ignored', () => {
  const vars = { app: { dsn: 'postgres://u:pw@h/db', port: 5432 }, other: 'x-visible' };
  assert.deepEqual(secretValues(vars, ['app.dsn', 'nope.missing']), ['postgres://u:pw@h/db']);
  assert.deepEqual(secretValues(vars, ['app']), ['postgres://u:pw@h/db', '5432']);
});

test('values shorter than 3 characters and the canopy facts are not collected', () => {
  assert.deepEqual(secretValues({ password: 'ab', canopy: { token: 'factvalue' } }, []), []);
});

test('masking replaces every occurrence, longest secret first', () => {
  const secrets = secretValues({ password: 'abcabc', token: 'abc' }, []);
  assert.equal(maskSecrets('x=abcabc y=abc z=abcab', secrets), `x=${MASK} y=${MASK} z=${MASK}ab`);
  assert.equal(maskSecrets('nothing here', secrets), 'nothing here');
});

test('a diff masks a removed line whose old secret no variable holds any more', () => {
  const patch = [
    '--- a',
    '+++ b',
    '@@ -1,2 +1,2 @@',
    '-password = old-secret',
    '+password = new-secret',
    ' port = 80',
  ].join('\n');
  const out = maskDiff(patch, ['new-secret']);
  assert.equal(
    out,
    ['--- a', '+++ b', '@@ -1,2 +1,2 @@', `-password = ${MASK}`, `+password = ${MASK}`, ' port = 80'].join(
      '\n',
    ),
  );
  assert.doesNotMatch(out, /old-secret/);
  // Unrelated removed lines stay as they are.
  assert.match(maskDiff('-port = 81\n+password = new-secret', ['new-secret']), /-port = 81/);
});
