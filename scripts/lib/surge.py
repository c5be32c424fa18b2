#!/usr/bin/env python3
"""The surge benchmark: one hot deal, CreateOrder at rising concurrency, every call with a 2 s
deadline, with either client:
- h2load (`--client h2load`), the independent one: sends as fast as answers come, and ignores
  RetryInfo, so a shed call is sent again at once;
- loadgen (`--client loadgen`, its `surge` scenario): waits the RetryInfo delay when shed, as
  gRPC clients honouring server pushback do, and times shed and admitted calls apart.
With `--polite` (h2load only), a polite buyer (loadgen `polite`: its own token, 20 at a time, 200
orders, RetryInfo honoured) orders the same deal during each level, and its OK count and p99 are
reported: what one buyer who asks once sees while the surge hammers.

For each level it starts the three services afresh (so each level's peak RSS is its own), creates
the hot deal, runs the client, waits one second and reads from the database what the run left:
orders recorded per second of the measured window, holds without an order, oversold units (the
invariant checker). Where the services serve /metrics, the calls' gRPC status codes and the
server-side latency quantiles of admitted and shed calls come from there (h2load sees only HTTP
statuses, all 200 for gRPC).

    surge.py --bin target/release --database-url URL --jwt-secret S --client h2load --out surge.json
"""

import argparse
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import urllib.request
import uuid

PORTS = {"deal-service": 50081, "order-service": 50082, "expiry-worker": 50083}
METRICS_PORTS = {"deal-service": 50091, "order-service": 50092, "expiry-worker": 50093}


def varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number, wire_type, payload):
    key = varint((number << 3) | wire_type)
    if wire_type == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def create_order_body(deal_name):
    """A gRPC-framed CreateOrderRequest for one unit of `deal_name`, without a request_id (so
    every call places a new order)."""
    order = field(2, 2, deal_name.encode()) + field(4, 0, varint(1))
    message = field(1, 2, order)
    return b"\x00" + struct.pack(">I", len(message)) + message


