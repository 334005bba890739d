import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isCanopyError } from '../errors/index.js';
import {
  childrenOf,
  choosePlan,
  estimateSeconds,
  type Plan,
  type PlanHost,
  type PlanInput,
  plan,
  rejoinParents,
  replan,
} from './planner.js';

const KiB = 1024;
const MiB = 1024 * KiB;
/** 840 chunks split evenly over S = 1..8 stripes, so a stripe is exactly 1/S of the blob. */
const CHUNKS = 840;
const IDCS = 'abcdefgh';

/** Hosts `<idc><nnn>`, sizes[k] of them in IDC k, racks round-robin; the source is `src` in IDC a. */
function fleet(sizes: readonly number[], racks = 1, extra: Partial<PlanHost> = {}): PlanHost[] {
  const out: PlanHost[] = [];
  sizes.forEach((n, k) => {
    for (let i = 0; i < n; i++) {
      const name = `${IDCS[k]}${String(i).padStart(3, '0')}`;
      out.push({ name, idc: IDCS[k], rack: `r${i % racks}`, ...extra });
    }
  });
  return out;
}

function input(sizes: readonly number[], over: Partial<PlanInput> = {}, racks = 1): PlanInput {
  return {
    source: { name: 'src', idc: 'a', rack: 'r0' },
    hosts: fleet(sizes, racks),
    chunkCount: CHUNKS,
    ...over,
  };
}

function idcs(inp: PlanInput): Map<string, string> {
  return new Map([
    [inp.source.name, inp.source.idc ?? ''],
    ...inp.hosts.map((h) => [h.name, h.idc ?? ''] as const),
  ]);
}

/** Chunks of stripe s that host h lacks, computed here independently of the planner. */
function need(inp: PlanInput, p: Plan, name: string, s: number): number {
  const has = inp.hosts.find((h) => h.name === name)?.has;
  let n = 0;
  for (let i = s; i < p.chunkCount; i += p.stripes) if (has !== 'all' && !has?.includes(i)) n++;
  return n;
}

/** Every receiving host has one parent per stripe and every stripe is a tree rooted at the source or a seed. */
function assertTrees(p: Plan, inp: PlanInput): void {
  const roots = new Set([p.source, ...p.seeds]);
  const dead = new Set(p.failed);
  const receivers = inp.hosts.map((h) => h.name).filter((n) => !roots.has(n) && !dead.has(n));
  assert.deepEqual(Object.keys(p.parents), receivers.sort());
  for (const [h, ps] of Object.entries(p.parents)) {
    assert.equal(ps.length, p.stripes, `${h} has one parent per stripe`);
    for (let s = 0; s < p.stripes; s++) {
      let x = h;
      for (let hops = 0; !roots.has(x); hops++) {
        assert.ok(hops <= receivers.length, `stripe ${s}: ${h} is on a cycle`);
        assert.ok(!dead.has(x), `stripe ${s}: ${h} hangs below failed host ${x}`);
        const up = p.parents[x]?.[s];
        assert.ok(up !== undefined && up !== x, `stripe ${s}: ${x} has no parent in the plan`);
        x = up;
      }
    }
  }
}

/** Per IDC, per stripe: edges that enter the IDC from outside. */
function crossings(p: Plan, inp: PlanInput): Map<string, number[]> {
  const idc = idcs(inp);
  const out = new Map<string, number[]>();
  for (const [h, ps] of Object.entries(p.parents)) {
    const mine = idc.get(h) ?? '';
    const row = out.get(mine) ?? new Array<number>(p.stripes).fill(0);
    ps.forEach((parent, s) => {
      if (idc.get(parent) !== mine) row[s] = (row[s] ?? 0) + 1;
    });
    out.set(mine, row);
  }
  return out;
}

/** Copies each host uploads, from the edges. */
function uploads(p: Plan, inp: PlanInput): Map<string, number> {
  const up = new Map<string, number>();
  for (const [h, ps] of Object.entries(p.parents)) {
    ps.forEach((parent, s) => {
      up.set(parent, (up.get(parent) ?? 0) + need(inp, p, h, s) / p.chunkCount);
    });
  }
  return up;
}

/** Stripes in which a host has children. */
function interiorIn(p: Plan, host: string): number {
  let n = 0;
  for (let s = 0; s < p.stripes; s++) if (childrenOf(p, host, s).length > 0) n++;
  return n;
}

function codeOf(fn: () => unknown): { code: string; message: string } {
  try {
    fn();
  } catch (err) {
    assert.ok(isCanopyError(err), `expected a CanopyError, got ${String(err)}`);
    return { code: err.code, message: err.message };
  }
  assert.fail('expected an error');
}

/** A deterministic shuffle (LCG), so tests are repeatable. */
function shuffle<T>(items: readonly T[], seed: number): T[] {
  const out = [...items];
  let x = seed;
  for (let i = out.length - 1; i > 0; i--) {
    x = (x * 1103515245 + 12345) % 2147483648;
    const j = x % (i + 1);
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}

interface Case {
  label: string;
  inp: PlanInput;
  p: Plan;
  sizes: number[];
}

const SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 16, 17, 20, 31, 32, 33, 47, 64, 99, 128, 200];

