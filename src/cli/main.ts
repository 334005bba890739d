#!/usr/bin/env node
/**
 * The `canopy` command: dispatches to subcommands and maps failures to exit
 * codes (0 ok; 1 the operation failed, e.g. a render error; 2 a usage,
 * input or inventory error). The only place that touches process.exit.
 */
import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { CanopyError, type ErrorCode, isCanopyError } from '../errors/index.js';
import { type CliIO, palette, processIO, writeJson } from './io.js';
import { packageVersion } from './package-root.js';

type Command = (argv: string[], io: CliIO) => number | Promise<number>;

/** Each command's module loads only when it runs: `canopy agent` never loads the renderer or fastify. */
const COMMANDS: Record<string, { load: () => Promise<{ run: Command; help: string }>; summary: string }> = {
  render: {
    load: async () =>
      import('./render-command.js').then((m) => ({ run: m.renderCommand, help: m.RENDER_HELP })),
    summary: 'render a template for one host',
  },
  vars: {
    load: async () => import('./vars-command.js').then((m) => ({ run: m.varsCommand, help: m.VARS_HELP })),
    summary: "a host's merged variables; `vars explain` shows where one comes from",
  },
  inventory: {
    load: async () =>
      import('./inventory-command.js').then((m) => ({ run: m.inventoryCommand, help: m.INVENTORY_HELP })),
    summary: 'check an inventory and list its groups and hosts',
  },
  coordinator: {
    load: async () =>
      import('./coordinator-command.js').then((m) => ({
        run: m.coordinatorCommand,
        help: m.COORDINATOR_HELP,
      })),
    summary: 'run the coordinator daemon (CA, agent sessions, API)',
  },
  agent: {
    load: async () => import('./agent-command.js').then((m) => ({ run: m.agentCommand, help: m.AGENT_HELP })),
    summary: 'run the agent daemon (join once with --join TOKEN)',
  },
  token: {
    load: async () =>
      import('./fleet-commands.js').then((m) => ({ run: m.tokenCommand, help: m.TOKEN_HELP })),
    summary: 'create a one-time join token for an agent',
  },
  agents: {
    load: async () =>
      import('./fleet-commands.js').then((m) => ({ run: m.agentsCommand, help: m.AGENTS_HELP })),
    summary: 'list agents (online, heartbeat, facts); `agents revoke NAME`',
  },
  run: {
    load: async () => import('./run-command.js').then((m) => ({ run: m.runCommand, help: m.RUN_HELP })),
    summary: 'run a command on hosts and collect every result',
  },
  push: {
    load: async () => import('./push-command.js').then((m) => ({ run: m.pushCommand, help: m.PUSH_HELP })),
    summary: 'render a push file per host and install only what differs (--check, --diff)',
  },
  rollback: {
    load: async () =>
      import('./push-command.js').then((m) => ({ run: m.rollbackCommand, help: m.ROLLBACK_HELP })),
    summary: "restore the newest backup of a push file's destinations",
  },
  dist: {
    load: async () => import('./dist-command.js').then((m) => ({ run: m.distCommand, help: m.DIST_HELP })),
    summary: "distribute a large file to hosts over the agents' peer tree (chunked, verified)",
  },
  'peer-rsh': {
    load: async () =>
      import('./peer-rsh-command.js').then((m) => ({ run: m.peerRshCommand, help: m.PEER_RSH_HELP })),
    summary: "rsync's remote shell over the agents' peer channel (rsync -e 'canopy peer-rsh ...')",
  },
  demo: {
    load: async () => import('./demo-command.js').then((m) => ({ run: m.demoCommand, help: m.DEMO_HELP })),
    summary: 'start a demo fleet on this machine, run a command, render the examples',
  },
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
  'AGENT_CONFIG',
  'API_BAD_REQUEST',
  'RUN_UNKNOWN_TARGET',
  'CLIENT_CONFIG',
  'PUSH_FILE',
]);

export function exitCodeFor(err: CanopyError): number {
  return INPUT_CODES.has(err.code) ? 2 : 1;
}

export async function main(argv: string[], io: CliIO): Promise<number> {
  const json = argv.includes('--json');
  try {
    const [name, ...rest] = argv;
    if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
      const topic = name === 'help' ? rest[0] : undefined;
      const c = topic ? COMMANDS[topic] : undefined;
      io.out.write(c ? (await c.load()).help : HELP);
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
    return await (await command.load()).run(rest, io);
  } catch (err) {
    if (!isCanopyError(err)) {
      // A bug, not bad input: the stack goes to stderr (below); --json still gets an error object.
      if (json)
        writeJson(io, { error: { code: 'INTERNAL', message: String((err as Error)?.message ?? err) } });
      throw err;
    }
    const p = palette(io.err, io.env);
    io.err.write(`${p.red('canopy: error:')} ${err.message}\n`);
    if (json) writeJson(io, { error: err.toJSON() });
    return exitCodeFor(err);
  }
}

// Run only when this file is the program (npm's bin link is a symlink to it), not when imported.
const entry = process.argv[1];
if (entry !== undefined && import.meta.url === pathToFileURL(realpathSync(entry)).href) {
  // `canopy ... | head`: a reader that went away is not an error of canopy's.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    process.exit(process.exitCode ?? 0);
  });
  main(process.argv.slice(2), processIO()).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`canopy: internal error: ${(err as Error)?.stack ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
