#!/usr/bin/env python3
"""Plots the surge benchmark: goodput (orders recorded per second) and latency against offered
concurrency, before admission control (benchmarks/surge-before.json) and now (this run's
surge-loadgen.json and surge-h2load.json), for both clients.

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
            label = f"{client}, {'before (cebd50c)' if when == 'before' else 'now'}"
            xs = [run["concurrency"] for run in runs]
            goodput.plot(xs, [run["orders_per_s"] for run in runs], line, color=color, marker="o", label=label)
            if client == "loadgen":
                ys = [run["loadgen"]["summary"]["latency_ms"]["p99"] for run in runs]
                latency.plot(xs, ys, line, color=color, marker="o", label=f"{label}: p99 of admitted calls")
            else:
                ys = [run["h2load"].get("mean_ms") for run in runs]
                latency.plot(xs, ys, line, color=color, marker="s", label=f"{label}: mean of all calls")
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
    latency.set_ylabel("latency, ms (log)")
    latency.set_yscale("log")
    latency.axhline(100, color="grey", linewidth=0.8, linestyle=":")
    latency.set_title("Latency (target: p99 of admitted calls <= 100 ms)")
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    print(f"wrote {png}", file=sys.stderr)


if __name__ == "__main__":
    main()