function mixes(n: number): number[][] {
  const fifth = Math.floor(n / 5);
  const out = [[n], [Math.floor(n / 2), n - Math.floor(n / 2)], [0, n]];
  if (n >= 4) out.push([1, 2, n - 3]);
  if (n >= 10) out.push([fifth, fifth, fifth, fifth, n - 4 * fifth]);
  return out;
}

let memo: Case[] | undefined;
/** Plans for N = 1..200 over several IDC mixes, S = 1..8 and crossIdc = 1, 2. */
function cases(): Case[] {
  if (memo) return memo;
  memo = [];
  for (const n of SIZES) {
    for (const sizes of mixes(n)) {
      for (const stripes of [1, 2, 3, 4, 8]) {
        for (const crossIdc of [1, 2]) {
          const inp = input(sizes, { stripes, crossIdc }, 3);
          memo.push({ label: `sizes=${sizes} S=${stripes} crossIdc=${crossIdc}`, inp, p: plan(inp), sizes });
        }
      }
    }
  }
  return memo;
}

test('every host has one parent per stripe and every stripe is a tree rooted at the source', () => {
  for (const { p, inp } of cases()) assertTrees(p, inp);
  // Hosts without any labels form one IDC with the source.
  const bare = { source: { name: 'src' }, hosts: [{ name: 'x' }, { name: 'y' }], chunkCount: 10 };
  assertTrees(plan(bare), bare);
  assert.deepEqual(plan(bare).entries, {});
});

test('planner crosses each IDC boundary once: one edge per stripe, through at most crossIdc hosts', () => {
  for (const { label, p, inp, sizes } of cases()) {
    const k = inp.crossIdc ?? 1;
    for (const [idc, row] of crossings(p, inp)) {
      if (idc === 'a')
        assert.deepEqual(new Set(row), new Set([0]), `${label}: nothing enters the source's IDC`);
      else assert.deepEqual(new Set(row), new Set([1]), `${label}: IDC ${idc} is entered once per stripe`);
    }
    const remote = sizes.slice(1).filter((n) => n > 0).length;
    assert.equal(Object.keys(p.entries).length, remote, label);
    for (const [idc, hosts] of Object.entries(p.entries)) {
      assert.ok(hosts.length <= k, `${label}: IDC ${idc} has ${hosts.length} entry hosts`);
      const members = inp.hosts.filter((h) => h.idc === idc).length;
      assert.equal(hosts.length, Math.min(k, p.stripes, members), label);
    }
  }
});

test('an entry host receives all its stripes from outside and feeds the rest of its IDC', () => {
  const inp = input([10, 10, 10], { stripes: 4 });
  const p = plan(inp);
  const idc = idcs(inp);
  assert.deepEqual(Object.keys(p.entries), ['b', 'c']);
  for (const [dc, [entry]] of Object.entries(p.entries)) {
    assert.ok(
      p.parents[entry as string]?.every((x) => idc.get(x) !== dc),
      `${entry} gets every stripe from outside`,
    );
    for (const h of inp.hosts.filter((x) => x.idc === dc && x.name !== entry)) {
      assert.ok(
        p.parents[h.name]?.every((x) => idc.get(x) === dc),
        `${h.name} gets every stripe from inside`,
      );
    }
  }
  // With two entries, each takes half the stripes from outside: still one copy crosses.
  const two = plan(input([10, 10, 10], { stripes: 4, crossIdc: 2 }));
  for (const [dc, hosts] of Object.entries(two.entries)) {
    const outside = hosts.map((h) => two.parents[h]?.filter((x) => idc.get(x) !== dc).length);
    assert.deepEqual(outside, [2, 2], dc);
  }
});

test('no host uploads more than about one copy, and uploads add up to what hosts receive', () => {
  for (const { label, p, inp } of cases()) {
    const mine = uploads(p, inp);
    let total = 0;
    for (const [h, copies] of Object.entries(p.uploads)) {
      assert.ok(Math.abs(copies - (mine.get(h) ?? 0)) < 1e-6, `${label}: ${h} uploads ${copies}`);
      if (h !== 'src')
        assert.ok(copies <= 1 + 1 / p.stripes + 1e-9, `${label}: ${h} uploads ${copies} copies`);
      total += copies;
    }
    assert.ok(
      Math.abs(total - Object.keys(p.parents).length) < 1e-3,
      `${label}: every host receives one copy`,
    );
  }
});

