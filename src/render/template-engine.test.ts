import assert from 'node:assert/strict';
import { symlinkSync } from 'node:fs';
import { test } from 'node:test';
import { tempTree } from '../../test/helpers/tree.js';
import { type CanopyError, isCanopyError } from '../errors/index.js';
import { nunjucks, transformer } from './nunjucks-internals.js';
import { fastLoopVars, TemplateEngine } from './template-engine.js';

type T = Parameters<typeof tempTree>[0];

function render(
  t: T,
  tpl: string,
  vars: Record<string, unknown> = {},
  extra: Record<string, string> = {},
): string {
  const dir = tempTree(t, { 't.j2': tpl, ...extra });
  return new TemplateEngine({ root: dir }).template('t.j2').render(vars, 'web-01');
}

function renderError(
  t: T,
  tpl: string,
  vars: Record<string, unknown> = {},
  extra: Record<string, string> = {},
): CanopyError {
  try {
    render(t, tpl, vars, extra);
  } catch (err) {
    if (isCanopyError(err)) return err;
    throw err;
  }
  assert.fail('expected the render to fail');
}

test('trim_blocks drops the newline after a block tag, and the trailing newline is kept', (t) => {
  assert.equal(render(t, '{% if true %}\nyes\n{% endif %}\nend\n'), 'yes\nend\n');
});

test('lstrip_blocks is off: indentation before a block tag stays', (t) => {
  assert.equal(render(t, 'a\n  {% if true %}\nb\n  {% endif %}\n'), 'a\n  b\n  ');
});

test('autoescape is off', (t) => {
  assert.equal(render(t, '{{ s }}', { s: '<a href="x">&</a>' }), '<a href="x">&</a>');
});

test('values print as Jinja2 prints them', (t) => {
  assert.equal(
    render(t, '{{ a }} {{ b }} {{ n }} {{ l }} {{ m }}', {
      a: true,
      b: false,
      n: null,
      l: ['x', 1],
      m: { k: 'v' },
    }),
    "True False None ['x', 1] {'k': 'v'}",
  );
});

test('an undefined variable is an error naming template, line, host and variable', (t) => {
  const err = renderError(t, 'line one\n{{ missing }}\n');
  assert.equal(err.code, 'RENDER_UNDEFINED_VAR');
  assert.match(err.message, /^t\.j2:2: "missing" is undefined for host web-01/);
  assert.deepEqual(
    [err.subject.template, err.subject.line, err.subject.host, err.subject.variable],
    ['t.j2', 2, 'web-01', 'missing'],
  );
});

test('an undefined variable suggests the closest defined name', (t) => {
  const err = renderError(t, '{{ wokers }}', { workers: 4 });
  assert.match(err.message, /did you mean "workers"\?/);
});

test('an undefined attribute of a defined mapping is an error with the closest key', (t) => {
  const err = renderError(t, 'x\ny\n{{ app.db.hots }}', { app: { db: { host: 'h' } } });
  assert.equal(err.code, 'RENDER_UNDEFINED_VAR');
  assert.match(
    err.message,
    /^t\.j2:3: "app\.db\.hots" is undefined for host web-01; did you mean "app\.db\.host"\?/,
  );
});

test('an undefined variable in an if condition is an error, as in Ansible', (t) => {
  assert.equal(renderError(t, '{% if flag %}x{% endif %}').code, 'RENDER_UNDEFINED_VAR');
});

test('an undefined variable in a for loop is an error', (t) => {
  assert.equal(renderError(t, '{% for x in items %}{{ x }}{% endfor %}').code, 'RENDER_UNDEFINED_VAR');
});

test('an undefined attribute in a filter argument is an error', (t) => {
  assert.equal(renderError(t, '{{ l | join(sep.x) }}', { l: [1], sep: {} }).code, 'RENDER_UNDEFINED_VAR');
});

test('is defined and is undefined work on undefined names and attributes', (t) => {
  assert.equal(
    render(t, '{{ x is defined }} {{ a.b.c is defined }} {{ a.q is undefined }} {{ a.q is defined }}', {
      a: { q: 1 },
    }),
    'False False False True',
  );
});

test('default works on an undefined name and on an undefined attribute chain', (t) => {
  assert.equal(render(t, "{{ x | default('d') }} {{ a.b.c | default(5) }}", { a: {} }), 'd 5');
});

