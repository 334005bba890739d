/**
 * `canopy demo`: canopy on its embedded example fleet (examples/), with no
 * setup. It starts a coordinator in this process (state in a temporary
 * directory) and 8 real agent processes on 127.0.0.11-18, one per example
 * host, each with its own root directory and the host's labels; joins them
 * with one-time tokens; runs a command on all of them; pushes the example
 * templates to every agent (cold, then a warm re-push that changes nothing);
 * distributes a 64 MiB image to all of them through their peer tree;
 * then renders every example template and explains a few variables. --keep
 * leaves the fleet running until Ctrl-C. Every process it started is
 * stopped on exit, and the temporary directory removed.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { cpSync, mkdirSync, mkdtempSync, openSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { Coordinator } from '../coordinator/index.js';
import { explainVar, type Inventory, loadInventory, TemplateEngine, VarResolver } from '../render/index.js';
import { AGENT_NODE_FLAGS } from './agent-command.js';
import { COMMON_OPTIONS, parse } from './args.js';
import { ApiClient } from './client.js';
import { untilSignal } from './daemon.js';
import { distCommand } from './dist-command.js';
import { type CliIO, palette, type Stream, writeJson } from './io.js';
import { packageRoot, packageVersion } from './package-root.js';
import { pushCommand } from './push-command.js';
import { runCommand } from './run-command.js';
import { shortPath } from './vars-command.js';

export const DEMO_HELP = `usage: canopy demo [--keep] [--json]

Starts a demo fleet on this machine: a coordinator (state in a temporary
directory) and 8 real agents on 127.0.0.11-18, one per host of examples/
(two IDCs, labels idc and role), joined with one-time tokens. Runs a command
on all of them, pushes the example templates to every agent (then pushes
again: nothing changes), distributes a 64 MiB image to all of them through
the agents' peer tree (progress, then a report: time, copies the source
uploaded), renders every example template for every host and
explains where a few variables come from.

  --keep   leave the fleet running and print commands to try; Ctrl-C stops it
`;

const EXPLAINED = ['app.log.level', 'app.workers', 'release.channel'];
const DEMO_IMAGE_BYTES = 64 * 1024 * 1024;
const DEMO_COMMAND = 'echo "$(id -un) on $(uname -sr)"; test -w "$PWD"';

class Capture implements Stream {
  text = '';
  write(chunk: string): boolean {
    this.text += chunk;
    return true;
  }
}

export async function demoCommand(argv: string[], io: CliIO): Promise<number> {
  const { values } = parse('demo', argv, { ...COMMON_OPTIONS, keep: { type: 'boolean', default: false } });
  if (values.help) {
    io.out.write(DEMO_HELP);
    return 0;
  }
  const p = palette(io.out, io.env);
  const root = join(packageRoot(), 'examples');
  const inv = loadInventory(join(root, 'inventory.yaml'));
  const dir = mkdtempSync(join(tmpdir(), 'canopy-demo-'));
  const clientConfig = join(dir, 'client.json');
  const children: ChildProcess[] = [];
  let coordinator: Coordinator | undefined;
  // Agents must not outlive the demo, however it ends (Ctrl-C, a closed pipe, a crash).
  const killAll = () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  };
  process.once('exit', killAll);
  const onSignal = () => {
    killAll();
    rmSync(dir, { recursive: true, force: true });
    process.exit(130);
  };
  if (!values.keep) {
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  }
  const say = (t: string) => {
    if (!values.json) io.out.write(t);
  };
  try {
    const log = pino(
      { level: 'info', base: { component: 'coordinator' } },
      pino.destination({ dest: join(dir, 'coordinator.log'), sync: true }),
    );
    coordinator = await Coordinator.start({
      dataDir: join(dir, 'coordinator'),
      host: '127.0.0.1',
      port: 0,
      inventoryPath: inv.path,
      logger: log,
      version: packageVersion(),
      clientConfigPath: clientConfig,
    });
    say(`${p.bold('canopy demo')}: coordinator on ${coordinator.url} (state in ${dir})\n`);
    const api = new ApiClient({ url: coordinator.url, token: coordinator.adminToken, ca: coordinator.caPem });
    const bin = fileURLToPath(new URL('./main.js', import.meta.url));
    for (const host of inv.hosts.values()) {
      const { token } = await api.call<{ token: string }>('POST', '/v1/tokens', {
        ttl: 600,
        name: host.name,
      });
      const data = join(dir, 'agents', host.name);
      // Each agent's root stands for its host's "/": DIR/hosts/NAME.
      const hostRoot = join(dir, 'hosts', host.name);
      mkdirSync(join(hostRoot, 'etc', 'nginx'), { recursive: true });
      mkdirSync(join(hostRoot, 'etc', 'orders'), { recursive: true });
      mkdirSync(join(hostRoot, 'var', 'lib', 'images'), { recursive: true });
      mkdirSync(data, { recursive: true });
      const logFd = openSync(join(data, 'agent.log'), 'a');
      const args = [
        ...AGENT_NODE_FLAGS,
        bin,
        'agent',
        '--data',
        data,
        '--join',
        token,
        '--name',
        host.name,
        '--bind',
        host.address,
        '--root',
        hostRoot,
        '--heartbeat',
        '2s',
        // Agents relay distribution chunks to each other on their own address.
        '--peer-listen',
        `${host.address}:0`,
      ];
      for (const [k, v] of Object.entries(host.labels)) args.push('--label', `${k}=${v}`);
      children.push(
        spawn(process.execPath, args, {
          stdio: ['ignore', 'ignore', logFd],
          env: { PATH: process.env.PATH ?? '' },
        }),
      );
    }
    const names = [...inv.hosts.keys()];
    const deadline = Date.now() + 30_000;
    while (coordinator.fleet.list().filter((a) => a.online).length < names.length) {
      if (Date.now() > deadline) {
        const missing = names.filter((n) => !coordinator?.fleet.list().some((a) => a.name === n && a.online));
        throw new Error(
          `agents did not come online within 30 s: ${missing.join(', ')} (logs in ${dir}/agents/NAME/agent.log)`,
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    say(
      `8 agents joined with one-time tokens, each from its own address: ${[...inv.hosts.values()].map((h) => `${h.name}@${h.address}`).join(' ')}\n`,
    );
    say(`\n${p.bold('Running')} on all: ${p.cyan(`canopy run all -- '${DEMO_COMMAND}'`)}\n`);
    const runEnv = { ...io.env, CANOPY_CONFIG: clientConfig };
    let runReport: unknown;
    let runCode: number;
    if (values.json) {
      const cap = new Capture();
      runCode = await runCommand(['all', '--json', '--', DEMO_COMMAND], {
        ...io,
        out: cap,
        err: new Capture(),
        env: runEnv,
      });
      runReport = JSON.parse(cap.text);
    } else {
      runCode = await runCommand(['all', '--', DEMO_COMMAND], { ...io, env: runEnv });
    }
    const pushFile = writeDemoPush(dir, root);
    const pushes: unknown[] = [];
    const steps: [string, string[]][] = [
      ['Pushing', []],
      ['Pushing again (warm: every file is already right, nothing is sent)', []],
      [
        'Checking a change (--check writes nothing; hosts with the same diff grouped)',
        ['--check', '--diff', '--var', 'app.workers=16'],
      ],
    ];
    for (const [what, extra] of steps) {
      say(
        `\n${p.bold(what)}: ${p.cyan(`canopy push ${shortPath(io.cwd, pushFile)}${extra.map((a) => ` ${a}`).join('')}`)}\n`,
      );
      const pushArgs = [pushFile, '--quiet', ...extra];
      let code: number;
      if (values.json) {
        const cap = new Capture();
        code = await pushCommand([...pushArgs, '--json'], {
          ...io,
          out: cap,
          err: new Capture(),
          env: runEnv,
        });
        pushes.push(JSON.parse(cap.text));
      } else {
        code = await pushCommand(pushArgs, { ...io, env: runEnv });
      }
      runCode = runCode || code;
    }
    // A large file through the agents' peer tree: chunked, verified, relayed, installed atomically.
    const image = join(dir, 'demo-image.bin');
    writeFileSync(image, randomBytes(DEMO_IMAGE_BYTES));
    const distArgs = [
      image,
      '--dest',
      join(dir, 'hosts', '{host}', 'var', 'lib', 'images', 'demo.img'),
      '--targets',
      'all',
    ];
    say(
      `\n${p.bold('Distributing')} a ${DEMO_IMAGE_BYTES / 1024 / 1024} MiB image through the agents' peer tree: ` +
        `${p.cyan(`canopy dist ${shortPath(io.cwd, image)} --dest ${shortPath(io.cwd, join(dir, 'hosts'))}/{host}/var/lib/images/demo.img --targets all`)}\n`,
    );
    let dist: unknown;
    if (values.json) {
      const cap = new Capture();
      runCode =
        (await distCommand([...distArgs, '--json'], { ...io, out: cap, err: new Capture(), env: runEnv })) ||
        runCode;
      dist = JSON.parse(cap.text);
    } else {
      runCode = (await distCommand(distArgs, { ...io, env: runEnv })) || runCode;
    }
    const report = renderExamples(io, values, inv, root);
    if (values.json)
      writeJson(io, { coordinator: coordinator.url, run: runReport, pushes, dist, hosts: report });
    if (values.keep) {
      io.out.write(
        `\n${p.bold('The fleet keeps running')} (Ctrl-C stops it and removes ${dir}). Try, in another shell:\n` +
          `  export CANOPY_CONFIG=${clientConfig}\n` +
          `  canopy agents\n` +
          `  canopy run idc=bj -- uptime\n` +
          `  canopy run web -- 'echo ?HOST; cat /etc/os-release | head -1'\n` +
          `  canopy run all --timeout 2s -- sleep 10\n` +
          `  canopy push ${pushFile} --check --diff --var app.workers=16\n` +
          `  canopy push ${pushFile} --limit web --var release.version=1.6.0 && canopy rollback ${pushFile} --limit web\n` +
          `  canopy token create --name extra-01\n` +
          `  canopy agents revoke web-04\n`,
      );
      await untilSignal();
    }
    return runCode;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await Promise.all(
      children.map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.exitCode !== null || c.signalCode !== null) return resolve();
            const force = setTimeout(() => c.kill('SIGKILL'), 5000);
            c.once('exit', () => {
              clearTimeout(force);
              resolve();
            });
            c.kill('SIGTERM');
          }),
      ),
    );
    process.off('exit', killAll);
    await coordinator?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The demo's push file, beside a copy of the example templates: every host
 * gets nginx.conf and app.yaml under its agent's root (DIR/hosts/NAME,
 * standing for the host's "/").
 */
