#!/usr/bin/env python3
"""Plots the surge benchmark against offered concurrency: goodput (orders recorded per second),
with both clients, and what a polite buyer sees (p99 of its 200 orders, RetryInfo honoured) while
h2load hammers; before fair admission (benchmarks/surge-before.json) and now (this run's
surge-loadgen.json and surge-h2load.json).

    bench-plot.py target/bench benchmarks/surge.png
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def levels(report):
    return report["levels"] if report else []


def load(path):
    if not os.path.exists(path):
        return None
    with open(path) as source:
        return json.load(source)


def main():
    out_dir, png = sys.argv[1], sys.argv[2]
    before = load("benchmarks/surge-before.json") or {}
    now = {"loadgen": load(os.path.join(out_dir, "surge-loadgen.json")),
           "h2load": load(os.path.join(out_dir, "surge-h2load.json"))}
    figure, (goodput, latency) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {("before", "loadgen"): ("tab:red", "--"), ("now", "loadgen"): ("tab:blue", "-"),
              ("before", "h2load"): ("tab:orange", "--"), ("now", "h2load"): ("tab:green", "-")}
    for when, reports in (("before", before), ("now", now)):
        for client in ("loadgen", "h2load"):
            runs = levels(reports.get(client))
            if not runs:
                continue
            color, line = styles[(when, client)]
            label = f"{client}, {'before fair admission' if when == 'before' else 'now'}"
            xs = [run["concurrency"] for run in runs]
            goodput.plot(xs, [run["orders_per_s"] for run in runs], line, color=color, marker="o", label=label)
            polite = [(run["concurrency"], run["polite"]) for run in runs if "polite" in run]
            if polite:
                latency.plot([x for x, _ in polite], [report["latency_ms"]["p99"] for _, report in polite], line,
                             color=color, marker="s", label=f"polite buyer during {label}: p99 of 200 orders")
                for x, report in polite:
                    latency.annotate(f"{report['ok']}/200 OK", (x, report["latency_ms"]["p99"]), fontsize=6,
                                     textcoords="offset points", xytext=(3, 3))
    for axis in (goodput, latency):
        axis.set_xscale("log")
        axis.set_xticks([256, 1000, 4000, 10000])
        axis.set_xticklabels(["256", "1,000", "4,000", "10,000"])
        axis.set_xlabel("concurrent CreateOrder calls (2 s deadline each)")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    goodput.set_ylabel("orders recorded per second")
    goodput.set_ylim(bottom=0)
    goodput.set_title("Hot deal under a surge: goodput")
    latency.set_ylabel("polite buyer's p99, ms (log), retries included")
    latency.set_yscale("log")
    latency.axhline(250, color="grey", linewidth=0.8, linestyle=":")
    latency.set_title("A buyer who asks once, while h2load hammers (target: p99 <= 250 ms)")
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    print(f"wrote {png}", file=sys.stderr)


if __name__ == "__main__":
    main()
