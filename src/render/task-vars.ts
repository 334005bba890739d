/**
 * Task variables: the top layer, given at run time and never stored.
 *
 * `--var key=value` (the value parsed as YAML, so `5433` is a number and
 * `[a, b]` a list; a dotted key `db.port=5433` sets a nested key) and
 * `--vars-file FILE` (a YAML mapping), in command-line order, later ones
 * deep-merged over earlier ones.
 */
import { CanopyError } from '../errors/index.js';
import { RESERVED_VAR, type VarSource } from './inventory-model.js';
import { isMapping, setPath } from './merge.js';
import { YamlSource } from './yaml-source.js';

export type TaskVarInput = { kind: 'var'; text: string } | { kind: 'file'; path: string };

const KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_][A-Za-z0-9_-]*)*$/;

export function parseTaskVars(inputs: readonly TaskVarInput[]): VarSource[] {
  return inputs.map((input) => (input.kind === 'var' ? parseVarFlag(input.text) : readVarsFile(input.path)));
}

export function parseVarFlag(text: string): VarSource {
  const eq = text.indexOf('=');
  const origin = `--var ${text}`;
  if (eq <= 0) {
    throw new CanopyError('VARS_BAD_TASK_VAR', `${origin}: expected KEY=VALUE, e.g. --var db.port=5433`, {
      variable: text,
    });
  }
  const key = text.slice(0, eq);
  const raw = text.slice(eq + 1);
  if (!KEY_RE.test(key)) {
    throw new CanopyError(
      'VARS_BAD_TASK_VAR',
      `${origin}: "${key}" is not a variable name; use letters, digits and "_", with "." between nested keys`,
      { variable: key },
    );
  }
  const path = key.split('.');
  if (path[0] === RESERVED_VAR) {
    throw new CanopyError(
      'VARS_RESERVED',
      `${origin}: the variable "${RESERVED_VAR}" is reserved for the built-in host facts; rename it`,
      { variable: key },
    );
  }
  let value: unknown = '';
  if (raw.trim() !== '') {
    try {
      value = YamlSource.parse('--var', raw, '1.2', 'VARS_BAD_TASK_VAR').value;
    } catch (err) {
      throw new CanopyError(
        'VARS_BAD_TASK_VAR',
        `${origin}: the value is not valid YAML (${(err as Error).message.replace(/^--var:\d+:\d+: /, '')}); quote it, e.g. --var '${key}="..."'`,
        { variable: key, cause: err },
      );
    }
  }
  return { origin, vars: setPath({}, path, value) };
}

export function readVarsFile(path: string): VarSource {
  const src = YamlSource.read(path, '1.2', 'VARS_BAD_TASK_VAR');
  if (src.value === null) return { origin: path, yaml: { version: '1.2', keyPath: [] }, vars: {} };
  if (!isMapping(src.value)) {
    throw new CanopyError('VARS_BAD_TASK_VAR', `${path}: a vars file must hold a mapping of variables`, {
      file: path,
    });
  }
  if (Object.hasOwn(src.value, RESERVED_VAR)) {
    const pos = src.posOf([RESERVED_VAR]);
    throw new CanopyError(
      'VARS_RESERVED',
      `${path}:${pos.line}:${pos.column}: the variable "${RESERVED_VAR}" is reserved for the built-in host facts; rename it`,
      { file: path, line: pos.line, column: pos.column, variable: RESERVED_VAR },
    );
  }
  return { origin: path, yaml: { version: '1.2', keyPath: [] }, vars: src.value };
}