test('the source uploads one copy: the others relay, and remote IDCs are fed by IDCs already fed', () => {
  for (const { label, p } of cases()) {
    assert.ok((p.uploads.src ?? 0) <= 1 + 1e-9, `${label}: the source uploads ${p.uploads.src} copies`);
  }
  // A source with four times the uplink feeds remote IDCs directly, within its budget of four copies.
  const fat = input([8, 8, 8, 8], { stripes: 4 });
  fat.source.uplinkBps = 4e9;
  const p = plan(fat);
  assertTrees(p, fat);
  const src = p.uploads.src ?? 0;
  assert.ok(src > 2 && src <= 4 + 1e-9, `the source uploads ${src}`);
  const direct = Object.values(p.entries).filter(([e]) => p.parents[e as string]?.every((x) => x === 'src'));
  assert.ok(direct.length >= 2, `${direct.length} IDCs fed by the source`);
});

test('depth grows with log_S of the largest IDC, plus two hops per IDC on the way', () => {
  for (const { label, p, sizes } of cases()) {
    const n = sizes.reduce((a, b) => a + b, 0);
    if (p.stripes === 1) {
      assert.ok(p.depth <= n, label);
      if (sizes.length === 1) assert.equal(p.depth, n, `${label}: one stripe is a chain`);
      continue;
    }
    const dcs = sizes.filter((x, i) => x > 0 || i === 0).length;
    const log = Math.ceil(Math.log(Math.max(...sizes)) / Math.log(p.stripes) - 1e-9);
    assert.ok(p.depth <= log + 2 * dcs + 2, `${label}: depth ${p.depth}`);
    if (sizes.length === 1) assert.ok(p.depth <= log + 2, `${label}: depth ${p.depth} in one IDC`);
  }
});

test('each host forwards one stripe (SplitStream); only a few per IDC forward two', () => {
  for (const { label, p, inp, sizes } of cases()) {
    const entries = new Set(Object.values(p.entries).flat());
    for (const [k, size] of sizes.entries()) {
      if (size < p.stripes * p.stripes) continue;
      const hosts = inp.hosts.filter((h) => h.idc === IDCS[k] && !entries.has(h.name)).map((h) => h.name);
      const counts = hosts.map((h) => interiorIn(p, h));
      assert.ok(
        Math.max(...counts) <= 2,
        `${label}: a host of ${IDCS[k]} forwards ${Math.max(...counts)} stripes`,
      );
      const two = counts.filter((c) => c === 2).length;
      assert.ok(two <= p.stripes - 1, `${label}: ${two} hosts of ${IDCS[k]} forward two stripes`);
    }
  }
});

test('parent-child edges stay within a rack when they can', () => {
  const share = (sizes: number[], racks: number, stripes: number) => {
    const inp = input(sizes, { stripes }, racks);
    const p = plan(inp);
    const rack = new Map(inp.hosts.map((h) => [h.name, `${h.idc}/${h.rack}`]));
    let same = 0;
    let inside = 0;
    for (const [h, ps] of Object.entries(p.parents)) {
      for (const x of ps) {
        if (!rack.has(x) || rack.get(x)?.split('/')[0] !== rack.get(h)?.split('/')[0]) continue;
        inside++;
        if (rack.get(x) === rack.get(h)) same++;
      }
    }
    return same / inside;
  };
  // With racks dealt round-robin, a rack-blind tree would keep 1/racks of its edges in a rack.
  assert.ok(share([32], 4, 4) >= 0.75, `32 hosts, 4 racks: ${share([32], 4, 4)}`);
  assert.ok(share([48], 3, 2) >= 0.9, `48 hosts, 3 racks: ${share([48], 3, 2)}`);
  assert.ok(share([100], 5, 4) >= 0.85, `100 hosts, 5 racks: ${share([100], 5, 4)}`);
  assert.ok(share([40, 40], 4, 4) >= 0.75, `2 IDCs of 40, 4 racks: ${share([40, 40], 4, 4)}`);
});

test('hosts holding the whole blob seed: no parents, roots of stripes, less for the source', () => {
  const inp = input([10, 10]);
  const hosts = inp.hosts.map((h) =>
    h.name === 'a003' || h.name === 'b007' ? { ...h, has: 'all' as const } : h,
  );
  const seeded = { ...inp, hosts };
  const p = plan(seeded);
  assertTrees(p, seeded);
  assert.deepEqual(p.seeds, ['a003', 'b007']);
  assert.equal(p.parents.a003, undefined);
  // IDC b has a seed: nothing crosses into it.
  assert.deepEqual(p.entries, {});
  assert.ok((p.uploads.b007 ?? 0) > 0.9, 'the remote seed feeds its IDC');
  // In the source's IDC the seed roots half the stripes.
  assert.ok((p.uploads.src ?? 0) <= 0.5 + 1e-9, `the source uploads ${p.uploads.src}`);
  assert.ok((p.uploads.a003 ?? 0) >= 0.5 - 1e-9);
  // A list of every chunk index is the same as 'all'.
  const every = Array.from({ length: CHUNKS }, (_, i) => i);
  const listed = plan({
    ...inp,
    hosts: inp.hosts.map((h) => (h.name === 'b007' ? { ...h, has: every } : h)),
  });
  assert.deepEqual(listed.seeds, ['b007']);
  // Everyone holds it: nothing to do.
  const done = plan({ ...inp, hosts: inp.hosts.map((h) => ({ ...h, has: 'all' as const })) });
  assert.deepEqual([done.parents, done.depth, done.uploads.src], [{}, 0, 0]);
});

