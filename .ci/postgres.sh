#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the marketplace's PostgreSQL tests and print its
# SQLAlchemy URL (the caller exports it as APT_TEST_POSTGRES_URL). Installs Debian's server if missing.
set -euo pipefail
PORT=${1:-54329}
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  (apt-get install -y -q postgresql || (apt-get update -q && apt-get install -y -q postgresql)) >&2
fi
BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
DIR=$(mktemp -d /tmp/apt-postgres.XXXXXX)
as_owner() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$1"; else bash -c "$1"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$DIR"
as_owner "$BIN/initdb -D $DIR/data -A trust -U postgres" >&2
as_owner "$BIN/pg_ctl -D $DIR/data -l $DIR/log -w -o '-p $PORT -k $DIR -c listen_addresses=127.0.0.1' start" >&2
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
