// docs/errors.md must list exactly the codes in src/errors (fastify's errors-doc test, for canopy).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { CODES } from '../src/errors/index.js';

test('docs/errors.md lists every error code, and only those', () => {
  const doc = readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8');
  const documented = new Set([...doc.matchAll(/^\| `([A-Z_]+)` \|/gm)].map((m) => m[1]));
  const defined = new Set(Object.keys(CODES));
  assert.deepEqual(
    [...defined].filter((c) => !documented.has(c)),
    [],
    'codes missing from docs/errors.md',
  );
  assert.deepEqual(
    [...documented].filter((c) => c && !defined.has(c)),
    [],
    'docs/errors.md lists unknown codes',
  );
});
