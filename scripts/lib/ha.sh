# shellcheck shell=bash
# A highly available Postgres for scripts/ha-test, all on 127.0.0.1 in one temporary folder: one etcd,
# three Postgres 15 nodes managed by Patroni (synchronous_mode strict), and HAProxy in front, sending
# Postgres connections to the leader (Patroni's REST `/primary`) and gRPC calls to the API pairs.
#
# Usage: source it, set HA_DIR (the temporary folder, made here) and HA_PORT (the first of the ports
# used: HA_PORT..HA_PORT+99), then call the functions. Every process started is recorded in
# HA_PIDS; ha_stop_all kills them and removes HA_DIR.

HA_PIDS=()
HA_PG_BIN=${HA_PG_BIN:-/usr/lib/postgresql/15/bin}
HA_NODES=(pg1 pg2 pg3)

# Ports, from HA_PORT: etcd 0–1, Postgres 10–12, Patroni's REST 20–22, HAProxy 30 (Postgres), 31
# (deal-service), 32 (order-service), the services 40–45.
ha_port() { echo $((HA_PORT + $1)); }
ha_node_index() { case "$1" in pg1) echo 0 ;; pg2) echo 1 ;; pg3) echo 2 ;; esac; }
ha_pg_port() { ha_port $((10 + $(ha_node_index "$1"))); }
ha_rest_port() { ha_port $((20 + $(ha_node_index "$1"))); }
ha_database_url() { echo "postgres://postgres@127.0.0.1:$(ha_port 30)/${1:-topkart}"; }

# Installs Debian's patroni, etcd-server and haproxy when one is missing (as root, through apt-get),
# and the tools this file uses: curl (Patroni's REST API, etcd's health) and pkill (procps).
ha_install() {
  local missing=()
  command -v patroni >/dev/null 2>&1 || missing+=(patroni)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v pkill >/dev/null 2>&1 || missing+=(procps)
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
  [ -x "$HA_PG_BIN/postgres" ] || missing+=(postgresql-15)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ha-test needs ${missing[*]} (Debian's packages; run as root to install them)" >&2
    return 1
  fi
  echo "installing ${missing[*]}" >&2
  apt-get update -qq
  # policy-rc.d or not, the packages' own services must not start: this test runs its own.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  local unit
  for unit in patroni etcd haproxy; do
    systemctl is-active --quiet "$unit" 2>/dev/null && systemctl stop "$unit" 2>/dev/null
  done
  return 0
}

# Runs a command as the owner of HA_DIR's Postgres files (postgres when root, else ourselves).
# The prefix that runs a command as the owner of the nodes' files: postgres when root (initdb
# refuses root), else ourselves. setpriv execs in place (runuser forks, and a SIGKILL would miss
# the command), so the pid of `"${HA_OWNER[@]}" cmd &` is the command's.
if [ "$(id -u)" = 0 ]; then
  HA_OWNER=(setpriv --reuid=postgres --regid=postgres --init-groups --)
else
  HA_OWNER=()
fi

# Waits up to $1 seconds for the command after it to succeed, every 0.2 s; fails with $2 otherwise.
ha_wait() {
  local seconds=$1 what=$2 deadline
  shift 2
  deadline=$(($(date +%s%N) + seconds * 1000000000))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s%N)" -gt "$deadline" ]; then
      echo "timed out after ${seconds}s waiting for $what" >&2
      return 1
    fi
    sleep 0.2
  done
}

ha_start_etcd() {
  mkdir -p "$HA_DIR/etcd"
  # One member: no elections, so its own heartbeat and election timeouts do not matter. Its data
  # lives in HA_DIR and goes with it.
  etcd --name etcd1 --data-dir "$HA_DIR/etcd/data" \
    --listen-client-urls "http://127.0.0.1:$(ha_port 0)" --advertise-client-urls "http://127.0.0.1:$(ha_port 0)" \
    --listen-peer-urls "http://127.0.0.1:$(ha_port 1)" --initial-advertise-peer-urls "http://127.0.0.1:$(ha_port 1)" \
    --initial-cluster "etcd1=http://127.0.0.1:$(ha_port 1)" --log-level warn \
    >"$HA_DIR/etcd/etcd.log" 2>&1 &
  HA_PIDS+=($!)
  ha_wait 30 "etcd" curl -fsS "http://127.0.0.1:$(ha_port 0)/health"
}

