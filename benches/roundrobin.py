#!/usr/bin/env python3
"""roundrobin.py - time whole commands in shuffled rounds and report paired ratios.

usage: roundrobin.py [--runs N] [--warmup N] [--ratio A/B]... [--json FILE] SPEC

SPEC has one command per line, KEY<TAB>LABEL<TAB>COMMAND. COMMAND is split with shell
quoting rules (shlex) and run without a shell, stdin and stdout on /dev/null. Every "{n}"
in it is replaced by a number unique to that run (for container ids).

Each round runs every command once, in a freshly shuffled order, so a slow moment on a
shared machine hits all commands alike. `--ratio A/B` (keys) reports the median over
rounds of time(A)/time(B) measured in the same round, which stays meaningful when the
machine's speed drifts. Runs that exit non-zero are counted as failures and excluded.
"""
import argparse
import json
import random
import shlex
import statistics
import subprocess
import sys
import time


def quantile(values, q):
    """Nearest-rank quantile of a non-empty list."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("spec")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--ratio", action="append", default=[], metavar="A/B")
    ap.add_argument("--json", metavar="FILE", help="also write all samples as JSON")
    args = ap.parse_args()

    entries = []
    with open(args.spec) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            key, label, cmd = line.split("\t", 2)
            entries.append({"key": key, "label": label, "cmd": cmd,
                            "ms": [], "failed": 0, "error": ""})
    by_key = {e["key"]: e for e in entries}
    for r in args.ratio:
        for k in r.split("/"):
            if k not in by_key:
                sys.exit("roundrobin: --ratio %s names unknown key %r" % (r, k))

    serial = 0
    rounds = []  # per measured round: key -> ms
    for rnd in range(args.warmup + args.runs):
        measured = rnd >= args.warmup
        order = entries[:]
        random.shuffle(order)
        row = {}
        for e in order:
            serial += 1
            argv = shlex.split(e["cmd"].replace("{n}", str(serial)))
            t0 = time.perf_counter_ns()
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
            ms = (time.perf_counter_ns() - t0) / 1e6
            if not measured:
                if p.returncode != 0:
                    e["error"] = p.stderr.decode(errors="replace").strip()[-300:]
                continue
            if p.returncode == 0:
                e["ms"].append(ms)
                row[e["key"]] = ms
            else:
                e["failed"] += 1
                e["error"] = "exit %d: %s" % (p.returncode,
                                             p.stderr.decode(errors="replace").strip()[-300:])
        if measured:
            rounds.append(row)

    width = max(len(e["label"]) for e in entries)
    print("%-*s  %9s %9s %9s %9s %9s  %s" % (width, "command (ms)", "median", "p10", "p90",
                                           "min", "max", "runs"))
    for e in entries:
        v = e["ms"]
        if not v:
            print("%-*s  FAILED every run: %s" % (width, e["label"], e["error"]))
            continue
        note = ("  (%d failed, last: %s)" % (e["failed"], e["error"])) if e["failed"] else ""
        print("%-*s  %9.2f %9.2f %9.2f %9.2f %9.2f  %d%s" % (
            width, e["label"], statistics.median(v), quantile(v, 0.1), quantile(v, 0.9),
            min(v), max(v), len(v), note))

    ratios = {}
    for r in args.ratio:
        a, b = r.split("/")
        paired = [row[a] / row[b] for row in rounds if a in row and b in row]
        if not paired:
            print("ratio %-22s n/a (no round where both succeeded)" % r)
            continue
        ratios[r] = statistics.median(paired)
        print("ratio %-22s %6.2fx  (paired median of %d rounds; p10 %.2f, p90 %.2f)" % (
            r, ratios[r], len(paired), quantile(paired, 0.1), quantile(paired, 0.9)))

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": args.runs, "warmup": args.warmup,
                       "commands": [{k: e[k] for k in ("key", "label", "cmd", "ms", "failed")}
                                    for e in entries],
                       "ratios": ratios}, f, indent=1)


if __name__ == "__main__":
    main()