test('hosts holding part of the blob get parents for every stripe, and the best-stocked host enters its IDC', () => {
  const half = Array.from({ length: CHUNKS / 2 }, (_, i) => i * 2);
  const inp = input([6, 6], { stripes: 2 });
  const hosts = inp.hosts.map((h) => (h.name === 'b004' ? { ...h, has: half } : h));
  const partial = { ...inp, hosts };
  const p = plan(partial);
  assertTrees(p, partial);
  assert.equal(p.parents.b004?.length, 2);
  assert.deepEqual(p.entries.b, ['b004'], 'the host holding stripe 0 enters IDC b');
  // Stripe 0 is all even chunks: b004 needs nothing of it, so only half a copy crosses into b.
  const row = crossings(p, partial).get('b') ?? [];
  const crossed = row.reduce((sum, edges, s) => sum + (edges && need(partial, p, 'b004', s)) / CHUNKS, 0);
  assert.equal(crossed, 0.5);
  const mine = uploads(p, partial);
  for (const [h, copies] of Object.entries(p.uploads))
    assert.ok(Math.abs(copies - (mine.get(h) ?? 0)) < 1e-6, h);
});

test('capacities shape the plan: a weak uplink stays a leaf, a strong one serves more', () => {
  const inp = input([24], { stripes: 4 });
  const hosts = inp.hosts.map((h) => {
    if (h.name === 'a005') return { ...h, uplinkBps: 1e8 };
    if (h.name === 'a006') return { ...h, uplinkBps: 2e9 };
    return h;
  });
  const mixed = { ...inp, hosts };
  const p = plan(mixed);
  assertTrees(p, mixed);
  assert.equal(p.uploads.a005, 0, 'a host with a tenth of the uplink forwards nothing');
  assert.ok(
    (p.uploads.a006 ?? 0) > 1.5 && (p.uploads.a006 ?? 0) <= 2 + 1e-9,
    `a006 uploads ${p.uploads.a006}`,
  );
});

test('the same input gives the same plan, whatever the order of hosts, and plans are JSON', () => {
  for (const [i, c] of cases().entries()) {
    if (i % 7 !== 0) continue;
    const again = plan({ ...c.inp, hosts: shuffle(c.inp.hosts, i + 1) });
    assert.deepEqual(again, c.p, c.label);
    assert.deepEqual(JSON.parse(JSON.stringify(c.p)), c.p);
  }
});

test('childrenOf lists the hosts whose parent in that stripe is the host, by name', () => {
  const p = plan(input([20], { stripes: 4 }));
  for (let s = 0; s < 4; s++) {
    const kids = childrenOf(p, 'src', s);
    assert.equal(kids.length, 1, 'the source has one child per stripe');
    let total = 0;
    for (const h of ['src', ...Object.keys(p.parents)]) {
      const c = childrenOf(p, h, s);
      assert.deepEqual(c, [...c].sort());
      for (const x of c) assert.equal(p.parents[x]?.[s], h);
      total += c.length;
    }
    assert.equal(total, 20);
  }
});

test('bad input is refused with TRANSFER_PLAN_INVALID naming the host or field and the fix', () => {
  const ok = input([3]);
  const bad = (over: Partial<PlanInput>) => codeOf(() => plan({ ...ok, ...over }));
  const dup = bad({ hosts: [...ok.hosts, { name: 'a001' }] });
  assert.equal(dup.code, 'TRANSFER_PLAN_INVALID');
  assert.match(dup.message, /"a001" is listed twice; list every target once/);
  assert.match(
    bad({ hosts: [...ok.hosts, { name: 'src' }] }).message,
    /"src" is both the source and a target/,
  );
  assert.match(bad({ chunkCount: 0 }).message, /chunkCount is 0; give a whole number of at least 1/);
  assert.match(bad({ chunkCount: 2.5 }).message, /chunkCount is 2.5/);
  assert.match(bad({ stripes: 0 }).message, /stripes is 0/);
  assert.match(bad({ crossIdc: 0 }).message, /crossIdc is 0/);
  const slow = bad({ hosts: [{ name: 'w1', uplinkBps: 0 }] });
  assert.match(slow.message, /host "w1": uplinkBps is 0; give a positive capacity in bits\/s/);
  assert.match(bad({ hosts: [{ name: 'w1', downlinkBps: -5 }] }).message, /host "w1": downlinkBps is -5/);
  assert.match(bad({ hosts: [{ name: 'w1', downlinkBps: Number.NaN }] }).message, /downlinkBps is NaN/);
  assert.match(bad({ source: { name: 'src', uplinkBps: 0 } }).message, /host "src": uplinkBps is 0/);
  assert.match(
    bad({ hosts: [{ name: 'w1', has: [CHUNKS] }] }).message,
    /host "w1": has lists chunk 840, but/,
  );
  assert.match(bad({ hosts: [{ name: '' }] }).message, /a target has no name/);
  // The subject is in the error's fields too, for --json output.
  assert.throws(() => plan({ ...ok, hosts: [{ name: 'w1', uplinkBps: 0 }] }), {
    code: 'TRANSFER_PLAN_INVALID',
    subject: { host: 'w1', field: 'uplinkBps' },
  });
});