function writeDemoPush(dir: string, examples: string): string {
  const pushDir = join(dir, 'push');
  cpSync(join(examples, 'templates'), join(pushDir, 'templates'), { recursive: true });
  const hosts = join(dir, 'hosts');
  const file = join(pushDir, 'site.push.yaml');
  writeFileSync(
    file,
    `# canopy demo: each agent's root ${hosts}/NAME stands for the host's "/"
targets: all
templates: templates
files:
  - template: nginx.conf.njk
    dest: "${hosts}/{{ inventory_hostname }}/etc/nginx/nginx.conf"
    mode: "0644"
    backup: true
  - template: app.yaml.njk
    dest: "${hosts}/{{ inventory_hostname }}/etc/orders/app.yaml"
    mode: "0640"
notify: echo "reloaded nginx on $(hostname)"
`,
  );
  return file;
}

/** Renders every example template for every host and explains a few variables (the issue-3 demo). */
function renderExamples(io: CliIO, values: { json: boolean }, inv: Inventory, root: string): unknown[] {
  const p = palette(io.out, io.env);
  const engine = new TemplateEngine({ root: join(root, 'templates') });
  const templates = readdirSync(engine.root)
    .filter((f) => f.endsWith('.njk'))
    .sort();
  const resolver = new VarResolver(inv);
  const report: unknown[] = [];
  if (!values.json) {
    io.out.write(
      `\n${p.bold('Rendering')}: ${inv.hosts.size} hosts from ${shortPath(io.cwd, inv.path)}, templates ${templates.join(', ')}\n`,
    );
  }
  for (const host of inv.hosts.keys()) {
    const vars = resolver.templateVars(host);
    const files = templates.map((t) => {
      const text = engine.template(t).render(vars, host);
      return { template: t, md5: createHash('md5').update(text).digest('hex'), text };
    });
    const explained = EXPLAINED.map((k) => explainVar(inv, host, k));
    report.push({ host, files, explain: explained });
    if (values.json) continue;
    io.out.write(
      `\n${p.bold(`== ${host}`)} (${inv.hosts.get(host)?.address}; groups ${(inv.memberships.get(host) ?? []).map((g) => g.name).join(', ')})\n`,
    );
    for (const f of files) {
      io.out.write(`${p.cyan(`-- ${f.template}`)} ${p.dim(`md5 ${f.md5}`)}\n${f.text}`);
    }
    io.out.write(`${p.cyan('-- vars explain')}\n`);
    for (const e of explained) {
      const winner = e.entries.find((x) => x.status === 'wins');
      const chain = e.entries.map((x) => (x.status === 'wins' ? p.green(x.layer) : x.layer)).join(' < ');
      io.out.write(
        `  ${e.key} = ${JSON.stringify(e.value)}  (${chain}${winner ? `; from ${shortPath(io.cwd, winner.origin)}:${winner.line}` : ''})\n`,
      );
    }
  }
  if (!values.json) {
    io.out.write(
      `\nTry: canopy vars explain web-01 app.log.level --inventory ${shortPath(io.cwd, inv.path)}\n`,
    );
  }
  return report;
}
