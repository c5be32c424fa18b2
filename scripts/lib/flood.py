#!/usr/bin/env python3
"""The flood benchmark: one hot deal, buyers who ask once against clients that hammer, on services
started afresh for each phase (so each phase's peak RSS is its own). Every call has a 2 s deadline.

Phases:
- alone:        h2load, 16 connections x 16 streams, one subject: the rate the sale reaches.
- bot:          h2load, 100 x 100 streams, one subject, no backoff (it ignores RetryInfo), while a
                polite buyer (loadgen `polite`: its own subject, 20 at a time, 200 orders, each
                retried after its RetryInfo delay) orders the same deal; compared with the mean of
                `alone` before it and again after it.
- crowd-256:    loadgen `surge`, 256 buyers (each its own subject): the rate loadgen's sale reaches.
- crowd-naive:  loadgen `surge`, 10,000 buyers resending at once when refused.
- crowd-polite: the same buyers waiting the RetryInfo delay.
- sell-out:     the bot and the naive crowd on a deal of 20,000 units.

Each phase reports orders recorded per second of its measured window (from the database), what the
services answered (their metrics: no INTERNAL or UNKNOWN), holds left without an order one second
after, the invariant checker, and peak RSS.

    flood.py --bin target/release --database-url URL --jwt-secret S --out flood.json
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from surge import (METRICS_PORTS, PORTS, Services, create_hot_deal, create_order_body,  # noqa: E402
                   holds_and_invariants, parse_h2load, peak_rss_kib, psql, samples, scrape, token)

ORDER_SERVICE = f"http://127.0.0.1:{PORTS['order-service']}"
DEAL_SERVICE = f"http://127.0.0.1:{PORTS['deal-service']}"


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counters(port):
    """The calls a service answered, by method and code, and admission's refusals by reason."""
    text = scrape(port)
    codes = {}
    for labels, value in samples(text, "grpc_server_handled_total"):
        key = f"{labels.get('grpc_method')}:{labels.get('grpc_code')}"
        codes[key] = codes.get(key, 0) + value
    refusals = {}
    for labels, value in samples(text, "topkart_admission_refusals_total"):
        refusals[labels["reason"]] = refusals.get(labels["reason"], 0) + value
    return {"codes": codes, "refusals": refusals}


def difference(after, before):
    return {key: after.get(key, 0) - before.get(key, 0) for key in after if after.get(key, 0) != before.get(key, 0)}


def h2load(args, connections, streams, deal_id, subject, seconds, warmup):
    body = os.path.join(args.log_dir, f"flood-create-order-{deal_id}.bin")
    with open(body, "wb") as out:
        out.write(create_order_body(f"deals/{deal_id}"))
    bearer = token(args, "customer", subject)
    command = ["h2load", "-c", str(connections), "-m", str(streams), "-t", "1", "-D", str(seconds),
               "--warm-up-time", str(warmup), "-d", body, "-H", "content-type: application/grpc",
               "-H", "te: trailers", "-H", "grpc-timeout: 2S", "-H", f"authorization: Bearer {bearer}",
               f"{ORDER_SERVICE}/topkart.order.v1.OrderService/CreateOrder"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def loadgen(args, scenario, extra, json_path):
    command = [args.loadgen or os.path.join(args.bin, "loadgen"), scenario, "--deal-service", DEAL_SERVICE,
               "--order-service", ORDER_SERVICE, "--deadline-ms", "2000", "--json", json_path] + extra
    env = dict(os.environ, JWT_SECRET=args.jwt_secret)
    env.pop("DATABASE_URL", None)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def orders_between(args, deal_id, start, end):
    return int(psql(args.database_url, f"""
        select count(*) from orders where deal_id = '{deal_id}'
           and create_time >= '{start}'::timestamptz and create_time < '{end}'::timestamptz"""))


def aftermath(args, services, started):
    """What a phase left: holds without an order a second later, the invariants, RSS, answers."""
    time.sleep(1.0)
    stranded, invariants = holds_and_invariants(args, started)
    answered = {name: counters(METRICS_PORTS[name]) for name in ("order-service", "deal-service")}
    broken = sum(count for name in answered for key, count in answered[name]["codes"].items()
                 if key.endswith(":Internal") or key.endswith(":Unknown"))
    return {
        "holds_without_order_1s_after": stranded,
        "invariants_hold": invariants.returncode == 0,
        "invariant_report": (invariants.stdout + invariants.stderr).strip()[-1000:],
        "internal_or_unknown": int(broken),
        "answered": answered,
        "peak_rss_kib": {name: peak_rss_kib(proc.pid) for name, proc in services.procs.items()},
    }


def window_rate(args, deal_id, start, seconds):
    end = psql(args.database_url, f"select '{start}'::timestamptz + interval '{seconds} seconds'")
    return orders_between(args, deal_id, start, end) / seconds


def postgres_cpu():
    """utime + stime of every Postgres process of this machine (the bench's server is the only one
    busy)."""
    total = 0.0
    for pid in subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True).stdout.split():
        try:
            total += cpu_seconds(int(pid))
        except OSError:
            pass
    return total


