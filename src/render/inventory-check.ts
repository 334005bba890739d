/**
 * Schema checks shared by both inventory loaders.
 *
 * Each check reports into a Diagnostics with the position of the offending
 * key or value and a fix, and returns a usable value (or undefined) so that
 * loading goes on and every problem is found in one pass.
 */
import type { Diagnostics } from './diagnostics.js';
import { LABEL_KEY_RE, LABEL_VALUE_RE, NAME_RE, RESERVED_VAR } from './inventory-model.js';
import { isMapping, type VarMap } from './merge.js';
import { didYouMean } from './suggest.js';
import type { KeyPath, SourcePos, YamlSource } from './yaml-source.js';

export class Checker {
  constructor(
    readonly src: YamlSource,
    readonly d: Diagnostics,
  ) {}

  pos(path: KeyPath): SourcePos {
    return this.src.posOf(path);
  }

  /** Reports keys of `obj` not in `allowed`, suggesting the closest allowed one. */
  keys(path: KeyPath, obj: VarMap, allowed: readonly string[], what: string): void {
    for (const key of Object.keys(obj)) {
      if (allowed.includes(key)) continue;
      this.d.error(
        'INVENTORY_INVALID',
        this.pos([...path, key]),
        `unknown key "${key}" in ${what}${didYouMean(key, allowed)} (allowed: ${allowed.join(', ')})`,
      );
    }
  }

  mapping(path: KeyPath, value: unknown, what: string): VarMap | undefined {
    if (value === undefined || value === null) return undefined;
    if (isMapping(value)) return value;
    this.d.error('INVENTORY_INVALID', this.pos(path), `${what} must be a mapping, not ${describe(value)}`);
    return undefined;
  }

  /** A `vars:` mapping; `canopy` is refused. */
  vars(path: KeyPath, value: unknown, what: string): VarMap {
    const vars = this.mapping(path, value, what) ?? {};
    if (Object.hasOwn(vars, RESERVED_VAR)) {
      this.d.error(
        'VARS_RESERVED',
        this.pos([...path, RESERVED_VAR]),
        `the variable "${RESERVED_VAR}" is reserved for the built-in host facts (canopy.host.name, ...); rename it`,
      );
      const { [RESERVED_VAR]: _, ...rest } = vars;
      return rest;
    }
    return vars;
  }

  name(path: KeyPath, name: string, what: string): boolean {
    if (NAME_RE.test(name)) return true;
    this.d.error(
      'INVENTORY_INVALID',
      this.pos(path),
      `${what} name "${name}" is not allowed: use letters, digits, "_", "." and "-", starting with a letter, digit or "_"`,
    );
    return false;
  }

  integer(path: KeyPath, value: unknown, what: string): number | undefined {
    if (value === undefined || value === null) return undefined;
    if (typeof value === 'number' && Number.isInteger(value)) return value;
    if (typeof value === 'string' && /^-?\d+$/.test(value.trim())) return Number(value);
    this.d.error('INVENTORY_INVALID', this.pos(path), `${what} must be an integer, not ${describe(value)}`);
    return undefined;
  }

  stringList(path: KeyPath, value: unknown, what: string): string[] {
    if (value === undefined || value === null) return [];
    if (!Array.isArray(value)) {
      this.d.error('INVENTORY_INVALID', this.pos(path), `${what} must be a list, not ${describe(value)}`);
      return [];
    }
    const out: string[] = [];
    value.forEach((item, i) => {
      if (typeof item === 'string' || typeof item === 'number') out.push(String(item));
      else
        this.d.error(
          'INVENTORY_INVALID',
          this.pos([...path, i]),
          `${what} entries must be names, not ${describe(item)}`,
        );
    });
    return out;
  }

  /** A label mapping (also `match:`): scalar values, turned into strings. */
  labels(path: KeyPath, value: unknown, what: string): Record<string, string> {
    const map = this.mapping(path, value, what) ?? {};
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(map)) {
      if (!LABEL_KEY_RE.test(k)) {
        this.d.error(
          'INVENTORY_INVALID',
          this.pos([...path, k]),
          `label key "${k}" in ${what} is not allowed: use letters, digits, "_", ".", "/" and "-"`,
        );
        continue;
      }
      if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') {
        this.d.error(
          'INVENTORY_INVALID',
          this.pos([...path, k]),
          `label "${k}" in ${what} must be a string, not ${describe(v)}`,
        );
        continue;
      }
      const s = String(v);
      if (!LABEL_VALUE_RE.test(s)) {
        this.d.error(
          'INVENTORY_INVALID',
          this.pos([...path, k]),
          `label "${k}" value "${s}" in ${what} is not allowed: no spaces, "," or "="`,
        );
        continue;
      }
      out[k] = s;
    }
    return out;
  }
}

export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  if (typeof value === 'string')
    return `the string "${value.length > 40 ? `${value.slice(0, 40)}...` : value}"`;
  return `${typeof value} ${String(value)}`;
}

/** Host addresses: host names and IPv4/IPv6 literals only (they reach shells and URLs later). */
export const ADDRESS_RE = /^[A-Za-z0-9_.:%-]{1,253}$/;
