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
        f" (p99 {listing['summary']['latency_ms']['p99']:.1f} ms)", "≥ 0.8×", ratio >= 0.8 and checks_pass(listing))
for name in ("browse", "mixed"):
    report = load(name)
    if report:
        s = report["summary"]
        row(f"{name}, {report['concurrency']} clients",
            f"{s['ok_per_s']:.0f} OK/s, p99 {s['latency_ms']['p99']:.1f} ms", "no errors, invariants hold",
            checks_pass(report))
h2health = out / "h2load-health-check.txt"
if h2health.exists() and health:
    match = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", h2health.read_text())
    if match:
        rate = float(match.group(1))
        row("Health/Check: h2load vs loadgen (same services, same run)",
            f"{rate:.0f}/s vs {health['summary']['ok_per_s']:.0f}/s = {rate / health['summary']['ok_per_s']:.2f}×",
            "(reference: the client's own cost)", True)

h2list = out / "h2load-list-deals.txt"
if h2health.exists() and h2list.exists():
    health_rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", h2health.read_text())
    text = h2list.read_text()
    list_rate = re.search(r"finished in ([\d.]+)(\w+), ([\d.]+) req/s", text)
    not_ok = re.search(r"calls other than OK counted by deal-service: (\d+)", text)
    if health_rate and list_rate and not_ok:
        ratio = float(list_rate.group(3)) / float(health_rate.group(1))
        row("ListDeals (first page of 20) vs Health/Check, h2load, 64 streams",
            f"{float(list_rate.group(3)):.0f}/s vs {float(health_rate.group(1)):.0f}/s = **{ratio:.2f}×**"
            f" ({not_ok.group(1)} calls ended other than OK)", "≥ 0.8×",
            ratio >= 0.8 and not_ok.group(1) == "0")


def surge_rows(client):
    report = load(f"surge-{client}")
    if not report:
        return
    runs = {run["concurrency"]: run for run in report["levels"]}
    base, top = runs.get(256), runs.get(10000)
    for concurrency, run in sorted(runs.items()):
        rss = ", ".join(f"{name} {kib / 1024:.1f}" for name, kib in run["peak_rss_kib"].items() if kib)
        server = run.get("server", {})
        codes = " ".join(f"{code} {count}" for code, count in server.get("codes", {}).items())
        if client == "loadgen":
            summary = run["loadgen"]["summary"]
            latency = (f"p99 admitted {summary['latency_ms']['p99']:.0f} ms, shed {summary['shed_latency_ms']['p99']:.1f} ms"
                       f" (client); server p99 admitted ≤ {server.get('latency', {}).get('admitted', {}).get('p99_ms_at_most')} ms,"
                       f" shed ≤ {server.get('latency', {}).get('shed', {}).get('p99_ms_at_most')} ms")
        else:
            latency = (f"mean {run['h2load'].get('mean_ms')} ms (client); server p99 admitted ≤ "
                       f"{server.get('latency', {}).get('admitted', {}).get('p99_ms_at_most')} ms, shed ≤ "
                       f"{server.get('latency', {}).get('shed', {}).get('p99_ms_at_most')} ms")
        row(f"surge ({client}), {concurrency} calls over {run['connections']} connections",
            f"{run['orders_per_s']:.0f} orders/s; {latency}; codes: {codes}; "
            f"{run['holds_without_order_1s_after']} holds without order 1 s after; peak RSS MiB: {rss}",
            "see the 10,000 rows", True)
    if not (base and top):
        return
    ratio = top["orders_per_s"] / base["orders_per_s"] if base["orders_per_s"] else 0
    row(f"surge ({client}): orders/s at 10,000 vs at 256", f"{top['orders_per_s']:.0f} vs {base['orders_per_s']:.0f}"
        f" = **{ratio:.2f}×**", "≥ 0.9×", ratio >= 0.9)
    server = top.get("server", {}).get("latency", {})
    admitted = server.get("admitted", {}).get("p99_ms_at_most")
    shed = server.get("shed", {}).get("p99_ms_at_most")
    if client == "loadgen":
        summary = top["loadgen"]["summary"]
        row(f"surge ({client}) at 10,000: p99 of admitted calls", f"{summary['latency_ms']['p99']:.0f} ms at the client"
            f" (server: ≤ {admitted} ms)", "≤ 100 ms", summary["latency_ms"]["p99"] <= 100)
        row(f"surge ({client}) at 10,000: p99 of shed calls", f"{summary['shed_latency_ms']['p99']:.1f} ms at the client"
            f" (server: ≤ {shed} ms)", "≤ 10 ms", summary["shed_latency_ms"]["p99"] <= 10)
    else:
        row(f"surge ({client}) at 10,000: p99 of admitted / shed calls, server side (h2load gives no percentiles)",
            f"≤ {admitted} ms / ≤ {shed} ms", "≤ 100 ms / ≤ 10 ms",
            admitted is not None and admitted <= 100 and shed is not None and shed <= 10)
    codes = top.get("server", {}).get("codes", {})
    broken = codes.get("Internal", 0) + codes.get("Unknown", 0)
    row(f"surge ({client}) at 10,000: INTERNAL and UNKNOWN", f"{broken}", "0", broken == 0)
    worst = max(kib for kib in top["peak_rss_kib"].values() if kib)
    row(f"surge ({client}) at 10,000: peak RSS of the largest service", f"{worst / 1024:.1f} MiB", "≤ 64 MiB",
        worst <= 64 * 1024)
    row(f"surge ({client}): oversold / holds left 1 s after, every level",
        "; ".join(f"{c}: invariants {'hold' if r['invariants_hold'] else 'BROKEN'}, {r['holds_without_order_1s_after']} holds"
                  for c, r in sorted(runs.items())),
        "0 / 0", all(r["invariants_hold"] and r["holds_without_order_1s_after"] == 0 for r in runs.values()))


surge_rows("loadgen")
surge_rows("h2load")

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
