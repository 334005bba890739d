#!/usr/bin/env node
/**
 * The `canopy` command: dispatches to subcommands and maps failures to exit
 * codes (0 ok; 1 the operation failed, e.g. a render error; 2 a usage,
 * input or inventory error). The only place that touches process.exit.
 */
import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { CanopyError, type ErrorCode, isCanopyError } from '../errors/index.js';
import { DEMO_HELP, demoCommand } from './demo-command.js';
import { INVENTORY_HELP, inventoryCommand } from './inventory-command.js';
import { type CliIO, palette, processIO, writeJson } from './io.js';
import { packageVersion } from './package-root.js';
import { RENDER_HELP, renderCommand } from './render-command.js';
import { VARS_HELP, varsCommand } from './vars-command.js';

type Command = (argv: string[], io: CliIO) => number;

const COMMANDS: Record<string, { run: Command; help: string; summary: string }> = {
  render: { run: renderCommand, help: RENDER_HELP, summary: 'render a template for one host' },
  vars: {
    run: varsCommand,
    help: VARS_HELP,
    summary: "a host's merged variables; `vars explain` shows where one comes from",
  },
  inventory: {
    run: inventoryCommand,
    help: INVENTORY_HELP,
    summary: 'check an inventory and list its groups and hosts',
  },
  demo: { run: demoCommand, help: DEMO_HELP, summary: 'render the example fleet in examples/' },
};

export const HELP = `usage: canopy COMMAND [options]   (canopy COMMAND --help for each)

commands:
${Object.entries(COMMANDS)
  .map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`)
  .join('\n')}

Every command takes --json (only JSON on stdout). Exit codes: 0 ok, 1 failed, 2 usage or input error.
`;

/** Codes that mean the input was wrong (exit 2), rather than the operation failing (exit 1). */
const INPUT_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'USAGE',
  'INPUT_NOT_FOUND',
  'INVENTORY_YAML',
  'INVENTORY_INVALID',
  'INVENTORY_DUPLICATE',
  'INVENTORY_UNKNOWN_HOST',
  'VARS_RESERVED',
  'VARS_BAD_TASK_VAR',
]);

export function exitCodeFor(err: CanopyError): number {
  return INPUT_CODES.has(err.code) ? 2 : 1;
}

export function main(argv: string[], io: CliIO): number {
  const json = argv.includes('--json');
  try {
    const [name, ...rest] = argv;
    if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
      const topic = name === 'help' ? rest[0] : undefined;
      io.out.write(topic && COMMANDS[topic] ? (COMMANDS[topic]?.help ?? HELP) : HELP);
      return name === undefined ? 2 : 0;
    }
    if (name === '--version' || name === 'version') {
      io.out.write(`canopy ${packageVersion()}\n`);
      return 0;
    }
    const command = COMMANDS[name];
    if (!command) {
      throw new CanopyError(
        'USAGE',
        `unknown command "${name}" (commands: ${Object.keys(COMMANDS).join(', ')}); see: canopy --help`,
      );
    }
    return command.run(rest, io);
  } catch (err) {
    if (!isCanopyError(err)) throw err;
    const p = palette(io.err, io.env);
    io.err.write(`${p.red('canopy: error:')} ${err.message}\n`);
    if (json) writeJson(io, { error: err.toJSON() });
    return exitCodeFor(err);
  }
}

// Run only when this file is the program (npm's bin link is a symlink to it), not when imported.
const entry = process.argv[1];
if (entry !== undefined && import.meta.url === pathToFileURL(realpathSync(entry)).href) {
  process.exitCode = main(process.argv.slice(2), processIO());
}
