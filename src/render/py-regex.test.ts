/**
 * Tests of py-regex.ts used directly; the translation itself is tested through the regex filters in
 * regex-filters.test.ts.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { compilePyRegex } from './py-regex.js';

test('compilePyRegex reports the number and names of groups', () => {
  const re = compilePyRegex('(a)(?P<b>b)(?:c)');
  assert.equal(re.groups, 2);
  assert.equal(re.names.get('b'), 2);
});
