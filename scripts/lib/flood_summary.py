#!/usr/bin/env python3
"""Prints flood.json (scripts/lib/flood.py) as the lines BENCHMARKS.md quotes."""
import json
import sys

results = json.load(open(sys.argv[1]))
alone = results.get("alone", {})
for name, phase in results.items():
    line = [f"{name:13}", f"{phase.get('orders_per_s', 0):7.0f} orders/s"]
    if "ratio_to_alone" in phase:
        line.append(f"{phase['ratio_to_alone']:.2f}x alone")
    if "ratio_to_256" in phase:
        line.append(f"{phase['ratio_to_256']:.2f}x crowd-256")
    if "polite" in phase:
        polite = phase["polite"]
        line.append(f"polite {polite['ok']}/{polite['orders']} OK, p99 {polite['latency_ms']['p99']:.0f} ms")
    if phase.get("order_service_cpu_us_per_refusal") is not None:
        line.append(f"{phase['order_service_cpu_us_per_refusal']:.0f} us/refusal ({sum(phase['refusals'].values()):.0f} refusals)")
    if "loadgen" in phase:
        ok = phase["loadgen"]["latency_by_status_ms"].get("OK", {})
        line.append(f"OK p99 {ok.get('p99', 0):.0f} ms; {phase['loadgen']['statuses']}")
    if "units" in phase:
        sold_out = phase["crowd"]["latency_by_status_ms"].get("FAILED_PRECONDITION", {})
        line.append(f"sold {phase['orders']}/{phase['units']} exact={phase['exactly_sold']}, SOLD_OUT p99 {sold_out.get('p99', 0):.0f} ms; {phase['crowd']['statuses']}")
    line.append(f"rss {max(phase['peak_rss_kib'].values()) / 1024:.0f} MiB")
    if "cores" in phase:
        line.append("cores " + ", ".join(f"{name} {cores}" for name, cores in phase["cores"].items()))
    line.append(f"internal/unknown {phase['internal_or_unknown']}, holds {phase['holds_without_order_1s_after']}, invariants {phase['invariants_hold']}")
    print(" | ".join(line))
