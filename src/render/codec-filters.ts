/**
 * Ansible's filters that encode a value as text: to_json and to_nice_json (Python's json.dumps, via
 * py-json.ts), to_yaml and to_nice_yaml (PyYAML's yaml.dump, via py-yaml.ts), b64encode and
 * b64decode (Python's base64, in utf-8, utf-16-le, latin-1 or ascii).
 *
 * Known difference from Ansible: b64decode is strict: characters outside the base64 alphabet
 * (whitespace aside), bad padding and bytes that are not valid text in the chosen encoding throw;
 * Python skips stray characters and Ansible passes undecodable bytes through.
 * Each filter binds its arguments with filter-args.ts and fails only through its fail(); the
 * serializing itself is never done here.
 */

import { bindArgs, defined, fail, intArg, optionalIntArg, shown, stringArg, text } from './filter-args.js';
import { type PyJsonOptions, pyJsonDumps } from './py-json.js';
import { pyTruthy } from './py-values.js';
import { type PyYamlOptions, pyYamlDump } from './py-yaml.js';

type Dict = Record<string, unknown>;

// ---------------------------------------------------------------------------------------------
// to_json, to_nice_json, to_yaml, to_nice_yaml

function jsonIndent(filter: string, value: unknown): number | string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return value;
  return intArg(filter, 'indent', value);
}

function separatorsArg(filter: string, value: unknown): [string, string] | undefined {
  if (value === undefined || value === null) return undefined;
  if (Array.isArray(value) && value.length === 2 && value.every((s) => typeof s === 'string')) {
    return [value[0] as string, value[1] as string];
  }
  return fail(filter, `argument 'separators' must be a list of two strings, got ${shown(value)}`);
}

function dumpJson(filter: string, value: unknown, opts: PyJsonOptions): string {
  defined(filter, value, 'a value to serialize');
  try {
    return pyJsonDumps(value, opts);
  } catch (err) {
    return fail(filter, `cannot serialize ${shown(value)}: ${(err as Error).message}`, err);
  }
}

/** Python's json.dumps(value, indent=, sort_keys=, separators=, ensure_ascii=), all by keyword. */
export function toJson(value: unknown, ...args: unknown[]): string {
  const a = bindArgs(
    'to_json',
    args,
    { indent: undefined, sort_keys: false, separators: undefined, ensure_ascii: true },
    0,
  );
  return dumpJson('to_json', value, {
    indent: jsonIndent('to_json', a.indent),
    sortKeys: pyTruthy(a.sort_keys),
    separators: separatorsArg('to_json', a.separators),
    ensureAscii: pyTruthy(a.ensure_ascii),
  });
}

/** Python's json.dumps(value, indent=4, sort_keys=True, separators=(',', ': ')). */
export function toNiceJson(value: unknown, ...args: unknown[]): string {
  const a = bindArgs('to_nice_json', args, { indent: 4, sort_keys: true, ensure_ascii: true }, 2);
  return dumpJson('to_nice_json', value, {
    indent: jsonIndent('to_nice_json', a.indent),
    sortKeys: pyTruthy(a.sort_keys),
    separators: [',', ': '],
    ensureAscii: pyTruthy(a.ensure_ascii),
  });
}

function dumpYaml(filter: string, value: unknown, opts: PyYamlOptions): string {
  defined(filter, value, 'a value to serialize');
  try {
    return pyYamlDump(value, opts);
  } catch (err) {
    return fail(filter, `cannot serialize ${shown(value)}: ${(err as Error).message}`, err);
  }
}

function yamlOptions(filter: string, a: Dict): PyYamlOptions {
  const flow = a.default_flow_style;
  return {
    indent: optionalIntArg(filter, 'indent', a.indent),
    width: optionalIntArg(filter, 'width', a.width),
    sortKeys: pyTruthy(a.sort_keys),
    defaultFlowStyle: flow === undefined || flow === null ? null : pyTruthy(flow),
    explicitStart: pyTruthy(a.explicit_start),
  };
}