test('more stripes than chunks are cut to one stripe per chunk', () => {
  const p = plan(input([5], { chunkCount: 3, stripes: 8 }));
  assert.equal(p.stripes, 3);
  assert.equal(p.parents.a000?.length, 3);
  assert.deepEqual(plan(input([], { chunkCount: 1 })).parents, {});
});

// ---------------------------------------------------------------- replan

function orphanedEdgesOnly(before: Plan, after: Plan, dead: ReadonlySet<string>): void {
  for (const [h, ps] of Object.entries(after.parents)) {
    ps.forEach((parent, s) => {
      const old = before.parents[h]?.[s];
      if (old !== undefined && !dead.has(old))
        assert.equal(parent, old, `${h} keeps its parent in stripe ${s}`);
    });
  }
}

test('replan gives every orphan a new parent, keeps every other edge and never makes a cycle', () => {
  for (const [i, c] of cases().entries()) {
    if (i % 3 !== 0 || c.inp.hosts.length < 3) continue;
    const names = c.inp.hosts.map((h) => h.name);
    const failed = shuffle(names, i).slice(0, Math.max(1, Math.floor(names.length / 10)));
    const after = replan(c.p, c.inp, failed);
    assertTrees(after, c.inp);
    assert.deepEqual(after.failed, [...failed].sort());
    for (const f of failed) {
      assert.equal(after.parents[f], undefined);
      assert.equal(after.uploads[f], undefined, `${f} failed and gets no children`);
    }
    orphanedEdgesOnly(c.p, after, new Set(failed));
    // A stripe enters an IDC once; only the source, as the last resort, may add an edge.
    const idc = idcs(c.inp);
    for (const dc of new Set(c.inp.hosts.map((h) => h.idc))) {
      for (let s = 0; s < after.stripes; s++) {
        const edges = Object.entries(after.parents).filter(
          ([h, ps]) => idc.get(h) === dc && ps[s] !== 'src' && idc.get(ps[s] ?? '') !== dc,
        );
        assert.ok(edges.length <= 1, `${c.label}: ${edges.length} edges enter ${dc} in stripe ${s}`);
      }
    }
    const mine = uploads(after, c.inp);
    for (const [h, copies] of Object.entries(after.uploads)) {
      assert.ok(Math.abs(copies - (mine.get(h) ?? 0)) < 1e-6, `${c.label}: ${h}`);
    }
  }
});

test('after one host fails, its first child per stripe climbs to the grandparent; budgets and crossings hold', () => {
  for (const [i, c] of cases().entries()) {
    // Where an IDC has fewer hosts than stripes, its hosts may have to take more than one extra stream.
    if (i % 4 !== 0 || Math.min(...c.sizes.filter((n) => n > 0)) < c.p.stripes) continue;
    for (const [j, h] of c.inp.hosts.entries()) {
      if (j % 11 !== 0) continue;
      const after = replan(c.p, c.inp, [h.name]);
      const label = `${c.label}, ${h.name} failed`;
      for (const [x, copies] of Object.entries(after.uploads)) {
        assert.ok(
          copies <= (x === 'src' ? (c.p.uploads.src ?? 0) : 1 + 1 / c.p.stripes) + 1e-9,
          `${label}: ${x}`,
        );
      }
      for (const [dc, row] of crossings(after, c.inp)) {
        if (dc !== 'a') assert.deepEqual(new Set(row), new Set([1]), `${label}: IDC ${dc}`);
      }
      // The failed host's first child in each stripe climbs to its grandparent.
      for (let s = 0; s < c.p.stripes; s++) {
        const [first] = childrenOf(c.p, h.name, s);
        if (first) assert.equal(after.parents[first]?.[s], c.p.parents[h.name]?.[s], `${label}: stripe ${s}`);
      }
    }
  }
});

test('an orphan takes its grandparent first, then a host of its own IDC', () => {
  const inp = input([30, 30], { stripes: 3 }, 2);
  const p = plan(inp);
  const idc = idcs(inp);
  // An interior host of IDC b that is not an entry.
  const victim = Object.keys(p.parents).find(
    (h) => idc.get(h) === 'b' && !p.entries.b?.includes(h) && interiorIn(p, h),
  );
  assert.ok(victim);
  const after = replan(p, inp, [victim]);
  for (let s = 0; s < 3; s++) {
    const orphans = childrenOf(p, victim, s);
    if (orphans.length === 0) continue;
    const grand: string | undefined = p.parents[victim]?.[s];
    assert.equal(
      after.parents[orphans[0] as string]?.[s],
      grand,
      `stripe ${s}: the grandparent adopts the first`,
    );
    for (const o of orphans) assert.equal(idc.get(after.parents[o]?.[s] ?? ''), 'b', `${o} stays inside b`);
  }
  assert.deepEqual(after.entries, p.entries, 'no new IDC crossing');
});

