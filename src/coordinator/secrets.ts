/**
 * Which variable values are secret, and masking them out of text a push
 * shows (diffs, validate and notify output, errors).
 *
 * A value is secret when its variable is declared under `secrets:` in the
 * inventory (a name or dotted path), or when any key on its path is named
 * like a secret: contains `password`, `passwd`, `secret`, `token` or `key`
 * (case-insensitive). Every string or number leaf below such a key counts.
 */
import { getPath, isMapping, type VarMap } from '../render/index.js';

const SECRET_NAME = /password|passwd|secret|token|key/i;
/** Shorter values would mask ordinary text everywhere (a secret "1" would hide every digit 1). */
const MIN_SECRET_LENGTH = 3;
export const MASK = '********';

/** The secret values among a host's variables, longest first. */
export function secretValues(vars: VarMap, declared: readonly string[]): string[] {
  const found = new Set<string>();
  const collect = (value: unknown, secret: boolean): void => {
    if (isMapping(value)) {
      for (const [k, v] of Object.entries(value)) collect(v, secret || SECRET_NAME.test(k));
    } else if (Array.isArray(value)) {
      for (const v of value) collect(v, secret);
    } else if (secret && (typeof value === 'string' || typeof value === 'number')) {
      const text = String(value);
      if (text.length >= MIN_SECRET_LENGTH) found.add(text);
    }
  };
  for (const [k, v] of Object.entries(vars)) {
    if (k !== 'canopy') collect(v, SECRET_NAME.test(k));
  }
  for (const path of declared) {
    const got = getPath(vars, path.split('.'));
    if (got.found) collect(got.value, true);
  }
  return [...found].sort((a, b) => b.length - a.length);
}

/** `text` with every occurrence of every secret replaced by the mask. */
export function maskSecrets(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const s of secrets) if (out.includes(s)) out = out.split(s).join(MASK);
  return out;
}

/**
 * A unified diff with secrets masked. The old side may hold a secret that is
 * no longer any variable's value (it was changed since): a removed line that
 * starts like an added line up to where that one's secret begins
 * (`password = `) is masked from there on too.
 */
export function maskDiff(patch: string, secrets: readonly string[]): string {
  const lines = patch.split('\n').map((l) => maskSecrets(l, secrets));
  const prefixes: string[] = [];
  for (const l of lines) {
    const at = l.indexOf(MASK);
    if (l.startsWith('+') && !l.startsWith('+++') && at > 1) prefixes.push(l.slice(1, at));
  }
  if (prefixes.length === 0) return lines.join('\n');
  return lines
    .map((l) => {
      if (!l.startsWith('-') || l.startsWith('---')) return l;
      const p = prefixes.find((x) => x.trim().length >= 3 && l.slice(1).startsWith(x));
      return p === undefined ? l : `-${p}${MASK}`;
    })
    .join('\n');
}
