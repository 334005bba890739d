// Real coordinator and agent processes on loopback for integration tests:
// each test gets its own directory, port and client config, and every
// process it started is killed (by PID) when the test ends.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { AGENT_NODE_FLAGS } from '../../src/cli/agent-command.js';
import { COORDINATOR_SAN, checkSan } from '../../src/pki/index.js';
import { BIN, ROOT } from './cli.js';

export interface Proc {
  child: ChildProcess;
  /** Everything the process wrote to stderr (its JSON log lines) so far, across restarts. */
  log(): string;
  stdout(): string;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

function launch(
  args: string[],
  env: Record<string, string>,
  sink: { log: string; out: string },
): ChildProcess {
  // Agents run with the V8 flags bin/canopy gives them, so the tests exercise what operators run.
  const flags = args[0] === 'agent' ? AGENT_NODE_FLAGS : [];
  const child = spawn(process.execPath, [...flags, BIN, ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.setEncoding('utf8').on('data', (c: string) => {
    sink.out += c;
  });
  child.stderr?.setEncoding('utf8').on('data', (c: string) => {
    sink.log += c;
  });
  return child;
}

function proc(
  t: TestContext,
  start: () => ChildProcess,
  sink: { log: string; out: string },
): Proc & { restart(): void } {
  let child = start();
  const p = {
    get child() {
      return child;
    },
    log: () => sink.log,
    stdout: () => sink.out,
    kill: (signal: NodeJS.Signals = 'SIGTERM') =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill(signal);
      }),
    restart: () => {
      child = start();
    },
  };
  t.after(() => p.kill('SIGKILL'));
  return p;
}

export async function waitFor<T>(
  what: string,
  fn: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 20_000,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(
    `timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`,
  );
}

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the canopy CLI asynchronously; killed after timeoutMs (a command that wrongly succeeds may run on). */
export function cli(args: string[], env: Record<string, string>, timeoutMs = 120_000): Promise<CliRun> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => {
      stdout += c;
    });
    child.stderr.setEncoding('utf8').on('data', (c: string) => {
      stderr += c;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

export interface TestFleet {
  dir: string;
  /** Env for CLI calls: CANOPY_CONFIG points at this fleet's client config. */
  env: Record<string, string>;
  coordinator: Proc & { restart(): void };
  url: string;
  agents: Map<string, TestAgent>;
  cli(args: string[]): Promise<CliRun>;
  cliJson<T>(args: string[]): Promise<T>;
  token(name?: string): Promise<string>;
  addAgent(name: string, opts?: AgentOpts): Promise<TestAgent>;
  waitOnline(names: string[]): Promise<void>;
  /** Until every named agent is online and has announced its peer server's address. */
  waitPeers(names: string[]): Promise<void>;
}

export interface AgentOpts {
  bind?: string;
  roots?: string[];
  runAs?: string[];
  labels?: Record<string, string>;
  heartbeat?: string;
  extra?: string[];
  /** Wait until the coordinator lists it online (default true). */
  wait?: boolean;
}

export interface TestAgent extends Proc {
  name: string;
  dataDir: string;
  restart(): void;
}

export async function startFleet(
  t: TestContext,
  opts: { inventory?: string; extra?: string[] } = {},
): Promise<TestFleet> {
  const dir = mkdtempSync(join(tmpdir(), 'canopy-fleet-'));
  const agents = new Map<string, TestAgent>();
  const procs: Proc[] = [];
  // Every process is gone before its directory goes (the runner may call after-hooks in the order
  // they were added): one still writing its journal or chunks would make rmSync fail with ENOTEMPTY.
  t.after(async () => {
    await Promise.all(procs.map((p) => p.kill('SIGKILL')));
    rmSync(dir, { recursive: true, force: true });
  });
  const env = { CANOPY_CONFIG: join(dir, 'client.json'), HOME: dir };
  const sink = { log: '', out: '' };
  let args = [
    'coordinator',
    '--data',
    join(dir, 'coordinator'),
    '--listen',
    '127.0.0.1:0',
    ...(opts.inventory ? ['--inventory', opts.inventory] : []),
    ...(opts.extra ?? []),
  ];
  const coordinator = proc(
    t,
    () => {
      sink.out = '';
      return launch(args, env, sink);
    },
    sink,
  );
  procs.push(coordinator);
  const url = await waitFor(
    'the coordinator to listen',
    () => /listening on (https:\/\/\S+)/.exec(sink.out)?.[1],
  );
  // A restart must come back on the same port (agents and tokens know it).
  args = args.map((a) => (a === '127.0.0.1:0' ? url.replace('https://', '') : a));

  const fleet: TestFleet = {
    dir,
    env,
    coordinator,
    url,
    agents,
    cli: (a) => cli(a, env),
    async cliJson<T>(a: string[]) {
      const r = await cli([...a, '--json'], env);
      if (r.code !== 0) throw new Error(`canopy ${a.join(' ')} exited ${r.code}: ${r.stderr}`);
      return JSON.parse(r.stdout) as T;
    },
    async token(name?: string) {
      const r = await cli(['token', 'create', ...(name ? ['--name', name] : [])], env);
      if (r.code !== 0) throw new Error(`token create failed: ${r.stderr}`);
      return r.stdout.trim();
    },
    async addAgent(name: string, o: AgentOpts = {}) {
      const dataDir = join(dir, 'agents', name);
      const root = join(dataDir, 'root');
      mkdirSync(root, { recursive: true });
      const token = await fleet.token(name);
      const base = [
        'agent',
        '--data',
        dataDir,
        '--name',
        name,
        '--heartbeat',
        o.heartbeat ?? '500ms',
        '--reconnect-max',
        '1s',
        ...(o.bind ? ['--bind', o.bind] : []),
        ...(o.roots ?? [root]).flatMap((r) => ['--root', r]),
        ...(o.runAs ?? []).flatMap((a) => ['--run-as', a]),
        ...Object.entries(o.labels ?? {}).flatMap(([k, v]) => ['--label', `${k}=${v}`]),
        ...(o.extra ?? []),
      ];
      const asink = { log: '', out: '' };
      let first = true;
      const p = proc(
        t,
        () => {
          const a = first ? [...base, '--join', token] : base;
          first = false;
          return launch(a, env, asink);
        },
        asink,
      );
      const agent: TestAgent = Object.assign(p, { name, dataDir });
      agents.set(name, agent);
      procs.push(agent);
      if (o.wait !== false) await fleet.waitOnline([name]);
      return agent;
    },
    async waitOnline(names: string[]) {
      await waitFor(`agents ${names.join(', ')} online`, async () => {
        const { agents: list } = await fleet.cliJson<{ agents: { name: string; online: boolean }[] }>([
          'agents',
        ]);
        return names.every((n) => list.some((a) => a.name === n && a.online));
      });
    },
    async waitPeers(names: string[]) {
      await waitFor(`agents ${names.join(', ')} online with a peer address`, async () => {
        const { agents: list } = await fleet.cliJson<{
          agents: { name: string; online: boolean; facts: { peer?: string } | null }[];
        }>(['agents']);
        return names.every((n) => list.some((a) => a.name === n && a.online && a.facts?.peer));
      });
    },
  };
  return fleet;
}

export function readJsonLines(text: string): Record<string, unknown>[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

export function fileText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/** `canopy run --json` output, as the tests read it. */
export interface RunJson {
  run: string;
  summary: { total: number; counts: Record<string, number> };
  results: {
    host: string;
    state: string;
    exitCode: number | null;
    stdout: string;
    stderr: string;
    error?: string;
  }[];
}

/** The client config ({url, token, ca}) the fleet's coordinator wrote. */
export function clientConfig(fleet: TestFleet): { url: string; token: string; ca: string } {
  return JSON.parse(readFileSync(join(fleet.dir, 'coordinator', 'client.json'), 'utf8'));
}

/** A raw API call with the fleet's admin token. */
export function apiOf(fleet: TestFleet) {
  const c = clientConfig(fleet);
  return (method: string, path: string, body?: unknown) =>
    new Promise<{ status: number; text: string }>((resolve, reject) => {
      const data = body === undefined ? undefined : JSON.stringify(body);
      const req = request(`${c.url}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${c.token}`,
          ...(data ? { 'content-type': 'application/json' } : {}),
        },
        ca: c.ca,
        checkServerIdentity: checkSan(COORDINATOR_SAN),
      });
      req.on('response', (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (d: string) => {
          text += d;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      });
      req.on('error', reject);
      req.end(data);
    });
}