test("when an IDC's entry fails, each stripe still crosses into the IDC once", () => {
  for (const k of [1, 2]) {
    const inp = input([12, 12, 12], { stripes: 4, crossIdc: k });
    const p = plan(inp);
    const entry = p.entries.b?.[0] as string;
    const after = replan(p, inp, [entry]);
    assertTrees(after, inp);
    for (const [dc, row] of crossings(after, inp)) {
      if (dc !== 'a') assert.deepEqual(new Set(row), new Set([1]), `crossIdc ${k}: IDC ${dc}`);
    }
  }
  // With one entry, its child inside b in each stripe climbs to the entry's parent outside.
  const inp = input([12, 12, 12], { stripes: 4 });
  const p = plan(inp);
  const entry = p.entries.b?.[0] as string;
  const after = replan(p, inp, [entry]);
  for (let s = 0; s < 4; s++) {
    const inside = childrenOf(p, entry, s).filter((o) => o.startsWith('b'));
    assert.equal(inside.length, 1);
    assert.equal(after.parents[inside[0] as string]?.[s], p.parents[entry]?.[s], `stripe ${s}`);
  }
});

test('replan handles seeds, repeated failures and whole subtrees failing together', () => {
  const inp = input([16, 16], { stripes: 4 }, 2);
  const hosts = inp.hosts.map((h) => (h.name === 'a002' ? { ...h, has: 'all' as const } : h));
  const seeded = { ...inp, hosts };
  const p = plan(seeded);
  const one = replan(p, seeded, ['a002']);
  assertTrees(one, seeded);
  assert.deepEqual(one.seeds, []);
  // A parent and its child fail at once: the grandchildren climb past both.
  let pick: { parent: string; child: string; s: number } | undefined;
  for (const parent of Object.keys(one.parents).filter((h) => h.startsWith('b'))) {
    for (let s = 0; s < 4 && !pick; s++) {
      const child = childrenOf(one, parent, s).find((c) => childrenOf(one, c, s).length > 0);
      if (child) pick = { parent, child, s };
    }
  }
  assert.ok(pick);
  const { parent, child, s } = pick;
  const two = replan(one, seeded, [parent, child]);
  assertTrees(two, seeded);
  orphanedEdgesOnly(one, two, new Set([parent, child]));
  for (const g of childrenOf(one, child, s)) assert.notEqual(two.parents[g]?.[s], child);
  assert.deepEqual(two.failed, ['a002', parent, child].sort());
  // Failing an already failed host again changes nothing.
  assert.deepEqual(replan(two, seeded, ['a002']), two);
  // Everyone but the source fails.
  const all = replan(
    two,
    seeded,
    seeded.hosts.map((h) => h.name),
  );
  assert.deepEqual([all.parents, all.uploads], [{}, { src: 0 }]);
});

test('replan is deterministic and refuses the source, unknown hosts and another input', () => {
  const inp = input([10, 10], { stripes: 2 });
  const p = plan(inp);
  assert.deepEqual(replan(p, inp, ['a003', 'b001']), replan(p, inp, ['b001', 'a003']));
  const src = codeOf(() => replan(p, inp, ['src']));
  assert.equal(src.code, 'TRANSFER_PLAN_INVALID');
  assert.match(src.message, /the source "src" cannot fail over/);
  assert.match(codeOf(() => replan(p, inp, ['zz9'])).message, /failed host "zz9" is not in the plan/);
  assert.match(
    codeOf(() => replan(p, input([9, 10]), ['a003'])).message,
    /host "a009" of the plan is not in the input/,
  );
  assert.match(
    codeOf(() => replan(p, { ...inp, chunkCount: 7 }, [])).message,
    /pass the input the plan was made from/,
  );
});

// ---------------------------------------------------------------- estimate

const B = 25_000_000;
const SIZE = 128 * MiB;

function evenInput(n: number, chunkSize: number, over: Partial<PlanInput> = {}): PlanInput {
  const link = { uplinkBps: B, downlinkBps: B };
  return {
    source: { name: 'src', idc: 'a', ...link },
    hosts: fleet([n], 1, link),
    chunkCount: Math.ceil(SIZE / chunkSize),
    ...over,
  };
}

test('estimate: one hop moves the blob at link speed; a chain pays one chunk per hop to fill', () => {
  const one = evenInput(1, MiB, { stripes: 1 });
  const t = (MiB * 8) / B;
  const p1 = plan(one);
  assert.ok(Math.abs(estimateSeconds(p1, one, { size: SIZE, chunkSize: MiB }) - 128 * t) < 1e-9);
  const withHop = estimateSeconds(p1, one, { size: SIZE, chunkSize: MiB, hopSeconds: 0.5 });
  assert.ok(Math.abs(withHop - (128 * t + 0.5)) < 1e-9);
  // The plain chain of the issue: 32 hops of a 4 MiB chunk (1.34 s) before the pipe is full.
  const chain = evenInput(32, 4 * MiB, { stripes: 1 });
  const pc = plan(chain);
  assert.equal(pc.depth, 32);
  const t4 = (4 * MiB * 8) / B;
  assert.ok(Math.abs(t4 - 1.342) < 1e-3);
  assert.ok(Math.abs(estimateSeconds(pc, chain, { size: SIZE, chunkSize: 4 * MiB }) - (32 + 31) * t4) < 1e-9);
});