test('default(value, true) also replaces falsy values', (t) => {
  assert.equal(render(t, "{{ e | default('d', true) }}|{{ e | default('d') }}", { e: '' }), 'd|');
});

test('mandatory fails with the variable name when it is undefined', (t) => {
  const err = renderError(t, '{{ secret | mandatory }}');
  assert.equal(err.code, 'RENDER_FILTER_FAILED');
  assert.match(err.message, /^t\.j2:1: .*secret/);
});

test('loop variables, set variables and macro arguments are defined', (t) => {
  const tpl =
    '{% set p = "x" %}{% macro m(a, b=2) %}{{ a }}{{ b }}{{ p }}{% endmacro %}{% for i in l %}{{ loop.index }}{{ i }}{{ m(i) }}{% endfor %}';
  assert.equal(render(t, tpl, { l: ['a'] }), '1aa2x');
});

test('dictsort iterates a mapping in key order', (t) => {
  assert.equal(
    render(t, '{% for k, v in m | dictsort %}{{ k }}={{ v }};{% endfor %}', { m: { b: 2, a: 1, C: 3 } }),
    'a=1;b=2;C=3;',
  );
});

test('Python string and dict methods work', (t) => {
  assert.equal(
    render(
      t,
      "{{ s.upper() }} {{ s.split(',') | join('+') }} {% for k, v in m.items() %}{{ k }}{{ v }}{% endfor %} {{ m.get('z', 0) }}",
      {
        s: 'a,b',
        m: { x: 1 },
      },
    ),
    'A,B a+b x1 0',
  );
});

test('negative list indexes count from the end, as in Python', (t) => {
  assert.equal(render(t, '{{ l[-1] }}', { l: [1, 2, 3] }), '3');
});

test('templates cannot reach constructors (no sandbox escape)', (t) => {
  const err = renderError(t, '{{ s.constructor }}', { s: 'x' });
  assert.equal(err.code, 'RENDER_UNDEFINED_VAR');
  assert.equal(renderError(t, '{{ constructor }}').code, 'RENDER_UNDEFINED_VAR');
  assert.equal(renderError(t, '{{ m.__proto__ }}', { m: {} }).code, 'RENDER_UNDEFINED_VAR');
});

test('Ansible filters are available: quote, to_json, b64encode, regex_replace, bool, int', (t) => {
  assert.equal(
    render(
      t,
      "{{ s | quote }} {{ m | to_json }} {{ 'hi' | b64encode }} {{ 'a1b2' | regex_replace('[0-9]', '#') }} {{ 'yes' | bool }} {{ '42' | int + 1 }}",
      {
        s: "it's",
        m: { a: [1, 'x'] },
      },
    ),
    `'it'"'"'s' {"a": [1, "x"]} aGk= a#b# True 43`,
  );
});

test('a filter failure names the template line and the host', (t) => {
  const err = renderError(t, '\n{{ "%%%" | b64decode }}');
  assert.equal(err.code, 'RENDER_FILTER_FAILED');
  assert.match(err.message, /^t\.j2:2: .*b64decode.*host web-01/);
});

test('a syntax error names template, line and column', (t) => {
  const dir = tempTree(t, { 't.j2': 'ok\n{% if x %}\nno end\n' });
  const engine = new TemplateEngine({ root: dir });
  assert.throws(
    () => engine.template('t.j2'),
    (e) =>
      isCanopyError(e, 'RENDER_SYNTAX') &&
      /^t\.j2:4:1: template syntax error: parseIf: expected elif, else, or endif, got end of file/.test(
        e.message,
      ),
  );
  const dir2 = tempTree(t, { 't.j2': 'a\n{{ x + }}\n' });
  assert.throws(
    () => new TemplateEngine({ root: dir2 }).template('t.j2'),
    (e) =>
      isCanopyError(e, 'RENDER_SYNTAX') &&
      /^t\.j2:2:8: template syntax error: unexpected token: }}/.test(e.message),
  );
});

