/**
 * What relaying costs an agent: a coordinator and N agents on loopback (no
 * shaping, so the run is CPU-bound), one `canopy dist` of a SIZE-byte file
 * through the default plan (a pipelined chain up to 64 hosts), then per
 * agent the CPU seconds it spent during the distribution (from /proc), its
 * peak RSS (VmHWM) and CPU seconds per GB it moved (received + sent).
 *
 *   node dist/bench/dist/relay-cost.js [N=4] [SIZE_MIB=512]
 *   AGENT_FLAGS="--max-semi-space-size=1" ... to try other V8 flags
 *
 * The targets: RSS while relaying a 4 GiB file under 100 MB; CPU
 * seconds per GB relayed reported. Everything it starts is killed by PID
 * and its directory removed on exit.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createWriteStream, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { AGENT_NODE_FLAGS } from '../../src/cli/agent-command.js';
import { runBench } from '../lib/run-bench.js';

const MAIN = resolve(import.meta.dirname, '..', '..', 'src', 'cli', 'main.js');
const CLK_TCK = 100;
const GB = 1e9;

const n = Number(process.argv[2] ?? 4);
const sizeMiB = Number(process.argv[3] ?? 512);
const flags = process.env.AGENT_FLAGS !== undefined ? process.env.AGENT_FLAGS.split(/\s+/).filter(Boolean) : AGENT_NODE_FLAGS;
const dir = mkdtempSync(join(process.env.RELAY_COST_DIR ?? tmpdir(), 'canopy-relay-cost-'));
const env = { PATH: process.env.PATH ?? '', HOME: dir, CANOPY_CONFIG: join(dir, 'client.json') };
const children: ChildProcess[] = [];

function start(args: string[], nodeFlags: string[] = []): { child: ChildProcess; out: () => string } {
  let out = '';
  const child = spawn(process.execPath, [...nodeFlags, MAIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout?.setEncoding('utf8').on('data', (c: string) => {
    out += c;
  });
  child.stderr?.resume();
  children.push(child);
  return { child, out: () => out };
}

function cli(args: string[]): Promise<string> {
  return new Promise((done, fail) => {
    const c = start(args);
    c.child.on('exit', (code) =>
      code === 0 ? done(c.out()) : fail(new Error(`canopy ${args.join(' ')} exited ${code}`)),
    );
  });
}

async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined): Promise<T> {
  const end = Date.now() + 60_000;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** utime + stime in seconds, and peak RSS in bytes, of a live process. */
function usage(pid: number): { cpu: number; hwm: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const cpu = (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
  const hwm = Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) * 1024;
  return { cpu, hwm };
}

/** Per thread name: user and system CPU seconds (a diagnostic: main thread vs libuv pool vs GC helpers). */
function threads(pid: number): string {
  const by = new Map<string, [number, number]>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    const name = tid === String(pid) ? 'main' : 'other';
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const t = by.get(name) ?? [0, 0];
    by.set(name, [t[0] + Number(f[11]) / CLK_TCK, t[1] + Number(f[12]) / CLK_TCK]);
  }
  return [...by].map(([k, [u, s]]) => `${k} u${u.toFixed(2)} s${s.toFixed(2)}`).join(', ');
}

async function writeRandom(path: string, bytes: number): Promise<void> {
  const out = createWriteStream(path);
  const block = Buffer.alloc(8 << 20);
  for (let done = 0; done < bytes; done += block.length) {
    for (let i = 0; i < block.length; i += 4) block.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, i);
    if (!out.write(block.subarray(0, Math.min(block.length, bytes - done)))) {
      await new Promise<void>((r) => out.once('drain', () => r()));
    }
  }
  await new Promise<void>((r, j) => out.end((err?: Error | null) => (err ? j(err) : r())));
}

async function main(): Promise<number> {
  const coord = start(['coordinator', '--data', join(dir, 'coordinator'), '--listen', '127.0.0.1:0']);
  await until('the coordinator', () => /listening on (https:\/\/\S+)/.exec(coord.out())?.[1]);
  const agents: { name: string; pid: number }[] = [];
  for (let i = 1; i <= n; i++) {
    const name = `relay-${i}`;
    const data = join(dir, 'agents', name);
    mkdirSync(join(data, 'root'), { recursive: true });
    const token = (await cli(['token', 'create', '--name', name])).trim();
    const a = start(
      ['agent', '--data', data, '--name', name, '--join', token, '--root', join(data, 'root')]
        .concat(['--peer-listen', '127.0.0.1:0', '--heartbeat', '500ms']),
      flags,
    );
    agents.push({ name, pid: a.child.pid ?? 0 });
  }
  await until('every agent online with a peer address', async () => {
    const l = JSON.parse(await cli(['agents', '--json'])) as { agents: { facts: { peer?: string } | null }[] };
    return l.agents.length === n && l.agents.every((a) => a.facts?.peer);
  });
  const src = join(dir, 'blob.bin');
  await writeRandom(src, sizeMiB * 2 ** 20);
  const before = new Map(agents.map((a) => [a.name, usage(a.pid)]));
  const coordBefore = usage(coord.child.pid ?? 0).cpu;
  const t0 = process.hrtime.bigint();
  const dest = join(dir, 'agents', '{host}', 'root', 'blob.bin');
  const report = JSON.parse(await cli(['dist', src, '--dest', dest, '--targets', 'all', '--json'])) as {
    results: { host: string; state: string; transfer?: { fromPeers: Record<string, number> } }[];
  };
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const sent = new Map<string, number>();
  for (const r of report.results) {
    if (r.state !== 'ok') throw new Error(`${r.host}: ${r.state}`);
    for (const [from, b] of Object.entries(r.transfer?.fromPeers ?? {})) sent.set(from, (sent.get(from) ?? 0) + b);
  }
  const size = sizeMiB * 2 ** 20;
  console.log(`${n} agents, ${sizeMiB} MiB, wall ${wall.toFixed(2)} s, flags: ${flags.join(' ') || '(none)'}`);
  console.log('agent      cpu s   moved GB   cpu s/GB   peak RSS MB');
  let cpuAll = 0;
  let movedAll = 0;
  for (const a of agents) {
    const u = usage(a.pid);
    const cpu = u.cpu - (before.get(a.name)?.cpu ?? 0);
    const moved = (size + (sent.get(a.name) ?? 0)) / GB;
    cpuAll += cpu;
    movedAll += moved;
    const row = [a.name.padEnd(9), cpu.toFixed(2).padStart(6), moved.toFixed(3).padStart(10)];
    console.log([...row, (cpu / moved).toFixed(2).padStart(10), (u.hwm / 2 ** 20).toFixed(1).padStart(13)].join(' '));
  }
  if (process.env.RELAY_COST_THREADS) for (const a of agents) console.log(a.name, threads(a.pid));
  const coordCpu = usage(coord.child.pid ?? 0).cpu - coordBefore;
  console.log(`agents: ${(cpuAll / movedAll).toFixed(2)} cpu s per GB moved; coordinator ${coordCpu.toFixed(2)} cpu s`);
  // With --cpu-prof in AGENT_FLAGS the agents write their profiles on a clean stop.
  for (const c of children) c.kill('SIGTERM');
  await Promise.all(children.map((c) => new Promise((r) => (c.exitCode !== null ? r(0) : c.once('exit', r)))));
  return 0;
}

await runBench('relay-cost', main, () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});