test('estimate: the slowest hop on the way paces every host below it', () => {
  // src -(B/2)-> a000 -(B)-> a001: a001 gets chunks no faster than the slow first hop sends them.
  const inp = evenInput(2, MiB, { stripes: 1 });
  inp.source.uplinkBps = B / 2;
  const p = plan(inp);
  assert.deepEqual(p.parents, { a000: ['src'], a001: ['a000'] });
  const t = (MiB * 8) / B;
  const expected = 2 * t + t + (128 - 1) * 2 * t;
  assert.ok(Math.abs(estimateSeconds(p, inp, { size: SIZE, chunkSize: MiB }) - expected) < 1e-9);
});

test('estimate: two stripes halve each edge, so a host behind d hops finishes at size/B + (d-1)*2*chunk/B', () => {
  const inp = evenInput(6, MiB, { stripes: 2 });
  const p = plan(inp);
  const t = (2 * MiB * 8) / B;
  const expected = p.depth * t + (64 - 1) * t;
  assert.ok(Math.abs(estimateSeconds(p, inp, { size: SIZE, chunkSize: MiB }) - expected) < 1e-9);
});

/** The table in planner.ts's module comment, recomputed. */
const TABLE = [
  // hosts, chunk, S, depth, seconds, ratio, chain ratio
  [8, 256 * KiB, 2, 4, 43.45, 1.012, 1.014],
  [8, MiB, 2, 4, 44.96, 1.047, 1.055],
  [8, 4 * MiB, 2, 4, 51.0, 1.187, 1.219],
  [16, 256 * KiB, 2, 5, 43.62, 1.016, 1.029],
  [16, MiB, 2, 5, 45.63, 1.063, 1.117],
  [16, 4 * MiB, 2, 5, 53.69, 1.25, 1.469],
  [32, 256 * KiB, 2, 6, 43.79, 1.02, 1.061],
  [32, MiB, 2, 6, 46.31, 1.078, 1.242],
  [32, 4 * MiB, 2, 6, 56.37, 1.313, 1.969],
] as const;

test('estimate: the figures in the module comment (N = 8, 16, 32 at 25 Mbit/s, 128 MiB)', () => {
  const bound = (SIZE * 8) / B;
  for (const [n, chunk, stripes, depth, seconds, ratio, chainRatio] of TABLE) {
    const inp = evenInput(n, chunk);
    const best = choosePlan(inp, { size: SIZE, chunkSize: chunk });
    const chain = estimateSeconds(plan({ ...inp, stripes: 1 }), inp, { size: SIZE, chunkSize: chunk });
    const got = [
      best.plan.stripes,
      best.plan.depth,
      best.seconds.toFixed(2),
      (best.seconds / bound).toFixed(3),
    ];
    assert.deepEqual(
      got,
      [stripes, depth, seconds.toFixed(2), ratio.toFixed(3)],
      `${n} hosts, ${chunk / KiB} KiB`,
    );
    assert.equal((chain / bound).toFixed(3), chainRatio.toFixed(3));
  }
});

test('performance target: 32 hosts within 1.10 x size/B, growing at most 0.05 from 8 hosts', () => {
  const bound = (SIZE * 8) / B;
  for (const chunk of [256 * KiB, MiB]) {
    const ratio = (n: number) =>
      choosePlan(evenInput(n, chunk), { size: SIZE, chunkSize: chunk }).seconds / bound;
    assert.ok(ratio(32) <= 1.1, `${chunk / KiB} KiB: ${ratio(32)}`);
    assert.ok(ratio(32) - ratio(8) <= 0.05, `${chunk / KiB} KiB grows ${ratio(32) - ratio(8)}`);
  }
  // And the source uploads one copy.
  assert.equal(choosePlan(evenInput(32, MiB), { size: SIZE, chunkSize: MiB }).plan.uploads.src, 1);
});