test('include and import resolve inside the template root', (t) => {
  const out = render(
    t,
    '{% include "parts/head.j2" %}{% from "parts/m.j2" import hi %}{{ hi(name) }}\n',
    { name: 'n' },
    {
      'parts/head.j2': 'head {{ name }}\n',
      'parts/m.j2': '{% macro hi(x) %}hi {{ x }}{% endmacro %}',
    },
  );
  assert.equal(out, 'head n\nhi n\n');
});

test('an undefined variable inside an include names the included template', (t) => {
  const err = renderError(t, 'top\n{% include "inc.j2" %}', {}, { 'inc.j2': '\n\n{{ nope }}' });
  assert.match(err.message, /^inc\.j2:3: "nope" is undefined/);
});

for (const name of ['../outside.j2', '/etc/passwd', 'parts/../../outside.j2']) {
  test(`include of ${name} is refused as outside the template root`, (t) => {
    const err = renderError(t, `{% include "${name}" %}`);
    assert.equal(err.code, 'RENDER_OUTSIDE_ROOT');
    assert.match(err.message, /outside the template root/);
  });
}

test('an include through a symlink leading out of the root is refused', (t) => {
  const outside = tempTree(t, { 'secret.j2': 'secret' });
  const dir = tempTree(t, { 't.j2': '{% include "link.j2" %}' });
  symlinkSync(`${outside}/secret.j2`, `${dir}/link.j2`);
  assert.throws(
    () => new TemplateEngine({ root: dir }).template('t.j2').render({}, 'h'),
    (e) => isCanopyError(e, 'RENDER_OUTSIDE_ROOT') && /symlink/.test(e.message),
  );
});

test('an include of a missing file is RENDER_TEMPLATE_NOT_FOUND', (t) => {
  assert.equal(renderError(t, '{% include "nope.j2" %}').code, 'RENDER_TEMPLATE_NOT_FOUND');
});

test('a template is compiled once and rendered for many hosts', (t) => {
  const dir = tempTree(t, { 't.j2': '{{ n }}' });
  const engine = new TemplateEngine({ root: dir });
  const tpl = engine.template('t.j2');
  assert.equal(engine.template('t.j2'), tpl);
  assert.deepEqual(
    [1, 2, 3].map((n) => tpl.render({ n }, `h${n}`)),
    ['1', '2', '3'],
  );
});

test('render errors do not leak between hosts (one host failing leaves the next fine)', (t) => {
  const dir = tempTree(t, { 't.j2': '{{ a.b }}' });
  const tpl = new TemplateEngine({ root: dir }).template('t.j2');
  assert.throws(
    () => tpl.render({ a: {} }, 'h1'),
    (e) => isCanopyError(e, 'RENDER_UNDEFINED_VAR') && e.subject.host === 'h1',
  );
  assert.equal(tpl.render({ a: { b: 'ok' } }, 'h2'), 'ok');
});

// Regression: nunjucks' trimBlocks skips the newline after block tags only; Jinja2 also
// skips it after comments and {% endraw %}, so templates opening with a comment line
// rendered with an extra blank line.
test('trim_blocks also drops the newline after a comment and after endraw, as Jinja2 does', (t) => {
  assert.equal(render(t, 'a\n{# note #}\nb\n{#- x -#}\n  c\n'), 'a\nbc\n');
  assert.equal(render(t, '{% raw %}\n{{ x }}\n{% endraw %}\nz\n'), '\n{{ x }}\nz\n');
});

test('CRLF templates render with LF line ends, as Ansible (newline_sequence) does', (t) => {
  assert.equal(render(t, 'a\r\n{# note #}\r\nb\r\n{% if true %}\r\nc\r\n{% endif %}\r\n'), 'a\nb\nc\n');
});

// Guards the loop fast path: fastLoopVars rewrites nunjucks' generated loop code by pattern.
// If a nunjucks upgrade changes that code, rendering stays correct but slow; this test says so.
test('the loop fast path still matches the code nunjucks generates', () => {
  const c = new nunjucks.compiler.Compiler('t', false);
  c.compile(
    transformer.transform(
      nunjucks.parser.parse('{% for x in l %}{{ loop.index }}{% endfor %}', [], {}),
      [],
      't',
    ),
  );
  const code = fastLoopVars(c.getCode());
  assert.match(code, /frame\.variables\.loop = \{ index: t_\d+ \+ 1,/);
  assert.doesNotMatch(code, /frame\.set\("loop\.index"/);
});