/** PyYAML's yaml.dump(value, allow_unicode=True, default_flow_style=None, sort_keys=True). */
export function toYaml(value: unknown, ...args: unknown[]): string {
  const params = {
    indent: undefined,
    width: undefined,
    sort_keys: true,
    default_flow_style: null,
    explicit_start: false,
  };
  return dumpYaml('to_yaml', value, yamlOptions('to_yaml', bindArgs('to_yaml', args, params, 0)));
}

/** PyYAML's yaml.dump(value, indent=4, allow_unicode=True, default_flow_style=False, sort_keys=True). */
export function toNiceYaml(value: unknown, ...args: unknown[]): string {
  const params = { indent: 4, width: undefined, sort_keys: true, explicit_start: false };
  const a = bindArgs('to_nice_yaml', args, params, 1);
  return dumpYaml('to_nice_yaml', value, { ...yamlOptions('to_nice_yaml', a), defaultFlowStyle: false });
}

// ---------------------------------------------------------------------------------------------
// b64encode, b64decode

type TextEncoding = 'utf-8' | 'utf-16le' | 'latin1' | 'ascii';

function encodingArg(filter: string, value: unknown): TextEncoding {
  const name = stringArg(filter, 'encoding', value).toLowerCase().replaceAll('_', '-');
  if (['utf-8', 'utf8', 'u8'].includes(name)) return 'utf-8';
  if (['utf-16-le', 'utf-16le', 'utf16le'].includes(name)) return 'utf-16le';
  if (['latin-1', 'latin1', 'iso-8859-1', 'iso8859-1'].includes(name)) return 'latin1';
  if (['ascii', 'us-ascii'].includes(name)) return 'ascii';
  return fail(filter, `unsupported encoding ${shown(value)}; expected utf-8, utf-16-le, latin-1 or ascii`);
}

function encodeText(filter: string, s: string, encoding: TextEncoding): Buffer {
  const limit = encoding === 'latin1' ? 0xff : encoding === 'ascii' ? 0x7f : undefined;
  if (limit !== undefined && [...s].some((ch) => (ch.codePointAt(0) ?? 0) > limit)) {
    fail(filter, `${shown(s)} cannot be encoded as ${encoding}`);
  }
  if (encoding === 'utf-8' && /\p{Cs}/u.test(s)) fail(filter, `${shown(s)} holds a lone surrogate`);
  return Buffer.from(s, encoding === 'utf-8' ? 'utf8' : encoding);
}

function decodeText(filter: string, bytes: Buffer, encoding: TextEncoding, input: string): string {
  if (encoding === 'latin1') return bytes.toString('latin1');
  if (encoding === 'ascii' && bytes.some((b) => b > 0x7f)) {
    fail(filter, `${shown(input)} decodes to bytes that are not valid ascii`);
  }
  try {
    return new TextDecoder(encoding === 'ascii' ? 'utf-8' : encoding, { fatal: true }).decode(bytes);
  } catch (err) {
    return fail(filter, `${shown(input)} decodes to bytes that are not valid ${encoding} text`, err);
  }
}

/** Python's base64.b64encode of the text in `encoding`. */
export function b64encode(value: unknown, ...args: unknown[]): string {
  const { encoding } = bindArgs('b64encode', args, { encoding: 'utf-8' });
  const input = text('b64encode', value);
  return encodeText('b64encode', input, encodingArg('b64encode', encoding)).toString('base64');
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Python's base64.b64decode, strictly, decoded as text in `encoding`. */
export function b64decode(value: unknown, ...args: unknown[]): string {
  const { encoding } = bindArgs('b64decode', args, { encoding: 'utf-8' });
  const input = text('b64decode', value);
  const compact = input.replace(/[ \t\n\r\f\v]/g, '');
  if (!BASE64.test(compact)) {
    fail('b64decode', `${shown(input)} is not valid base64 (expected A-Z a-z 0-9 + / and = padding)`);
  }
  return decodeText('b64decode', Buffer.from(compact, 'base64'), encodingArg('b64decode', encoding), input);
}
