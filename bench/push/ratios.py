#!/usr/bin/python3
"""ratios.py RESULTS.jsonl... -> markdown: the cmd scenario's median wall
seconds per tool and N, and canopy's (tool `ours`) speed-up against each
other tool (other tool's median / ours' median: > 1 means canopy is faster).

Two rules for which runs count, both printed:
- strict: the harness's (lib/summarize.py): ok and not `disturbed` (foreign
  CPU above max(0.5 s, a quarter core over the run));
- relaxed: ok and foreign CPU at most max(FOREIGN_MAX = 1.0 s, a quarter core
  over the run), the same for every tool (see bench/README.md for why).
[k] = number of runs the median is taken over."""
import json
import statistics
import sys
from collections import defaultdict

ORDER = ["ours", "pdsh", "pssh", "clush", "ansible", "ansible-cp", "ansible-default", "ours-ssh"]


FOREIGN_MAX = 1.0


def strict(r):
    return bool(r.get("ok")) and not r.get("disturbed") and r.get("seconds") is not None


def relaxed(r):
    return bool(r.get("ok")) and r.get("seconds") is not None and \
        (r.get("foreign_cpu_s") or 0) <= max(FOREIGN_MAX, 0.25 * r["seconds"])


def main(paths):
    rows = []
    for p in paths:
        for line in open(p):
            if line.startswith("{"):
                r = json.loads(line)
                if r.get("scenario") == "cmd":
                    rows.append(r)
    for name, rule in (("relaxed", relaxed), ("strict (the harness's rule)", strict)):
        print("## %s\n" % name)
        table(rows, rule)
        print()


def table(rows, rule):
    valid, seen = defaultdict(list), defaultdict(int)
    for r in rows:
        seen[(r["tool"], r["n"])] += 1
        if rule(r):
            valid[(r["tool"], r["n"])].append(r)
    ns = sorted({n for _, n in seen})
    tools = sorted({t for t, _ in seen}, key=lambda t: ORDER.index(t) if t in ORDER else 99)
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in valid.items()}

    print("Median wall seconds [valid runs]; min-max in parentheses:\n")
    print("| tool | " + " | ".join("N=%d" % n for n in ns) + " |")
    print("|---|" + "---:|" * len(ns))
    for t in tools:
        cells = []
        for n in ns:
            v = valid.get((t, n))
            if v:
                s = [r["seconds"] for r in v]
                cells.append("%.2f [%d] (%.2f-%.2f)" % (med[(t, n)], len(v), min(s), max(s)))
            else:
                cells.append("FAIL" if seen.get((t, n)) else "-")
        print("| %s | %s |" % (t, " | ".join(cells)))

    if "ours" in tools:
        print("\ncanopy's speed-up (other tool's median / canopy's median; > 1: canopy faster):\n")
        print("| vs | " + " | ".join("N=%d" % n for n in ns) + " |")
        print("|---|" + "---:|" * len(ns))
        for t in tools:
            if t == "ours":
                continue
            cells = []
            for n in ns:
                if (t, n) in med and ("ours", n) in med:
                    cells.append("%.2fx" % (med[(t, n)] / med[("ours", n)]))
                else:
                    cells.append("-")
            print("| %s | %s |" % (t, " | ".join(cells)))

    print("\nMedian CPU seconds, client / server (the harness's accounting; ours' daemons count as server):\n")
    print("| tool | " + " | ".join("N=%d" % n for n in ns) + " |")
    print("|---|" + "---:|" * len(ns))
    for t in tools:
        cells = []
        for n in ns:
            v = valid.get((t, n))
            cells.append("%.2f / %.2f" % (statistics.median(r.get("client_cpu_s", 0) for r in v),
                                          statistics.median(r.get("server_cpu_s", 0) for r in v)) if v else "-")
        print("| %s | %s |" % (t, " | ".join(cells)))
    total = sum(seen.values())
    good = sum(len(v) for v in valid.values())
    print("\nruns: %d, counted: %d" % (total, good))


if __name__ == "__main__":
    main(sys.argv[1:])