test('estimate: seeds, partial holders and a slow downlink move the finish time the right way', () => {
  const inp = evenInput(16, MiB, { stripes: 2 });
  const opts = { size: SIZE, chunkSize: MiB };
  const base = estimateSeconds(plan(inp), inp, opts);
  // Holding all of stripe 0 (the even chunks) is never slower; the model counts a partial
  // holder as needing its whole stripe, and the plan does not re-weigh the stripes.
  const evens = Array.from({ length: 64 }, (_, i) => i * 2);
  const partial = { ...inp, hosts: inp.hosts.map((h) => ({ ...h, has: evens })) };
  assert.ok(estimateSeconds(plan(partial), partial, opts) <= base);
  const seeded = { ...inp, hosts: inp.hosts.map((h, i) => (i < 8 ? { ...h, has: 'all' as const } : h)) };
  assert.ok(estimateSeconds(plan(seeded), seeded, opts) < base);
  const slow = { ...inp, hosts: inp.hosts.map((h, i) => (i === 3 ? { ...h, downlinkBps: B / 4 } : h)) };
  assert.ok(
    estimateSeconds(plan(slow), slow, opts) > (SIZE * 8) / (B / 4),
    'a quarter downlink takes four times as long',
  );
  assert.equal(estimateSeconds(plan({ ...inp, hosts: [] }), { ...inp, hosts: [] }, opts), 0);
});

test('choosePlan keeps the stripe count with the lowest estimate, the smaller on a tie', () => {
  for (const [n, chunk] of [
    [1, MiB],
    [5, 4 * MiB],
    [40, 256 * KiB],
  ] as const) {
    const inp = evenInput(n, chunk);
    const opts = { size: SIZE, chunkSize: chunk };
    const best = choosePlan(inp, opts);
    const all = [1, 2, 3, 4, 5, 6, 7, 8].map((s) => estimateSeconds(plan({ ...inp, stripes: s }), inp, opts));
    const min = Math.min(...all);
    assert.equal(best.seconds, min);
    assert.equal(best.plan.stripes, all.findIndex((t) => t <= min * (1 + 1e-9)) + 1);
  }
  assert.equal(choosePlan(evenInput(10, MiB), { size: SIZE, chunkSize: MiB, maxStripes: 1 }).plan.stripes, 1);
  const tiny = { ...evenInput(4, MiB), chunkCount: 2 };
  assert.ok(choosePlan(tiny, { size: 2 * MiB, chunkSize: MiB }).plan.stripes <= 2);
});

test('estimate refuses a size and chunk size that do not give the plan its chunks', () => {
  const inp = evenInput(4, MiB);
  const p = plan(inp);
  assert.match(
    codeOf(() => estimateSeconds(p, inp, { size: SIZE, chunkSize: 4 * MiB })).message,
    /gives 32 chunks, but the plan has 128; plan with chunkCount 32/,
  );
  assert.match(codeOf(() => estimateSeconds(p, inp, { size: 0, chunkSize: MiB })).message, /size is 0/);
  assert.match(
    codeOf(() => estimateSeconds(p, inp, { size: SIZE, chunkSize: MiB, hopSeconds: -1 })).message,
    /hopSeconds is -1/,
  );
});

// ---------------------------------------------------------------- rejoin

test('a relay that restarts rejoins below a leaf of its stripe: a chain tail, never itself, never a host that serves', () => {
  const inp = input([16], { stripes: 1 });
  const p = plan(inp);
  const serving = new Set(Object.values(p.parents).map((ps) => ps[0]));
  const leaves = Object.keys(p.parents).filter((h) => !serving.has(h));
  assert.equal(leaves.length, 1, 'a one-stripe plan of one IDC is a chain with one tail');
  const tail = leaves[0] as string;
  const r = rejoinParents(p, inp);
  for (const h of Object.keys(p.parents)) {
    if (h === tail) assert.equal(r[h]?.[0], undefined, 'the tail has no other leaf to rejoin');
    else assert.equal(r[h]?.[0], tail, `${h} rejoins below the tail`);
  }
});

test('rejoining prefers a leaf of the same IDC and rack, in every stripe, and names only hosts of the plan', () => {
  const inp = input([12, 12], { stripes: 4 }, 2);
  const p = plan(inp);
  const r = rejoinParents(p, inp);
  const idc = idcs(inp);
  const rack = new Map(inp.hosts.map((h) => [h.name, h.rack] as const));
  for (const [h, ps] of Object.entries(r)) {
    assert.equal(ps.length, p.stripes);
    ps.forEach((leaf, s) => {
      assert.ok(leaf !== undefined, `${h} has a leaf to rejoin in stripe ${s}`);
      assert.notEqual(leaf, h);
      assert.ok(p.parents[leaf], `${leaf} is a receiving host`);
      assert.ok(
        !Object.values(p.parents).some((qs) => qs[s] === leaf),
        `${leaf} serves nobody in stripe ${s}`,
      );
      const sameIdc = Object.keys(p.parents).some(
        (x) => x !== h && idc.get(x) === idc.get(h) && !Object.values(p.parents).some((qs) => qs[s] === x),
      );
      if (sameIdc) assert.equal(idc.get(leaf), idc.get(h), `${h} rejoins in its own IDC in stripe ${s}`);
      const sameRack = Object.keys(p.parents).some(
        (x) =>
          x !== h &&
          idc.get(x) === idc.get(h) &&
          rack.get(x) === rack.get(h) &&
          !Object.values(p.parents).some((qs) => qs[s] === x),
      );
      if (sameRack) assert.equal(rack.get(leaf), rack.get(h), `${h} rejoins in its own rack in stripe ${s}`);
    });
  }
});
