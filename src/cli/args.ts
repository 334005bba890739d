/**
 * Command-line parsing shared by every subcommand: node's parseArgs in
 * strict mode, with errors turned into USAGE errors that name the flag and
 * point at `--help`, and the order-preserving task-variable flags.
 */
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { CanopyError } from '../errors/index.js';
import type { TaskVarInput } from '../render/index.js';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export const COMMON_OPTIONS = {
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
} as const satisfies OptionSpec;

export const INVENTORY_OPTIONS = {
  inventory: { type: 'string', short: 'i' },
} as const satisfies OptionSpec;

export const TASK_VAR_OPTIONS = {
  var: { type: 'string', short: 'e', multiple: true },
  'vars-file': { type: 'string', multiple: true },
} as const satisfies OptionSpec;

export interface Parsed<O extends OptionSpec> {
  values: {
    [K in keyof O]: O[K] extends { multiple: true }
      ? string[] | undefined
      : O[K] extends { type: 'boolean' }
        ? boolean
        : string | undefined;
  };
  positionals: string[];
  taskVars: TaskVarInput[];
}

export function parse<O extends OptionSpec>(command: string, argv: string[], options: O): Parsed<O> {
  try {
    const { values, positionals, tokens } = parseArgs({
      args: argv,
      options,
      allowPositionals: true,
      strict: true,
      tokens: true,
    });
    const taskVars: TaskVarInput[] = [];
    for (const t of tokens ?? []) {
      if (t.kind !== 'option' || t.value === undefined) continue;
      if (t.name === 'var') taskVars.push({ kind: 'var', text: t.value });
      if (t.name === 'vars-file') taskVars.push({ kind: 'file', path: t.value });
    }
    return { values: values as unknown as Parsed<O>['values'], positionals, taskVars };
  } catch (err) {
    throw new CanopyError(
      'USAGE',
      `canopy ${command}: ${(err as Error).message}; see: canopy ${command} --help`,
      {
        cause: err,
      },
    );
  }
}

export function usage(command: string, message: string): CanopyError {
  return new CanopyError('USAGE', `canopy ${command}: ${message}; see: canopy ${command} --help`);
}

/** --inventory, or $CANOPY_INVENTORY. */
export function inventoryPath(
  command: string,
  flag: string | undefined,
  env: Readonly<Record<string, string | undefined>>,
): string {
  const path = flag ?? env.CANOPY_INVENTORY;
  if (!path) throw usage(command, 'no inventory: pass --inventory FILE_OR_DIR (or set CANOPY_INVENTORY)');
  return path;
}
