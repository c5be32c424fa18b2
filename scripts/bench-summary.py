#!/usr/bin/env python3
"""Summarises one run of scripts/bench (the files in its output directory) as a Markdown table,
every figure beside its target and as a ratio to the reference measured in the same run."""

import json
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])


def load(name):
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def pgbench_tps(clients):
    text = (out / f"pgbench-{clients}.txt").read_text()
    return float(re.search(r"^tps = ([0-9.]+)", text, re.M).group(1))


rows = []


def row(what, measured, target, ok):
    rows.append((what, measured, target, "met" if ok else "NOT MET"))


def checks_pass(report):
    return all(check["passed"] for check in report["checks"])


pg64 = pgbench_tps(64)
pg8 = pgbench_tps(8)
hot = load("hot-deal")
if hot:
    s = hot["summary"]
    ratio = s["ok_per_s"] / pg64
    row("hot deal, 256 buyers: orders/s vs pgbench hot row at 64 clients",
        f"{s['ok_per_s']:.0f}/s vs {pg64:.0f}/s = **{ratio:.2f}×** (pgbench at 8 clients: {pg8:.0f}/s)",
        "≥ 2×", ratio >= 2)
    row("hot deal: p99 latency", f"{s['latency_ms']['p99']:.1f} ms (p50 {s['latency_ms']['p50']:.1f})",
        "< 100 ms", s["latency_ms"]["p99"] < 100)
    row("hot deal: errors, oversold, invariants", "; ".join(c["detail"] for c in hot["checks"]),
        "none", checks_pass(hot))
sell = load("hot-deal-sell-out")
if sell:
    s = sell["summary"]
    row("hot deal sell-out, 256 buyers", f"{s['throughput_per_s']:.0f} calls/s, p99 {s['latency_ms']['p99']:.1f} ms; "
        + "; ".join(c["detail"] for c in sell["checks"]), "exactly the units sold, only sold-out refusals",
        checks_pass(sell))
health, listing = load("health-check"), load("list-deals")
if health and listing:
    ratio = listing["summary"]["ok_per_s"] / health["summary"]["ok_per_s"]
    row("ListDeals (first page of 20) vs Health/Check, 64 clients",
        f"{listing['summary']['ok_per_s']:.0f}/s vs {health['summary']['ok_per_s']:.0f}/s = **{ratio:.2f}×**"
        f" (p99 {listing['summary']['latency_ms']['p99']:.1f} ms)", "≥ 0.5×", ratio >= 0.5 and checks_pass(listing))
for name in ("browse", "mixed"):
    report = load(name)
    if report:
        s = report["summary"]
        row(f"{name}, {report['concurrency']} clients",
            f"{s['ok_per_s']:.0f} OK/s, p99 {s['latency_ms']['p99']:.1f} ms", "no errors, invariants hold",
            checks_pass(report))
rss = load("peak-rss-kib")
if rss:
    for service, kib in rss.items():
        row(f"peak RSS of {service} over all loads", f"{kib / 1024:.1f} MiB", "≤ 64 MiB", kib <= 64 * 1024)
startup = load("startup")
if startup:
    for service, ms in startup.items():
        row(f"{service}: start to SERVING (migrated database)", f"{ms} ms", "≤ 1000 ms", ms <= 1000)
worker = load("worker")
if worker:
    for key, what in (("sweep", "one sweep"), ("daily_reset", "daily reset")):
        w = worker[key]
        runs = ", ".join(f"{ms:.0f}" for ms in w["runs_ms"])
        row(f"worker: {what} ({w['table']})",
            f"median {w['median_ms']:.0f} ms = **{w['median_to_target']:.2f}×** target (runs {runs} ms)",
            f"< {w['target_ms']:.0f} ms", w["pass"])
    indexes = sorted({index for plan in worker["plans"] for index in plan["indexes"]})
    row("worker: EXPLAIN of every statement (benchmarks/plans/)", "indexes: " + ", ".join(indexes),
        "index use, no seq scan on deals", worker["plans_use_indexes"])

print("| what | measured (this run) | target | |")
print("|---|---|---|---|")
for what, measured, target, verdict in rows:
    print(f"| {what} | {measured} | {target} | {verdict} |")
