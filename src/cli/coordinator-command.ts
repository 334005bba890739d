/** `canopy coordinator`: runs the coordinator daemon until SIGINT/SIGTERM. */
import { resolve } from 'node:path';
import { parseDuration } from '../agent/index.js';
import { Coordinator } from '../coordinator/index.js';
import { COMMON_OPTIONS, parse, usage } from './args.js';
import { isHttpsUrl } from './client.js';
import { daemonLogger, untilSignal } from './daemon.js';
import type { CliIO } from './io.js';
import { packageVersion } from './package-root.js';

export const COORDINATOR_HELP = `usage: canopy coordinator --data DIR [--listen HOST:PORT] [--inventory INV] [options]

Runs the coordinator: the CA, the agents' control sessions, the run queue
(LevelDB under DIR/state) and the HTTPS API. On first start it creates its CA
(ECDSA P-256), its server certificate and an admin API token (DIR/admin.token,
mode 0600), and writes the CLI's client config (DIR/client.json and
$CANOPY_CONFIG or ~/.config/canopy/client.json).

options:
  --data DIR             state directory (created mode 0700)
  --listen HOST:PORT     default 127.0.0.1:7443 (port 0: any free port)
  --inventory, -i INV    inventory file or directory; reloaded when it changes
  --advertise URL        address agents dial (goes into join tokens); default https://HOST:PORT
  --cert-ttl DURATION    lifetime of agent certificates (default 30d; agents renew at 2/3)
  --no-client-config     write only DIR/client.json
  --log-level LEVEL      trace, debug, info (default), warn, error
Logs are JSON lines on stderr.
`;

export async function coordinatorCommand(argv: string[], io: CliIO): Promise<number> {
  const { values } = parse('coordinator', argv, {
    ...COMMON_OPTIONS,
    data: { type: 'string' },
    listen: { type: 'string' },
    inventory: { type: 'string', short: 'i' },
    advertise: { type: 'string' },
    'cert-ttl': { type: 'string' },
    'no-client-config': { type: 'boolean', default: false },
    'log-level': { type: 'string' },
  });
  if (values.help) {
    io.out.write(COORDINATOR_HELP);
    return 0;
  }
  if (!values.data) throw usage('coordinator', '--data DIR is required');
  const listen = values.listen ?? '127.0.0.1:7443';
  const m = /^(.+):(\d+)$/.exec(listen);
  if (!m) throw usage('coordinator', `--listen "${listen}" is not HOST:PORT`);
  const host = (m[1] ?? '').replace(/^\[|\]$/g, '');
  const port = Number(m[2]);
  if (port > 65535) throw usage('coordinator', `--listen "${listen}": port ${port} is not 0-65535`);
  if (values.advertise !== undefined && !isHttpsUrl(values.advertise)) {
    throw usage(
      'coordinator',
      `--advertise "${values.advertise}" is not an https:// URL (the address agents and the CLI dial, e.g. https://coord.example:7443)`,
    );
  }
  const log = daemonLogger('coordinator', values['log-level'], io.env);
  const inventory = values.inventory ?? io.env.CANOPY_INVENTORY;
  const coordinator = await Coordinator.start({
    dataDir: resolve(io.cwd, values.data),
    host,
    port,
    ...(inventory ? { inventoryPath: resolve(io.cwd, inventory) } : {}),
    ...(values.advertise ? { advertise: values.advertise } : {}),
    ...(values['cert-ttl'] ? { certTtlMs: parseDuration(values['cert-ttl'], '--cert-ttl') } : {}),
    ...(values['no-client-config'] ? { clientConfigPath: null } : {}),
    logger: log,
    version: packageVersion(),
  });
  const summary = {
    url: coordinator.url,
    caFingerprint: coordinator.caFingerprint,
    adminToken: coordinator.adminTokenPath,
    clientConfig: coordinator.clientConfigPaths,
    created: coordinator.created,
  };
  if (values.json) io.out.write(`${JSON.stringify(summary)}\n`);
  else {
    io.out.write(`canopy coordinator listening on ${coordinator.url}\n`);
    io.out.write(`  CA fingerprint (SHA-256): ${coordinator.caFingerprint}\n`);
    io.out.write(
      `  admin API token: ${coordinator.adminTokenPath} (mode 0600)${coordinator.created.includes(coordinator.adminTokenPath) ? ' [created]' : ''}\n`,
    );
    io.out.write(`  client config: ${coordinator.clientConfigPaths.join(', ')}\n`);
    io.out.write(`  join an agent: canopy agent --join "$(canopy token create)" --data DIR\n`);
  }
  const sig = await untilSignal();
  log.info({ signal: sig }, 'stopping');
  await coordinator.close();
  return 0;
}
