// Differential test: canopy's engine against Python's Jinja2 with Ansible's template settings,
// on the cases in fixtures/jinja-compat/cases.yaml. Byte-identical output, case by case.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { parse } from 'yaml';
import { TemplateEngine } from '../src/render/index.js';
import { ROOT } from './helpers/cli.js';
import { tempTree } from './helpers/tree.js';

const FIXTURE = join(ROOT, 'fixtures', 'jinja-compat', 'cases.yaml');
const { vars, cases } = parse(readFileSync(FIXTURE, 'utf8')) as {
  vars: Record<string, unknown>;
  cases: Record<string, string>;
};

const JINJA = `
import json, sys, jinja2
data = json.load(sys.stdin)
env = jinja2.Environment(trim_blocks=True, lstrip_blocks=False, keep_trailing_newline=True,
                         undefined=jinja2.StrictUndefined, autoescape=False)
out = {}
for name, src in data["cases"].items():
    try:
        out[name] = env.from_string(src).render(data["vars"])
    except Exception as e:
        out[name] = {"error": str(e)}
json.dump(out, sys.stdout)
`;

const expected = JSON.parse(
  execFileSync('/usr/bin/python3', ['-c', JINJA], {
    input: JSON.stringify({ vars, cases }),
    encoding: 'utf8',
  }),
) as Record<string, string | { error: string }>;

for (const [name, src] of Object.entries(cases)) {
  test(`renders like Jinja2: ${name}`, (t) => {
    const want = expected[name];
    assert.equal(typeof want, 'string', `Jinja2 itself failed on this case: ${JSON.stringify(want)}`);
    const dir = tempTree(t, { 't.j2': src });
    const got = new TemplateEngine({ root: dir }).template('t.j2').render(vars, 'h');
    assert.equal(got, want);
  });
}
