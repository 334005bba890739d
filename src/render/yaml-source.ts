/**
 * Parsing YAML files with their source positions.
 *
 * Owns: turning a YAML file into a plain value plus a way to find where any
 * key path was written (file, line, column), so that every later error and
 * `vars explain` can point at the exact line. Never throws a raw library
 * error: a syntax error becomes a CanopyError naming file, line and column.
 */
import { readFileSync } from 'node:fs';
import { isMap, isPair, isScalar, isSeq, LineCounter, type Node, parseDocument } from 'yaml';
import { CanopyError, type ErrorCode } from '../errors/index.js';

/** Where something was written. Lines and columns count from 1. */
export interface SourcePos {
  file: string;
  line: number;
  column: number;
}

export type KeyPath = readonly (string | number)[];

/**
 * YAML 1.2 for canopy's own files; YAML 1.1 for Ansible's (as PyYAML reads
 * them: `yes` is true, `0644` is octal), so that an inventory means to canopy
 * what it means to Ansible.
 */
export type YamlVersion = '1.1' | '1.2';

export class YamlSource {
  readonly file: string;
  readonly value: unknown;
  readonly #root: Node | null;
  readonly #lines: LineCounter;
  readonly #indexes: MapIndexes = new WeakMap();

  private constructor(file: string, value: unknown, root: Node | null, lines: LineCounter) {
    this.file = file;
    this.value = value;
    this.#root = root;
    this.#lines = lines;
  }

  /** Parses `text` (read from `file`); a syntax error throws `code`. */
  static parse(
    file: string,
    text: string,
    version: YamlVersion,
    code: ErrorCode = 'INVENTORY_YAML',
  ): YamlSource {
    // yaml's own duplicate-key check is quadratic in a mapping's size (an
    // inventory's `hosts:` can hold thousands): ours below is linear.
    const lines = new LineCounter();
    const doc = parseDocument(text, {
      lineCounter: lines,
      version,
      merge: true,
      prettyErrors: false,
      uniqueKeys: false,
    });
    const first = doc.errors[0];
    if (!first) {
      const dup = findDuplicateKey(doc.contents);
      if (dup) {
        const at = lines.linePos(dup.offset);
        const prev = lines.linePos(dup.firstOffset);
        throw new CanopyError(
          code,
          `${file}:${at.line}:${at.col}: duplicate key "${dup.key}" (first at line ${prev.line}); keep one of them`,
          { file, line: at.line, column: at.col },
        );
      }
    }
    if (first) {
      const pos = first.linePos?.[0] ?? { line: 1, col: 1 };
      const reason = first.message.split('\n')[0] ?? first.message;
      throw new CanopyError(
        code,
        `${file}:${pos.line}:${pos.col}: YAML syntax error: ${reason}; fix the YAML at that line`,
        { file, line: pos.line, column: pos.col, cause: first },
      );
    }
    const value = doc.toJS({ maxAliasCount: 1000 }) as unknown;
    return new YamlSource(file, value ?? null, doc.contents, lines);
  }

  static read(file: string, version: YamlVersion, code: ErrorCode = 'INVENTORY_YAML'): YamlSource {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new CanopyError('INPUT_NOT_FOUND', `${file}: cannot read: ${(err as Error).message}`, {
        file,
        cause: err,
      });
    }
    return YamlSource.parse(file, text, version, code);
  }

  /** The position of the key at the end of `path` (or of the value for a list index). */
  posOf(path: KeyPath): SourcePos {
    let node: unknown = this.#root;
    let offset = rangeStart(node) ?? 0;
    for (const segment of path) {
      const found = child(node, segment, this.#indexes);
      if (!found) break;
      offset = found.offset;
      node = found.node;
    }
    const { line, col } = this.#lines.linePos(offset);
    return { file: this.file, line, column: col };
  }
}

/** The second occurrence of a key in one mapping, anywhere in the document. */
function findDuplicateKey(root: unknown): { key: string; offset: number; firstOffset: number } | undefined {
  let found: { key: string; offset: number; firstOffset: number } | undefined;
  const walk = (node: unknown): void => {
    if (found) return;
    if (isMap(node)) {
      const seen = new Map<string, number>();
      for (const pair of node.items) {
        if (!isPair(pair)) continue;
        const key = String(isScalar(pair.key) ? pair.key.value : pair.key);
        const offset = rangeStart(pair.key) ?? 0;
        const first = seen.get(key);
        if (first !== undefined && key !== '<<') {
          found = { key, offset, firstOffset: first };
          return;
        }
        seen.set(key, offset);
        walk(pair.value);
      }
    } else if (isSeq(node)) for (const item of node.items) walk(item);
  };
  walk(root);
  return found;
}

function rangeStart(node: unknown): number | undefined {
  if (node && typeof node === 'object' && 'range' in node) {
    const range = (node as { range?: [number, number, number] | null }).range;
    return range?.[0];
  }
  return undefined;
}

type MapIndexes = WeakMap<object, Map<string, { node: unknown; offset: number }>>;

/** A key's child; each mapping's keys are indexed on first use, so locating every host of a 10,000-host map stays linear. */
function child(
  node: unknown,
  segment: string | number,
  mapIndexes: MapIndexes,
): { node: unknown; offset: number } | undefined {
  if (isMap(node)) {
    let index = mapIndexes.get(node);
    if (!index) {
      index = new Map();
      for (const pair of node.items) {
        if (!isPair(pair)) continue;
        const key = String(isScalar(pair.key) ? pair.key.value : pair.key);
        if (!index.has(key))
          index.set(key, { node: pair.value, offset: rangeStart(pair.key) ?? rangeStart(pair.value) ?? 0 });
      }
      mapIndexes.set(node, index);
    }
    return index.get(String(segment));
  }
  if (isSeq(node) && typeof segment === 'number') {
    const item = node.items[segment];
    const offset = rangeStart(item);
    return offset === undefined ? undefined : { node: item, offset };
  }
  return undefined;
}

/** `file:line:column` as editors and compilers print it. */
export function formatPos(pos: SourcePos): string {
  return `${pos.file}:${pos.line}:${pos.column}`;
}
