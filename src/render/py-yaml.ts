/**
 * PyYAML's yaml.dump (SafeDumper, allow_unicode=True): pyYamlDump represents a JS value as a node
 * tree, as PyYAML's SafeRepresenter, implicit resolvers and Serializer do, then hands it to
 * py-yaml-emitter.ts to write.
 *
 * Known limits: those of py-format.ts for numbers and key order, and pyYamlDump never writes
 * anchors/aliases for values shared between two places. It never parses YAML, and it throws
 * Python's TypeError (never a CanopyError) for what it cannot represent.
 */

import { pyFloatRepr } from './py-format.js';
import { describeType, isPlainObject, sortedEntries } from './py-values.js';
import { YamlEmitter, type YamlNode, type YamlTag } from './py-yaml-emitter.js';

/** PyYAML's implicit resolvers (YAML 1.1): a plain scalar matching one is not read as a string. */
const YAML_IMPLICIT: ReadonlyArray<[YamlTag | 'other', RegExp]> = [
  ['bool', /^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$/],
  [
    'float',
    /^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$/,
  ],
  [
    'int',
    /^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$/,
  ],
  ['other', /^(?:<<)$/],
  ['null', /^(?:~|null|Null|NULL|)$/],
  [
    'other',
    /^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$/,
  ],
  ['other', /^(?:=)$/],
  ['other', /^(?:!|&|\*)$/],
];

function resolvePlain(text: string): YamlTag | 'other' {
  for (const [tag, re] of YAML_IMPLICIT) if (re.test(text)) return tag;
  return 'str';
}

function scalarNode(tag: YamlTag, value: string): YamlNode {
  return {
    kind: 'scalar',
    value,
    tag,
    plainImplicit: resolvePlain(value) === tag,
    quotedImplicit: tag === 'str',
  };
}

function yamlFloat(n: number): string {
  if (Number.isNaN(n)) return '.nan';
  if (!Number.isFinite(n)) return n > 0 ? '.inf' : '-.inf';
  const text = pyFloatRepr(n).toLowerCase();
  return !text.includes('.') && text.includes('e') ? text.replace('e', '.0e') : text;
}

function representNumber(n: number | bigint): YamlNode {
  if (typeof n === 'bigint' || Number.isSafeInteger(n)) return scalarNode('int', String(n));
  return scalarNode('float', yamlFloat(n));
}

interface Representer {
  readonly defaultFlow: boolean | null;
  readonly sortKeys: boolean;
  readonly stack: unknown[];
}

function flowStyle(r: Representer, children: YamlNode[]): boolean {
  return r.defaultFlow ?? children.every((child) => child.kind === 'scalar');
}

function representCollection(r: Representer, value: unknown[] | Record<string, unknown>): YamlNode {
  if (r.stack.includes(value)) throw new TypeError('cannot represent a circular structure');
  r.stack.push(value);
  let node: YamlNode;
  if (Array.isArray(value)) {
    const items = value.map((item) => represent(r, item));
    node = { kind: 'seq', items, flow: flowStyle(r, items) };
  } else {
    const pairs = sortedEntries(value, r.sortKeys).map(([k, v]): [YamlNode, YamlNode] => [
      scalarNode('str', k),
      represent(r, v),
    ]);
    node = { kind: 'map', pairs, flow: flowStyle(r, pairs.flat()) };
  }
  r.stack.pop();
  return node;
}

function represent(r: Representer, value: unknown): YamlNode {
  if (typeof value === 'string') return scalarNode('str', value);
  if (value === null) return scalarNode('null', 'null');
  if (typeof value === 'boolean') return scalarNode('bool', value ? 'true' : 'false');
  if (typeof value === 'number' || typeof value === 'bigint') return representNumber(value);
  if (Array.isArray(value) || isPlainObject(value)) return representCollection(r, value);
  throw new TypeError(`cannot represent an object of type ${describeType(value)}`);
}

export interface PyYamlOptions {
  /** PyYAML's `indent`: used when 2..9, else 2. */
  indent?: number;
  /** PyYAML's `width` for folding long scalars: used when above 2 * indent, else 80. */
  width?: number;
  /** Default true, as in yaml.dump. */
  sortKeys?: boolean;
  /** PyYAML's default_flow_style: false (the default) block everywhere; null: flow for collections of scalars. */
  defaultFlowStyle?: boolean | null;
  explicitStart?: boolean;
}

/**
 * PyYAML's `yaml.dump(value, Dumper=SafeDumper, allow_unicode=True, ...)`, byte for byte for the
 * values YAML and JSON can hold (including PyYAML's `...` after a plain top-level scalar, its folding
 * of long scalars at `width`, and `? key` for empty or long keys). Throws a TypeError for values it
 * cannot represent (undefined, functions, class instances) and for circular structures.
 */
export function pyYamlDump(value: unknown, opts: PyYamlOptions = {}): string {
  const indent = opts.indent !== undefined && opts.indent > 1 && opts.indent < 10 ? opts.indent : 2;
  const width = opts.width !== undefined && opts.width > indent * 2 ? opts.width : 80;
  const representer: Representer = {
    defaultFlow: opts.defaultFlowStyle === undefined ? false : opts.defaultFlowStyle,
    sortKeys: opts.sortKeys ?? true,
    stack: [],
  };
  const root = represent(representer, value);
  return new YamlEmitter(Math.trunc(indent), width).emitDocument(root, opts.explicitStart ?? false);
}
