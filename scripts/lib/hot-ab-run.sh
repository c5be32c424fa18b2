#!/usr/bin/env bash
# One run of scripts/bench-hot-ab with the binaries of $1 (results in target/bench-ab/$BENCH_LABEL).
set -euo pipefail
bin=$1; label=${BENCH_LABEL:-run}; out=target/bench-ab/$label; mkdir -p "$out"
seconds=${SECONDS_MEASURED:-10}; warmup=2
admin=postgres://postgres@127.0.0.1:5432/postgres
db=topkart_batchbench
psql -q "$admin" -c "drop database if exists $db with (force)" -c "create database $db" >/dev/null
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
export JWT_SECRET=bench-secret-of-at-least-32-bytes-long RUST_LOG=warn DATABASE_MAX_CONNECTIONS=20
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
start() { # name port
  LISTEN_ADDR=127.0.0.1:$2 METRICS_ADDR=127.0.0.1:$(($2 + 20)) DEAL_SERVICE_URL=http://127.0.0.1:50171 \
    "$bin/$1" >"$out/$1.log" 2>&1 & pids+=($!)
  local pid=$!
  until "$bin/health-probe" --addr "http://127.0.0.1:$2" --timeout-secs 1 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "$1 exited: $(tail -1 "$out/$1.log")" >&2; exit 1; }
    sleep 0.05
  done
}
# The previous run's services may still be letting go of their ports.
while ss -ltn | grep -qE '127.0.0.1:(50171|50172|50191|50192) '; do sleep 0.2; done
start deal-service 50171; deal_pid=${pids[0]}
start order-service 50172; order_pid=${pids[1]}
hot_deal() {
  local id; id=$(python3 -c 'import uuid; print(uuid.uuid4())')
  psql -q "$DATABASE_URL" -c "insert into deals (id, product_name, currency_code, actual_price_micros, final_price_micros,
      total_units, available_units, start_time, expire_time, state, max_units_per_customer)
      values ('$id', 'hot deal', 'INR', 1000000000, 600000000, 1000000, 1000000, now() - interval '1 minute',
              least(now() + interval '2 hours', date_trunc('day', now()) + interval '1 day' - interval '1 second'), 'active', 1000000)" >/dev/null
  echo "$id"
}
echo "== $label $(date -u +%H:%M:%S) load: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '\0\0\0\0\0' >"$out/health.bin"
h2load -c 4 -m 16 -t 1 -D "$seconds" --warm-up-time "$warmup" -d "$out/health.bin" \
  -H 'content-type: application/grpc' -H 'te: trailers' http://127.0.0.1:50171/grpc.health.v1.Health/Check >"$out/h2load-health.txt"
grep -E '^finished' "$out/h2load-health.txt"
deal=$(hot_deal)
"$bin/loadgen" hot-deal --deal "deals/$deal" --deal-service http://127.0.0.1:50171 --order-service http://127.0.0.1:50172 \
  --concurrency 256 --warmup "$warmup" --duration "$seconds" --json "$out/loadgen-hot-deal.json" >"$out/loadgen-hot-deal.txt" 2>&1 || echo "loadgen exit $?"
echo "-- loadgen hot-deal 256, per-customer limit set"
grep -iE 'calls/s|latency|oversold|FAIL' "$out/loadgen-hot-deal.txt" | head -6
echo "-- loadgen hot-deal, its own deal (no per-customer limit)"
"$bin/loadgen" hot-deal --deal-service http://127.0.0.1:50171 --order-service http://127.0.0.1:50172 \
  --concurrency 256 --warmup "$warmup" --duration "$seconds" --json "$out/loadgen-hot-deal-nolimit.json" >"$out/loadgen-hot-deal-nolimit.txt" 2>&1 || echo "loadgen exit $?"
grep -iE 'calls/s|latency|oversold|FAIL' "$out/loadgen-hot-deal-nolimit.txt" | head -6
echo "-- h2load CreateOrder, 16 connections x 16 streams, one buyer, limit set"
deal=$(hot_deal)
python3 - "$deal" "$out/create-order.bin" <<'PY'
import struct, sys
def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F; v >>= 7
        if v: out.append(b | 0x80)
        else: out.append(b); return bytes(out)
def field(n, wt, p):
    k = varint((n << 3) | wt)
    return k + varint(len(p)) + p if wt == 2 else k + p
order = field(2, 2, f"deals/{sys.argv[1]}".encode()) + field(4, 0, varint(1))
msg = field(1, 2, order)
open(sys.argv[2], "wb").write(b"\x00" + struct.pack(">I", len(msg)) + msg)
PY
customer=$("$bin/topkart" token --role customer --sub h2load-buyer --ttl 1h)
h2load -c 16 -m 16 -t 1 -D "$seconds" --warm-up-time "$warmup" -d "$out/create-order.bin" \
  -H 'content-type: application/grpc' -H 'te: trailers' -H 'grpc-timeout: 5S' -H "authorization: Bearer $customer" \
  http://127.0.0.1:50172/topkart.order.v1.OrderService/CreateOrder >"$out/h2load-create-order.txt"
grep -E '^finished|^requests|time for request' "$out/h2load-create-order.txt"
sleep 1
psql -qAt "$DATABASE_URL" -c "select 'h2load deal: orders ' || (select count(*) from orders where deal_id = '$deal') || ', units taken ' || (select total_units - available_units from deals where id = '$deal')"
curl -s http://127.0.0.1:50192/metrics | grep -E '^topkart_deal_call_batch_size_(sum|count)' || true
curl -s http://127.0.0.1:50191/metrics | grep -E '^topkart_reservation_batch_size_(sum|count)' || true
echo "peak RSS KiB: deal-service $(awk '/^VmHWM/ {print $2}' /proc/"$deal_pid"/status), order-service $(awk '/^VmHWM/ {print $2}' /proc/"$order_pid"/status)"
"$bin/invariant-check" && echo "invariants hold"
echo "== end $(date -u +%H:%M:%S) load: $(cut -d' ' -f1-3 /proc/loadavg)"