def machine_cpu():
    """Busy and total jiffies of the machine (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def phase(args, name, run):
    print(f"== flood: {name}", file=sys.stderr)
    services = Services(args, args.log_dir)
    services.start()
    try:
        started = psql(args.database_url, "select now()")
        cpu_before = {name: cpu_seconds(proc.pid) for name, proc in services.procs.items()}
        postgres_before, machine_before, wall_before = postgres_cpu(), machine_cpu(), time.time()
        result = run(services)
        wall = time.time() - wall_before
        busy = machine_cpu()
        # Cores used by each, over the whole phase (warm-up included); the clients are the rest.
        result["cores"] = {name: round((cpu_seconds(proc.pid) - cpu_before[name]) / wall, 2)
                           for name, proc in services.procs.items()}
        result["cores"]["postgres"] = round((postgres_cpu() - postgres_before) / wall, 2)
        result["cores"]["machine"] = round(2 * (busy[0] - machine_before[0]) / max(1, busy[1] - machine_before[1]), 2)
        result.update(aftermath(args, services, started))
        result["phase"] = name
        print(f"   {json.dumps({k: v for k, v in result.items() if k not in ('answered', 'invariant_report')})}",
              file=sys.stderr)
        return result
    finally:
        services.stop()


def alone(args, name="alone"):
    def run(services):
        deal_id = create_hot_deal(args, args.units)
        order_pid = services.procs["order-service"].pid
        bot = h2load(args, 16, 16, deal_id, "flood-bot", args.duration, args.warmup)
        time.sleep(args.warmup)
        start, cpu = psql(args.database_url, "select now()"), cpu_seconds(order_pid)
        time.sleep(args.duration)
        cpu = cpu_seconds(order_pid) - cpu
        output, _ = bot.communicate()
        rate = window_rate(args, deal_id, start, args.duration)
        return {"orders_per_s": rate, "order_service_cpu_s": cpu,
                "order_service_cpu_ms_per_order": 1000 * cpu / max(1, rate * args.duration),
                "h2load": parse_h2load(output)}
    return phase(args, name, run)


def warm_up(args):
    print("== flood: warm-up sale (not measured)", file=sys.stderr)
    services = Services(args, args.log_dir)
    services.start()
    try:
        deal_id = create_hot_deal(args, args.units)
        h2load(args, 16, 16, deal_id, "flood-warm-up", 5, 0).communicate()
    finally:
        services.stop()


def bot(args, per_order_cpu_ms):
    def run(services):
        deal_id = create_hot_deal(args, args.units)
        order_pid = services.procs["order-service"].pid
        flood = h2load(args, 100, 100, deal_id, "flood-bot", args.duration, args.warmup)
        time.sleep(args.warmup)
        before = counters(METRICS_PORTS["order-service"])
        start, cpu = psql(args.database_url, "select now()"), cpu_seconds(order_pid)
        polite_json = os.path.join(args.log_dir, "flood-polite.json")
        polite = loadgen(args, "polite", ["--deal", f"deals/{deal_id}", "--concurrency", "20", "--orders", "200",
                                          "--connections", "1"], polite_json)
        polite_output, _ = polite.communicate()
        elapsed = float(psql(args.database_url, f"select extract(epoch from now() - '{start}'::timestamptz)"))
        time.sleep(max(0.0, args.duration - elapsed))
        cpu = cpu_seconds(order_pid) - cpu
        after = counters(METRICS_PORTS["order-service"])
        output, _ = flood.communicate()
        seconds = max(args.duration, elapsed)
        rate = window_rate(args, deal_id, start, seconds)
        refusals = difference(after["refusals"], before["refusals"])
        refused = sum(refusals.values())
        with open(polite_json) as produced:
            polite_report = json.load(produced)
        extra_cpu = cpu - (per_order_cpu_ms / 1000) * rate * seconds
        return {"orders_per_s": rate, "window_s": seconds, "polite": polite_report, "polite_text": polite_output,
                "refusals": refusals, "order_service_cpu_s": cpu,
                "order_service_cpu_us_per_refusal": 1e6 * extra_cpu / refused if refused else None,
                "h2load": parse_h2load(output)}
    return phase(args, "bot", run)


def crowd(args, honour, buyers=10000):
    name = "crowd-256" if buyers == 256 else f"crowd-{'polite' if honour else 'naive'}"

    def run(services):
        report = os.path.join(args.log_dir, f"flood-{name}.json")
        extra = ["--concurrency", str(buyers), "--connections", str(max(16, buyers // 100)), "--warmup", str(args.warmup),
                 "--duration", str(args.duration)]
        if not honour:
            extra.append("--ignore-retry-info")
        output, _ = loadgen(args, "surge", extra, report).communicate()
        with open(report) as produced:
            summary = json.load(produced)["summary"]
        # Every OK is an order recorded (the invariant checker, after, agrees with the database).
        rate = summary["ok_per_s"]
        return {"orders_per_s": rate, "loadgen": {key: summary[key] for key in
                ("ok_per_s", "latency_ms", "shed", "shed_latency_ms", "statuses", "latency_by_status_ms")},
                "loadgen_text": output[-3000:]}
    return phase(args, name, run)


def sell_out(args):
    def run(services):
        units = args.sell_out_units
        deal_id = create_hot_deal(args, units)
        report = os.path.join(args.log_dir, "flood-sell-out-crowd.json")
        flood = h2load(args, 100, 100, deal_id, "flood-bot", args.duration, 0)
        crowd = loadgen(args, "surge", ["--deal", f"deals/{deal_id}", "--concurrency", "10000", "--connections", "100",
                                        "--warmup", "0", "--duration", str(args.duration), "--ignore-retry-info"],
                        report)
        crowd_output, _ = crowd.communicate()
        flood_output, _ = flood.communicate()
        sold = int(psql(args.database_url, f"select count(*) from orders where deal_id = '{deal_id}'"))
        available = int(psql(args.database_url, f"select available_units from deals where id = '{deal_id}'"))
        sold_out_at = psql(args.database_url, f"select max(create_time) from orders where deal_id = '{deal_id}'")
        with open(report) as produced:
            summary = json.load(produced)["summary"]
        return {"units": units, "orders": sold, "available_after": available, "exactly_sold": sold == units and available == 0,
                "last_order_at": sold_out_at, "crowd": {key: summary[key] for key in ("statuses", "latency_by_status_ms")},
                "h2load": parse_h2load(flood_output), "crowd_text": crowd_output[-2000:]}
    return phase(args, "sell-out", run)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--jwt-secret", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--units", type=int, default=1000000)
    parser.add_argument("--sell-out-units", type=int, default=20000)
    parser.add_argument("--phases", default="alone,bot,crowd-naive,crowd-polite,sell-out")
    parser.add_argument("--loadgen", help="the loadgen binary (default: --bin's); a newer one can drive an older build")
    parser.add_argument("--log-dir", default="target/bench")
    args = parser.parse_args()
    args.metrics = True
    os.makedirs(args.log_dir, exist_ok=True)
    phases = args.phases.split(",")
    results = {}
    # The first sale on a fresh database runs at about two thirds of the next (no statistics, cold
    # caches): a sale first, not measured.
    warm_up(args)
    per_order = None
    if "alone" in phases or "bot" in phases:
        results["alone"] = alone(args)
        per_order = results["alone"]["order_service_cpu_ms_per_order"]
    if "bot" in phases:
        results["bot"] = bot(args, per_order)
        # The sale alone again, after the flood: the machine drifts, and the first phase runs on a
        # cold database; the flood is compared with the mean of the two.
        results["alone-after"] = alone(args, "alone-after")
        baseline = (results["alone"]["orders_per_s"] + results["alone-after"]["orders_per_s"]) / 2
        results["bot"]["ratio_to_alone"] = results["bot"]["orders_per_s"] / max(1e-9, baseline)
    if any(name in phases for name in ("crowd-256", "crowd-naive", "crowd-polite")):
        results["crowd-256"] = crowd(args, True, buyers=256)
    for honour, name in ((False, "crowd-naive"), (True, "crowd-polite")):
        if name in phases:
            results[name] = crowd(args, honour)
            results[name]["ratio_to_256"] = results[name]["orders_per_s"] / max(1e-9, results["crowd-256"]["orders_per_s"])
    if "sell-out" in phases:
        results["sell-out"] = sell_out(args)
    with open(args.out, "w") as out:
        json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
