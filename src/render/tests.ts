/**
 * Jinja2's tests that nunjucks lacks (`is none`, `is sequence`, ...), with
 * Jinja2's meaning. nunjucks' own tests (`defined`, `mapping`, ...) stay.
 */
import { isMapping } from './merge.js';

export function jinjaTests(): Record<string, (value: unknown, ...args: unknown[]) => boolean> {
  return {
    none: (v) => v === null,
    boolean: (v) => typeof v === 'boolean',
    true: (v) => v === true,
    false: (v) => v === false,
    integer: (v) => typeof v === 'number' && Number.isInteger(v),
    float: (v) => typeof v === 'number' && !Number.isInteger(v),
    sequence: (v) => typeof v === 'string' || Array.isArray(v) || isMapping(v),
    mapping: (v) => isMapping(v),
    string: (v) => typeof v === 'string',
    number: (v) => typeof v === 'number',
    in: (v, seq) =>
      Array.isArray(seq) || typeof seq === 'string'
        ? seq.includes(v as string)
        : isMapping(seq) && Object.hasOwn(seq, String(v)),
  };
}