# The timings, decided on this 2-core machine under the test's load (benchmarks/ha.md):
# - loop_wait 2: each Patroni refreshes the leader key every 2 s and replicas look at least as often,
#   so a dead leader is noticed within a loop after its key expires;
# - retry_timeout 5: etcd and Postgres calls are retried for 5 s before Patroni gives up on them. A
#   loop starved of CPU under load (the services, the load generator and three Postgres share two
#   cores) has measured stalls of well under a second; 5 s leaves room for far worse;
# - ttl 15: how long the leader key outlives its last refresh, hence the floor of a crash's outage.
#   Patroni needs ttl >= loop_wait + 2 * retry_timeout (2 + 10 = 12), so that a leader that loses
#   etcd for retry_timeout demotes itself before its key can expire and a replica take over; 15
#   adds 3 s of slack, so a slow loop never costs the leader its key (no failover by itself).
ha_write_patroni_config() {
  local node=$1 dir=$HA_DIR/$1
  mkdir -p "$dir"
  cat >"$dir/patroni.yml" <<YAML
scope: topkart-ha
namespace: /topkart-ha/
name: $node
log:
  level: INFO
restapi:
  listen: 127.0.0.1:$(ha_rest_port "$node")
  connect_address: 127.0.0.1:$(ha_rest_port "$node")
# etcd 3.4 serves the v3 API only (v2 is off): Patroni's etcd3 client, not etcd.
etcd3:
  hosts: 127.0.0.1:$(ha_port 0)
bootstrap:
  dcs:
    ttl: 15
    loop_wait: 2
    retry_timeout: 5
    maximum_lag_on_failover: 1048576
    # A commit returns only once a synchronous standby has it, and with strict mode the leader
    # accepts no write while no standby is there: a transaction acknowledged to a client survives the
    # loss of the leader. (synchronous_commit must stay on: off acknowledges before the standby has it.)
    synchronous_mode: true
    synchronous_mode_strict: true
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        synchronous_commit: "on"
        max_connections: 200
        shared_buffers: 64MB
        wal_log_hints: "on"
        wal_keep_size: 256MB
  initdb:
    - encoding: UTF8
    - auth: trust
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:$(ha_pg_port "$node")
  connect_address: 127.0.0.1:$(ha_pg_port "$node")
  data_dir: $dir/data
  bin_dir: $HA_PG_BIN
  pgpass: $dir/pgpass
  # A rejoining leader whose timeline cannot be rewound is cloned afresh instead.
  remove_data_directory_on_rewind_failure: true
  remove_data_directory_on_diverged_timelines: true
  authentication:
    superuser:
      username: postgres
    replication:
      username: replicator
    rewind:
      username: postgres
  parameters:
    unix_socket_directories: $dir
tags:
  nofailover: false
  noloadbalance: false
YAML
}

# Starts (or restarts) the Patroni of a node; records its pid in HA_PATRONI_PID_<node>.
ha_start_patroni() {
  local node=$1
  [ -f "$HA_DIR/$node/patroni.yml" ] || ha_write_patroni_config "$node"
  chown -R postgres "$HA_DIR/$node" 2>/dev/null || true
  HOME=$HA_DIR/$node "${HA_OWNER[@]}" patroni "$HA_DIR/$node/patroni.yml" >>"$HA_DIR/$node/patroni.log" 2>&1 &
  HA_PIDS+=($!)
  printf -v "HA_PATRONI_PID_$node" %s "$!"
}

# The node whose REST API answers 200 to /primary (empty when none does).
ha_leader() {
  local node
  for node in "${HA_NODES[@]}"; do
    if curl -fsS -o /dev/null -m 1 "http://127.0.0.1:$(ha_rest_port "$node")/primary" 2>/dev/null; then
      echo "$node"
      return 0
    fi
  done
  return 1
}

# Succeeds when a leader other than $1 (or any, without an argument) answers /primary, and HAProxy
# reaches it.
ha_has_leader() {
  local leader
  leader=$(ha_leader) || return 1
  [ -n "$leader" ] && [ "$leader" != "${1:-}" ] || return 1
  ha_psql postgres -Atqc "select not pg_is_in_recovery()" | grep -qx t
}

# Succeeds when every running member is streaming (or the leader) and the leader has a synchronous
# standby: the cluster is whole again.
ha_cluster_whole() {
  local members=${1:-3}
  patronictl -c "$HA_DIR/pg1/patroni.yml" list -f json 2>/dev/null | python3 -c '
import json, sys
members = json.load(sys.stdin)
roles = [m["Role"] for m in members]
healthy = [m for m in members if m["State"] in ("running", "streaming")]
ok = (len(healthy) >= int(sys.argv[1]) and roles.count("Leader") == 1 and "Sync Standby" in roles
      and all(m.get("Lag in MB", 0) in (0, "0") for m in members if m["Role"] != "Leader"))
sys.exit(0 if ok else 1)' "$members"
}

ha_list() { patronictl -c "$HA_DIR/pg1/patroni.yml" list 2>&1; }