def psql(url, sql):
    result = subprocess.run(["psql", url, "-Atqc", sql], check=True, capture_output=True, text=True)
    return result.stdout.strip()


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def scrape(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')


def samples(text, name):
    """(labels, value) of every sample of `name` in a Prometheus text exposition."""
    for line in (text or "").splitlines():
        match = SAMPLE.match(line)
        if match and match.group(1) == name:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            yield labels, float(match.group(3))


def quantile_from_buckets(buckets, q):
    """Upper bound of the bucket holding quantile `q`, from cumulative (le, count) pairs."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    for bound, count in buckets:
        if count >= rank:
            return bound
    return buckets[-1][0]


def server_view(text, method="CreateOrder"):
    codes = {}
    for labels, value in samples(text, "grpc_server_handled_total"):
        if labels.get("grpc_method") == method:
            codes[labels["grpc_code"]] = codes.get(labels["grpc_code"], 0) + value
    by_class = {"admitted": {}, "shed": {}}
    for labels, value in samples(text, "grpc_server_handling_seconds_bucket"):
        if labels.get("grpc_method") != method:
            continue
        klass = "shed" if labels["grpc_code"] == "ResourceExhausted" else "admitted"
        bound = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        by_class[klass][bound] = by_class[klass].get(bound, 0) + value
    quantiles = {}
    for klass, buckets in by_class.items():
        pairs = list(buckets.items())
        quantiles[klass] = {
            "p50_ms_at_most": scaled(quantile_from_buckets(pairs, 0.50)),
            "p99_ms_at_most": scaled(quantile_from_buckets(pairs, 0.99)),
        }
    return {"codes": {code: int(count) for code, count in sorted(codes.items())}, "latency": quantiles}


def scaled(seconds):
    return None if seconds is None else seconds * 1000


def holds_and_invariants(args, started):
    """Holds made since `started` still without an order, and the invariant checker's run."""
    stranded = int(psql(args.database_url, f"""
        select count(*) from reservations r
         where r.state = 'reserved' and r.create_time >= '{started}'::timestamptz
           and not exists (select 1 from orders o where o.id = r.id)"""))
    invariants = subprocess.run([os.path.join(args.bin, "invariant-check")], capture_output=True, text=True,
                                env=dict(os.environ, DATABASE_URL=args.database_url))
    return stranded, invariants


class Services:
    def __init__(self, args, log_dir):
        self.args, self.log_dir, self.procs = args, log_dir, {}

    def start(self):
        env = dict(os.environ, DATABASE_URL=self.args.database_url, JWT_SECRET=self.args.jwt_secret,
                   RUST_LOG=os.environ.get("RUST_LOG", "warn"),
                   DATABASE_MAX_CONNECTIONS=os.environ.get("DATABASE_MAX_CONNECTIONS", "20"),
                   DEAL_SERVICE_URL=f"http://127.0.0.1:{PORTS['deal-service']}")
        for name, port in PORTS.items():
            service_env = dict(env, LISTEN_ADDR=f"127.0.0.1:{port}")
            if self.args.metrics:
                service_env["METRICS_ADDR"] = f"127.0.0.1:{METRICS_PORTS[name]}"
            log = open(os.path.join(self.log_dir, f"surge-{name}.log"), "a")
            self.procs[name] = subprocess.Popen([os.path.join(self.args.bin, name)], env=service_env,
                                                stdout=log, stderr=log)
            self.wait_serving(name, port)

    def wait_serving(self, name, port):
        for _ in range(500):
            probe = subprocess.run([os.path.join(self.args.bin, "health-probe"), "--addr", f"http://127.0.0.1:{port}"],
                                   capture_output=True)
            if probe.returncode == 0:
                return
            if self.procs[name].poll() is not None:
                sys.exit(f"{name} exited; see {self.log_dir}/surge-{name}.log")
            time.sleep(0.02)
        sys.exit(f"{name} never became SERVING")

    def stop(self):
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            proc.wait(timeout=30)
        self.procs = {}


def token(args, role, subject):
    result = subprocess.run([os.path.join(args.bin, "topkart"), "token", "--role", role, "--sub", subject,
                             "--ttl", "1h"], check=True, capture_output=True, text=True,
                            env=dict(os.environ, JWT_SECRET=args.jwt_secret))
    return result.stdout.strip()


def create_hot_deal(args, units):
    """The hot deal, inserted directly: live from a minute ago for two hours (or to 00:00 UTC)."""
    deal_id = str(uuid.uuid4())
    psql(args.database_url, f"""
        insert into deals (id, product_name, currency_code, actual_price_micros, final_price_micros,
                           total_units, available_units, start_time, expire_time, state)
        values ('{deal_id}', 'surge deal', 'INR', 1000000000, 600000000, {units}, {units},
                now() - interval '1 minute', now() + interval '2 hours', 'active')""")
    return deal_id


def run_level(args, concurrency, body_dir):
    connections = max(16, concurrency // 100)
    streams = max(1, concurrency // connections)
    services = Services(args, args.log_dir)
    services.start()
    try:
        deal_id = create_hot_deal(args, args.units)
        body = os.path.join(body_dir, "create-order.bin")
        with open(body, "wb") as out:
            out.write(create_order_body(f"deals/{deal_id}"))
        customer = token(args, "customer", "surge-buyer")
        started = psql(args.database_url, "select now()")
        if args.client == "h2load":
            command = ["h2load", "-c", str(connections), "-m", str(streams),
                       "-t", "1", "-D", str(args.duration), "--warm-up-time", str(args.warmup),
                       "-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers",
                       "-H", "grpc-timeout: 2S", "-H", f"authorization: Bearer {customer}",
                       f"http://127.0.0.1:{PORTS['order-service']}/topkart.order.v1.OrderService/CreateOrder"]
        else:
            report = os.path.join(body_dir, f"loadgen-surge-{concurrency}.json")
            command = [args.loadgen or os.path.join(args.bin, "loadgen"), "surge",
                       "--deal-service", f"http://127.0.0.1:{PORTS['deal-service']}",
                       "--order-service", f"http://127.0.0.1:{PORTS['order-service']}",
                       "--concurrency", str(concurrency), "--connections", str(connections),
                       "--deadline-ms", "2000", "--warmup", str(args.warmup), "--duration", str(args.duration),
                       "--json", report]
        client_env = dict(os.environ, JWT_SECRET=args.jwt_secret)
        client_env.pop("DATABASE_URL", None)
        load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=client_env)
        polite_report = None
        if args.polite and args.client == "h2load":
            # A buyer who asks once (RetryInfo honoured) orders the same deal during the surge.
            time.sleep(args.warmup)
            polite_report = os.path.join(body_dir, f"surge-polite-{concurrency}.json")
            subprocess.run([args.loadgen or os.path.join(args.bin, "loadgen"), "polite", "--order-service",
                            f"http://127.0.0.1:{PORTS['order-service']}", "--deal", f"deals/{deal_id}",
                            "--concurrency", "20", "--orders", "200", "--connections", "1",
                            "--deadline-ms", "2000", "--json", polite_report],
                           capture_output=True, text=True, env=client_env, timeout=args.duration + 60)
        stdout, _ = load.communicate(timeout=args.duration + args.warmup + 60)
        finished = subprocess.CompletedProcess(command, load.returncode, stdout, "")
        ended = psql(args.database_url, "select now()")
        time.sleep(1.0)
        window = float(psql(args.database_url, f"select extract(epoch from ('{ended}'::timestamptz - '{started}'::timestamptz)) - {args.warmup}"))
        # Every order of the window counts, whichever deal it took (loadgen makes its own).
        recorded = int(psql(args.database_url, f"""
            select count(*) from orders
             where create_time >= '{started}'::timestamptz + interval '{args.warmup} seconds'
               and create_time < '{ended}'::timestamptz"""))
        stranded, invariants = holds_and_invariants(args, started)
        result = {
            "concurrency": concurrency,
            "connections": connections,
            "streams_per_connection": streams,
            "orders_recorded": recorded,
            "window_s": window,
            "orders_per_s": recorded / window if window > 0 else 0.0,
            "holds_without_order_1s_after": stranded,
            "invariants_hold": invariants.returncode == 0,
            "invariant_report": (invariants.stdout + invariants.stderr).strip()[-2000:],
            "peak_rss_kib": {name: peak_rss_kib(proc.pid) for name, proc in services.procs.items()},
        }
        if polite_report:
            with open(polite_report) as produced:
                result["polite"] = json.load(produced)
        if args.client == "h2load":
            result["h2load"] = parse_h2load(finished.stdout)
        else:
            with open(report) as produced:
                result["loadgen"] = json.load(produced)
            result["loadgen_text"] = finished.stdout
        if args.metrics:
            result["server"] = server_view(scrape(METRICS_PORTS["order-service"]))
        return result
    finally:
        services.stop()


def parse_h2load(text):
    out = {"raw_tail": "\n".join(text.splitlines()[-14:])}
    match = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    if match:
        out["req_per_s"] = float(match.group(1))
    match = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
    if match:
        keys = ["total", "started", "done", "succeeded", "failed", "errored", "timeout"]
        out["requests"] = dict(zip(keys, map(int, match.groups())))
    match = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if match:
        out["request_time"] = {"min": match.group(1), "max": match.group(2), "mean": match.group(3), "sd": match.group(4)}
        out["mean_ms"] = to_ms(match.group(3))
        out["max_ms"] = to_ms(match.group(2))
    return out


def to_ms(text):
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if not match:
        return None
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value if unit == "ms" else value * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--jwt-secret", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--levels", default="256,1000,4000,10000")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--units", type=int, default=1000000)
    parser.add_argument("--client", choices=["h2load", "loadgen"], default="h2load")
    parser.add_argument("--loadgen", help="the loadgen binary (default: --bin's); a newer one can drive an older build")
    parser.add_argument("--no-metrics", dest="metrics", action="store_false", help="for builds without --metrics-addr")
    parser.add_argument("--polite", action="store_true",
                        help="with h2load: a polite buyer (loadgen polite, 20 at a time, 200 orders) orders during each level")
    parser.add_argument("--log-dir", default="target/bench")
    args = parser.parse_args()
    os.makedirs(args.log_dir, exist_ok=True)
    results = []
    for level in [int(level) for level in args.levels.split(",")]:
        print(f"== surge ({args.client}): {level} concurrent calls", file=sys.stderr)
        result = run_level(args, level, args.log_dir)
        if args.client == "h2load":
            latency = f"mean {result['h2load'].get('mean_ms')} ms"
        else:
            summary = result["loadgen"]["summary"]
            latency = f"p99 admitted {summary['latency_ms']['p99']} ms, shed {summary['shed_latency_ms']['p99']} ms"
        print(f"   {result['orders_per_s']:.0f} orders/s, {latency}, "
              f"{result['holds_without_order_1s_after']} holds without order, rss {result['peak_rss_kib']}",
              file=sys.stderr)
        results.append(result)
    with open(args.out, "w") as out:
        json.dump({"client": args.client, "deadline": "2S", "levels": results}, out, indent=2)


if __name__ == "__main__":
    main()
