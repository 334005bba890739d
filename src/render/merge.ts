/**
 * Deep merge of variable layers: the one rule of canopy's variable model.
 *
 * Mappings merge key by key, recursively; scalars and lists replace. Neither
 * input is modified. Values that are not merged are shared, not copied: a
 * merged result must be treated as read-only (templates cannot mutate it).
 */

export type VarMap = Record<string, unknown>;

export function isMapping(value: unknown): value is VarMap {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** `high` merged over `low`. */
export function deepMerge(low: VarMap, high: VarMap): VarMap {
  const out: VarMap = { ...low };
  for (const key of Object.keys(high)) {
    const h = high[key];
    const l = out[key];
    out[key] = isMapping(h) && isMapping(l) ? deepMerge(l, h) : h;
  }
  return out;
}

/** Merges layers from lowest to highest. */
export function mergeAll(layers: readonly VarMap[]): VarMap {
  let out: VarMap = {};
  for (const layer of layers) out = deepMerge(out, layer);
  return out;
}

/** The value at a dotted path, and whether it is defined there. */
export function getPath(vars: unknown, path: readonly string[]): { found: boolean; value: unknown } {
  let cur: unknown = vars;
  for (const key of path) {
    if (!isMapping(cur) || !Object.hasOwn(cur, key)) return { found: false, value: undefined };
    cur = cur[key];
  }
  return { found: true, value: cur };
}

/** Sets `value` at a dotted path in a fresh copy of `vars`, creating mappings on the way. */
export function setPath(vars: VarMap, path: readonly string[], value: unknown): VarMap {
  const [head, ...rest] = path;
  if (head === undefined) return vars;
  const next = rest.length === 0 ? value : setPath(isMapping(vars[head]) ? vars[head] : {}, rest, value);
  return { ...vars, [head]: next };
}