# psql through HAProxy, to the leader.
ha_psql() {
  local database=$1
  shift
  "$HA_PG_BIN/psql" "$(ha_database_url "$database")" -v ON_ERROR_STOP=1 "$@"
}

# Kills a node as a crash would: its Patroni, its postmaster and every backend, all with SIGKILL
# (killing only the postmaster would have Patroni restart it in place rather than fail over).
ha_crash_node() {
  local node=$1 patroni_var="HA_PATRONI_PID_$1" postmaster
  postmaster=$(head -1 "$HA_DIR/$node/data/postmaster.pid" 2>/dev/null || true)
  kill -KILL "${!patroni_var}" 2>/dev/null || true
  if [ -n "$postmaster" ]; then
    pkill -KILL -P "$postmaster" 2>/dev/null || true
    kill -KILL "$postmaster" 2>/dev/null || true
  fi
}

ha_start_haproxy() {
  local node
  mkdir -p "$HA_DIR/haproxy"
  {
    cat <<CFG
global
  maxconn 4000
  log stdout format raw local0 notice

defaults
  log global
  timeout connect 1s
  timeout client 1h
  timeout server 1h
  timeout check 1s

# Postgres: TCP to the one node whose Patroni answers 200 to /primary, checked every 500 ms. When a
# node stops being the leader its connections are cut (on-marked-down shutdown-sessions), so no
# session outlives a demotion on a node that now refuses writes.
listen postgres
  bind 127.0.0.1:$(ha_port 30)
  mode tcp
  option httpchk OPTIONS /primary
  http-check expect status 200
  default-server inter 500ms fastinter 250ms fall 2 rise 1 on-marked-down shutdown-sessions
CFG
    for node in "${HA_NODES[@]}"; do
      echo "  server $node 127.0.0.1:$(ha_pg_port "$node") check port $(ha_rest_port "$node")"
    done
    local api port
    for api in deal order; do
      if [ "$api" = deal ]; then port=$(ha_port 31); else port=$(ha_port 32); fi
      cat <<CFG

# gRPC to the $api-service pair, per call (HTTP/2 on both sides). A refused connection is retried on
# the other instance (nothing reached the service); a dead instance leaves after one failed check.
frontend grpc-$api
  bind 127.0.0.1:$port proto h2
  mode http
  timeout client 30s
  default_backend $api-service

backend $api-service
  mode http
  balance roundrobin
  timeout server 30s
  retries 3
  retry-on conn-failure empty-response
  option redispatch 1
  default-server proto h2 check inter 500ms fall 1 rise 1
  # HAProxy's own refusals as gRPC statuses (HTTP 502-504 with an HTML page would read as INTERNAL,
  # a body that is not gRPC): UNAVAILABLE, which clients retry.
  http-error status 502 hdr grpc-status 14 hdr grpc-message "no answer from the $api-service (balancer)"
  http-error status 503 hdr grpc-status 14 hdr grpc-message "no $api-service available (balancer)"
  http-error status 504 hdr grpc-status 14 hdr grpc-message "the $api-service timed out (balancer)"
CFG
      if [ "$api" = deal ]; then
        echo "  server deal1 127.0.0.1:$(ha_port 40)"
        echo "  server deal2 127.0.0.1:$(ha_port 41)"
      else
        echo "  server order1 127.0.0.1:$(ha_port 42)"
        echo "  server order2 127.0.0.1:$(ha_port 43)"
      fi
    done
  } >"$HA_DIR/haproxy/haproxy.cfg"
  haproxy -c -q -f "$HA_DIR/haproxy/haproxy.cfg" || return 1
  haproxy -W -db -f "$HA_DIR/haproxy/haproxy.cfg" >"$HA_DIR/haproxy/haproxy.log" 2>&1 &
  HA_PIDS+=($!)
}

# Kills everything started here (the nodes' postmasters too) and removes HA_DIR.
ha_stop_all() {
  local node postmaster
  if [ ${#HA_PIDS[@]} -gt 0 ]; then
    kill -KILL "${HA_PIDS[@]}" 2>/dev/null || true
  fi
  for node in "${HA_NODES[@]}"; do
    postmaster=$(head -1 "$HA_DIR/$node/data/postmaster.pid" 2>/dev/null || true)
    if [ -n "$postmaster" ]; then
      pkill -KILL -P "$postmaster" 2>/dev/null || true
      kill -KILL "$postmaster" 2>/dev/null || true
    fi
  done
  if [ ${#HA_PIDS[@]} -gt 0 ]; then
    wait "${HA_PIDS[@]}" 2>/dev/null || true
  fi
  HA_PIDS=()
  [ -n "${HA_DIR:-}" ] && rm -rf "$HA_DIR"
}
