/**
 * Tests of regex-filters.ts, through the filter table as nunjucks calls it: regex_replace,
 * regex_search, regex_findall and regex_escape, which also exercise py-regex.ts's translation and
 * py-regex-template.ts's replacements. Expected strings come from Python 3.11's re, run once by
 * hand and pasted in as literals.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { assertFilterError, call, kw } from '../../test/helpers/filters.js';

// --- regex_replace

test('regex_replace replaces every match', () => {
  assert.equal(call('regex_replace', 'a.b.c', '\\.', '-'), 'a-b-c');
});

test('regex_replace defaults to an empty replacement', () => {
  assert.equal(call('regex_replace', 'a1b22', '\\d'), 'ab');
});

test('regex_replace expands \\1 and \\g<name> in the replacement', () => {
  assert.equal(call('regex_replace', 'hello world', '(\\w+) (\\w+)', '\\2 \\1'), 'world hello');
  assert.equal(
    call('regex_replace', 'k=v', '(?P<key>\\w)=(?P<val>\\w)', '\\g<val>:\\g<key>\\g<0>'),
    'v:kk=v',
  );
  assert.equal(call('regex_replace', '2024-01-02', '(\\d+)-(\\d+)-(\\d+)', '\\3/\\2/\\1'), '02/01/2024');
});

test('regex_replace keeps $ in the replacement literal', () => {
  assert.equal(call('regex_replace', 'price 10', '(\\d+)', '$\\1.00 $1 $&'), 'price $10.00 $1 $&');
});

test('regex_replace inserts an empty string for a group that did not match', () => {
  assert.equal(call('regex_replace', 'ab', '(a)|(b)', '[\\2]'), '[][b]');
});

test('regex_replace translates (?P=name) backreferences', () => {
  assert.equal(call('regex_replace', 'aa bb cd', '(?P<c>\\w)(?P=c)', '<\\g<c>>'), '<a> <b> cd');
});

test('regex_replace replaces empty matches like Python 3.7+', () => {
  assert.equal(call('regex_replace', 'abxd', 'x*', '-'), '-a-b--d-');
});

test('regex_replace matches $ before a final newline, like Python', () => {
  assert.equal(call('regex_replace', 'line1\nline2\n', '$', '!'), 'line1\nline2!\n!');
});

test('regex_replace with multiline anchors ^ and $ at every line', () => {
  assert.equal(call('regex_replace', 'line1\nline2\n', '^l', 'L', false, true), 'Line1\nLine2\n');
  assert.equal(call('regex_replace', 'a\nb', '$', ';', kw({ multiline: true })), 'a;\nb;');
});

test('regex_replace with ignorecase matches either case', () => {
  assert.equal(call('regex_replace', 'ABC abc', 'b', '*', true), 'A*C a*c');
  assert.equal(call('regex_replace', 'ABC', 'b', '*', kw({ ignorecase: true })), 'A*C');
});

test('regex_replace honours inline flags at the start of the pattern', () => {
  assert.equal(call('regex_replace', 'foo.bar', '(?i)FOO', 'x'), 'x.bar');
  assert.equal(call('regex_replace', 'foo\nbar', '(?s)o.b', 'x'), 'foxar');
  assert.equal(call('regex_replace', 'foo bar', '(?x) o o  # two o\n', 'X'), 'fX bar');
});

test('regex_replace makes . skip only \\n, as Python does', () => {
  assert.equal(call('regex_replace', 'x\r\ny', '.', '_'), '__\n_');
});

test('regex_replace uses Unicode \\w, \\d and \\b', () => {
  assert.equal(call('regex_replace', 'café au lait', '\\b\\w', '^'), '^afé ^u ^ait');
  assert.equal(call('regex_replace', 'a1٣b', '\\d', '#'), 'a##b');
});

test('regex_replace treats a stray ] or { as a literal', () => {
  assert.equal(call('regex_replace', 'a]b', ']', 'X'), 'aXb');
  assert.equal(call('regex_replace', 'a{b}', '{b}', 'X'), 'aX');
  assert.equal(call('regex_replace', 'abc', '[]a]', 'X'), 'Xbc');
});

test('regex_replace accepts the {,n} repeat', () => {
  assert.equal(call('regex_replace', 'aaa', 'a{,2}', 'X'), 'XXX');
});

test('regex_replace accepts escaped punctuation Python allows', () => {
  assert.equal(call('regex_replace', 'x-y a b', '\\-|\\ ', '+'), 'x+y+a+b');
});

test('regex_replace translates \\A and \\Z', () => {
  assert.equal(call('regex_replace', 'abc', '\\Aa|c\\Z', 'X'), 'XbX');
  assert.equal(call('regex_replace', 'ab\n', 'b\\Z', 'X'), 'ab\n');
});

test('regex_replace handles escapes in the replacement', () => {
  assert.equal(call('regex_replace', 'tab\there', '\\t', '\\n'), 'tab\nhere');
  assert.equal(call('regex_replace', 'q', 'q', '\\\\'), '\\');
  assert.equal(call('regex_replace', 'q', 'q', '\\-'), '\\-');
  assert.equal(call('regex_replace', 'a', 'a', '\\101'), 'A');
});

test('regex_replace works on astral characters as single characters', () => {
  assert.equal(call('regex_replace', '😀x😀', '.', '-'), '---');
});

test('regex_replace stops after count replacements', () => {
  assert.equal(call('regex_replace', 'aaa', 'a', 'b', kw({ count: 2 })), 'bba');
});

test('regex_replace fails when mandatory_count is not met', () => {
  assertFilterError(
    () => call('regex_replace', 'aaa', 'a', 'b', kw({ mandatory_count: 2 })),
    'regex_replace',
    /expected 2 substitution\(s\).*made 3/,
  );
});

test('regex_replace converts a non-string value with str()', () => {
  assert.equal(call('regex_replace', 12345, '3', '-'), '12-45');
});

test('regex_replace fails on an invalid pattern', () => {
  assertFilterError(
    () => call('regex_replace', 'x', '(', ''),
    'regex_replace',
    /"\(" is not a valid regular expression/,
  );
  assertFilterError(
    () => call('regex_replace', 'x', '*x', ''),
    'regex_replace',
    /not a valid regular expression/,
  );
});

test('regex_replace fails on escapes Python rejects', () => {
  assertFilterError(() => call('regex_replace', 'x', '\\q', ''), 'regex_replace', /bad escape \\q/);
});

test('regex_replace fails on Python syntax JS cannot run', () => {
  assertFilterError(() => call('regex_replace', 'x', '(?i:x)', ''), 'regex_replace', /scoped inline flags/);
  assertFilterError(
    () => call('regex_replace', 'x', 'a(?i)', ''),
    'regex_replace',
    /global flags not at the start/,
  );
  assertFilterError(() => call('regex_replace', 'x', '(?>x)', ''), 'regex_replace', /atomic groups/);
});

test('regex_replace fails on a backreference to an unknown group', () => {
  assertFilterError(
    () => call('regex_replace', 'x', '(x)\\2', ''),
    'regex_replace',
    /invalid group reference 2/,
  );
  assertFilterError(
    () => call('regex_replace', 'x', '(?P=nope)', ''),
    'regex_replace',
    /unknown group name 'nope'/,
  );
});

test('regex_replace fails on a replacement naming an unknown group', () => {
  assertFilterError(
    () => call('regex_replace', 'x', '(x)', '\\2'),
    'regex_replace',
    /bad replacement.*invalid group reference 2/,
  );
  assertFilterError(
    () => call('regex_replace', 'x', 'x', '\\g<n>'),
    'regex_replace',
    /unknown group name 'n'/,
  );
  assertFilterError(() => call('regex_replace', 'x', 'x', '\\q'), 'regex_replace', /bad escape \\q/);
});

test('regex_replace fails on an undefined value', () => {
  assertFilterError(() => call('regex_replace', undefined, 'x'), 'regex_replace', /undefined/);
});

// --- regex_search, regex_findall, regex_escape

test('regex_search returns the first match', () => {
  assert.equal(call('regex_search', 'server-12.example', '\\d+'), '12');
});

test('regex_search returns undefined when nothing matches', () => {
  assert.equal(call('regex_search', 'abc', '\\d'), undefined);
});

test('regex_search returns the listed groups', () => {
  assert.deepEqual(call('regex_search', 'k=v', '(?P<key>\\w)=(\\w)', '\\2', '\\g<key>'), ['v', 'k']);
});

test('regex_search takes ignorecase and multiline keywords', () => {
  assert.equal(call('regex_search', 'a\nFOO', '^foo', kw({ ignorecase: true, multiline: true })), 'FOO');
});

test('regex_search fails on a bad group argument', () => {
  assertFilterError(() => call('regex_search', 'x', '(x)', 'one'), 'regex_search', /unknown argument "one"/);
  assertFilterError(
    () => call('regex_search', 'x', '(x)', '\\3'),
    'regex_search',
    /invalid group reference 3/,
  );
});

test('regex_search fails without a pattern', () => {
  assertFilterError(() => call('regex_search', 'x'), 'regex_search', /missing required argument 'regex'/);
});

test('regex_findall returns whole matches, the group, or all groups', () => {
  assert.deepEqual(call('regex_findall', 'a1 b22', '\\d+'), ['1', '22']);
  assert.deepEqual(call('regex_findall', 'a1 b22', '[a-z](\\d+)'), ['1', '22']);
  assert.deepEqual(call('regex_findall', 'a1 b22', '([a-z])(\\d+)'), [
    ['a', '1'],
    ['b', '22'],
  ]);
});

test('regex_findall fails without a pattern', () => {
  assertFilterError(() => call('regex_findall', 'x'), 'regex_findall', /missing required argument 'regex'/);
});

test('regex_escape escapes like Python re.escape', () => {
  assert.equal(call('regex_escape', 'a.b*c (d) e_f-g'), 'a\\.b\\*c\\ \\(d\\)\\ e_f\\-g');
});

test('regex_escape escapes POSIX basic specials', () => {
  assert.equal(call('regex_escape', 'a.b*[c]^$', 'posix_basic'), 'a\\.b\\*\\[c\\]\\^\\$');
});

test('regex_escape fails on an unknown regex type', () => {
  assertFilterError(() => call('regex_escape', 'x', 'pcre'), 'regex_escape', /invalid regex type "pcre"/);
});
