/** `canopy agent`: joins (once, with a token) and runs the agent daemon until SIGINT/SIGTERM. */
import { statSync } from 'node:fs';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import {
  Agent,
  type AgentConfig,
  checkAgentConfig,
  DEFAULT_AGENT_CONFIG,
  joinCoordinator,
  loadAgentConfig,
  loadIdentity,
  parseDuration,
  parseSize,
  saveIdentity,
} from '../agent/index.js';
import { CanopyError } from '../errors/index.js';
import { COMMON_OPTIONS, parse, usage } from './args.js';
import { daemonLogger, untilSignal } from './daemon.js';
import type { CliIO } from './io.js';
import { packageVersion } from './package-root.js';

/**
 * V8 flags the agent daemon runs with (bin/canopy passes the same list; the demo, the tests and the benchmarks too): a
 * small young generation and no optimizing JavaScript compilers keep an idle agent under 60 MB
 * resident (56.6 MB measured). Not --lite-mode (55.6 MB): it implies --jitless, which removes
 * WebAssembly, and the agent hashes chunks with hash-wasm's BLAKE3 (~450 MB/s under these flags).
 */
export const AGENT_NODE_FLAGS = [
  '--max-semi-space-size=1',
  '--no-opt',
  '--no-sparkplug',
  // While relaying, V8 otherwise starts a full mark-compact every 1.5-2 s on a 13 MB heap (its
  // old-generation limit starts small): -10 % agent CPU at 32 relays (bench/README.md); idle RSS unchanged.
  '--initial-old-space-size=32',
];

export const AGENT_HELP = `usage: canopy agent --data DIR [--join TOKEN] [options]

Runs the agent. The first start needs a one-time join token (canopy token
create): the agent generates its key here, pins the coordinator's CA from the
token, and stores its certificate under DIR. Later starts need no token.

options:
  --data DIR             state directory (identity, task journal)
  --join TOKEN           join (or re-join) with this token
  --name NAME            the host name it joins as (default: config name, then the hostname)
  --config FILE          agent config (YAML: name, roots, run_as, labels, heartbeat, bind, coordinator)
  --root DIR             a directory commands may run in / files may be written to (repeatable)
  --run-as ACCOUNT       an account commands may run as (repeatable; default: only its own)
  --label KEY=VALUE      a label (repeatable)
  --heartbeat DURATION   default 5s; offline after three missed
  --bind ADDR            source address of its connections
  --peer-listen HOST:PORT  serve chunks to other agents there (distribution relay; port 0 = any)
  --chunk-quota SIZE     disk for the chunk store (default 10G)
  --allow-setid          install files with a setuid/setgid mode (default: refused)
  --coordinator URL      override the address in the token
  --reconnect-max DUR    longest wait between reconnects (default 15s)
  --log-level LEVEL      trace, debug, info (default), warn, error
`;

export async function agentCommand(argv: string[], io: CliIO): Promise<number> {
  const { values } = parse('agent', argv, {
    ...COMMON_OPTIONS,
    data: { type: 'string' },
    join: { type: 'string' },
    name: { type: 'string' },
    config: { type: 'string' },
    root: { type: 'string', multiple: true },
    'run-as': { type: 'string', multiple: true },
    label: { type: 'string', multiple: true },
    heartbeat: { type: 'string' },
    bind: { type: 'string' },
    coordinator: { type: 'string' },
    'reconnect-max': { type: 'string' },
    'peer-listen': { type: 'string' },
    'chunk-quota': { type: 'string' },
    'allow-setid': { type: 'boolean', default: false },
    'log-level': { type: 'string' },
  });
  if (values.help) {
    io.out.write(AGENT_HELP);
    return 0;
  }
  if (!values.data) throw usage('agent', '--data DIR is required');
  const dataDir = resolve(io.cwd, values.data);
  const config: AgentConfig = values.config
    ? loadAgentConfig(resolve(io.cwd, values.config))
    : { ...DEFAULT_AGENT_CONFIG, labels: {} };
  if (values.root) config.roots = [...config.roots, ...values.root.map((r) => resolve(io.cwd, r))];
  if (values['run-as']) config.runAs = [...config.runAs, ...values['run-as']];
  for (const l of values.label ?? []) {
    const i = l.indexOf('=');
    if (i <= 0) throw usage('agent', `--label "${l}" is not KEY=VALUE`);
    config.labels[l.slice(0, i)] = l.slice(i + 1);
  }
  if (values.heartbeat) config.heartbeatMs = parseDuration(values.heartbeat, '--heartbeat');
  if (values['reconnect-max'])
    config.reconnectMaxMs = parseDuration(values['reconnect-max'], '--reconnect-max');
  if (values.bind) config.bind = values.bind;
  if (values['peer-listen']) config.peerListen = values['peer-listen'];
  if (values['chunk-quota']) config.chunkQuotaBytes = parseSize(values['chunk-quota'], '--chunk-quota');
  if (values['allow-setid']) config.allowSetid = true;
  if (values.coordinator) config.coordinator = values.coordinator;
  if (values.name) config.name = values.name;
  checkAgentConfig(config, (key) => `--${key.replace('_', '-')}`);
  for (const root of config.roots) {
    if (!statSync(root, { throwIfNoEntry: false })?.isDirectory()) {
      throw new CanopyError(
        'AGENT_CONFIG',
        `root ${root} is not an existing directory; create it (mkdir -p ${root}) or remove it from roots`,
        { path: root },
      );
    }
  }

  const log = daemonLogger('agent', values['log-level'], io.env);
  let identity = await loadIdentity(dataDir);
  if (values.join) {
    const name = config.name ?? identity?.name ?? hostname();
    identity = await joinCoordinator(values.join, name, {
      ...(config.bind ? { localAddress: config.bind } : {}),
      ...(config.coordinator ? { url: config.coordinator } : {}),
    });
    await saveIdentity(dataDir, identity);
    log.info({ name, coordinator: identity.url }, 'joined the coordinator');
  }
  if (!identity) {
    throw new CanopyError(
      'AGENT_CONFIG',
      `this agent has not joined yet (no ${dataDir}/identity.json): start it once with --join TOKEN (create one with: canopy token create)`,
    );
  }
  if (config.name && config.name !== identity.name) {
    throw new CanopyError(
      'AGENT_CONFIG',
      `this agent joined as "${identity.name}", not "${config.name}"; re-join with --join TOKEN --name ${config.name}`,
    );
  }
  const agent = new Agent({ dataDir, config, identity, logger: log, version: packageVersion() });
  await agent.start();
  const sig = await untilSignal();
  log.info({ signal: sig }, 'stopping');
  await agent.stop();
  return 0;
}
