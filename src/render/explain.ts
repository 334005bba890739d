/**
 * `vars explain`: every layer that defines a key, in priority order, where it
 * was written, and which one wins.
 *
 * For a dotted key `app.db.port` a layer counts when it sets that key, or a
 * parent (`app.db: null` replaces everything below it), and its value shows
 * the key's children. Statuses: `wins` (its value is the result),
 * `overridden` (a higher layer replaced it), `merged` (a mapping that is part
 * of the merged result).
 */
import { type Inventory, type LayerKind, RESERVED_VAR, type VarSource } from './inventory-model.js';
import { deepMerge, getPath, isMapping, type VarMap } from './merge.js';
import { hostFacts, hostLayers } from './vars.js';
import { type SourcePos, YamlSource } from './yaml-source.js';

export type ExplainStatus = 'wins' | 'merged' | 'overridden';

export interface ExplainEntry {
  layer: string;
  kind: LayerKind | 'builtin';
  /** A file path, or the command-line flag. */
  origin: string;
  line?: number;
  column?: number;
  /** The dotted path this layer sets: the key itself, or a parent of it. */
  path: string;
  value: unknown;
  status: ExplainStatus;
}

export interface Explanation {
  host: string;
  key: string;
  defined: boolean;
  value: unknown;
  entries: ExplainEntry[];
}

export function explainVar(
  inv: Inventory,
  host: string,
  key: string,
  task: readonly VarSource[] = [],
): Explanation {
  const path = key.split('.');
  if (path[0] === RESERVED_VAR) return explainBuiltin(inv, host, key, path);
  const positions = new PositionCache();
  const raw: Omit<ExplainEntry, 'status'>[] = [];
  for (const layer of hostLayers(inv, host, task)) {
    for (const source of layer.sources) {
      const hit = findKey(source, path);
      if (!hit) continue;
      const pos = positions.locate(source, hit.path);
      raw.push({
        layer: layer.label,
        kind: layer.kind,
        origin: source.origin,
        ...(pos ? { line: pos.line, column: pos.column } : {}),
        path: hit.path.join('.'),
        value: hit.value,
      });
    }
  }
  const entries = withStatuses(raw, key);
  const last = [...entries].reverse().find((e) => e.status !== 'overridden');
  const defined = last !== undefined && last.path === key;
  return { host, key, defined, value: defined ? mergedValue(entries) : undefined, entries };
}

/** The key, or the deepest parent of it that this source sets to a non-mapping. */
function findKey(source: VarSource, path: string[]): { path: string[]; value: unknown } | undefined {
  for (let i = 1; i < path.length; i++) {
    const { found, value } = getPath(source.vars, path.slice(0, i));
    if (!found) return undefined;
    if (!isMapping(value)) return { path: path.slice(0, i), value };
  }
  const { found, value } = getPath(source.vars, path);
  return found ? { path, value } : undefined;
}

function withStatuses(raw: Omit<ExplainEntry, 'status'>[], key: string): ExplainEntry[] {
  // A non-mapping at the key (or at a parent) replaces everything below it,
  // and a mapping over a non-mapping replaces that too: only the mappings
  // after the last non-mapping merge.
  let cut = -1;
  raw.forEach((e, i) => {
    if (e.path !== key || !isMapping(e.value)) cut = i;
  });
  const last = raw.length - 1;
  const firstLive = cut === last ? cut : cut + 1;
  const live = last - firstLive + 1;
  return raw.map((e, i) => {
    const status: ExplainStatus = i < firstLive ? 'overridden' : live === 1 ? 'wins' : 'merged';
    return { ...e, status };
  });
}

function mergedValue(entries: ExplainEntry[]): unknown {
  const live = entries.filter((e) => e.status !== 'overridden');
  if (live.length === 1) return live[0]?.value;
  return live.reduce<VarMap>((acc, e) => (isMapping(e.value) ? deepMerge(acc, e.value) : acc), {});
}

function explainBuiltin(inv: Inventory, host: string, key: string, path: string[]): Explanation {
  const { found, value } = getPath({ canopy: hostFacts(inv, host) }, path);
  return {
    host,
    key,
    defined: found,
    value: found ? value : undefined,
    entries: found
      ? [
          {
            layer: 'built-in host facts',
            kind: 'builtin',
            origin: 'canopy',
            path: key,
            value,
            status: 'wins',
          },
        ]
      : [],
  };
}

/** Re-reads YAML files (once each) to find the line a key was written on. */
class PositionCache {
  readonly #files = new Map<string, YamlSource | null>();

  locate(source: VarSource, path: string[]): SourcePos | undefined {
    if (!source.yaml) return undefined;
    let src = this.#files.get(source.origin);
    if (src === undefined) {
      try {
        src = YamlSource.read(source.origin, source.yaml.version);
      } catch {
        src = null;
      }
      this.#files.set(source.origin, src);
    }
    return src?.posOf([...source.yaml.keyPath, ...path]);
  }
}
