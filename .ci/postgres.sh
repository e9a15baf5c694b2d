#!/usr/bin/env bash
# Start a throw-away PostgreSQL (Debian's package) for the service's PostgreSQL tests and print its URL.
# Installs the package when missing (CI), runs as the postgres user on a private port and socket folder.
set -euo pipefail
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$PGBIN" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
DATA=${PGDATA_DIR:-/tmp/configurator-pg}
PORT=${PGPORT_TEST:-54329}
if [ ! -f "$DATA/PG_VERSION" ]; then
  rm -rf "$DATA" && mkdir -p "$DATA" && chown postgres "$DATA"
  runuser -u postgres -- "$PGBIN/initdb" -D "$DATA" -A trust -U postgres >/dev/null
fi
if ! runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DATA" -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1" \
    -l "$DATA/server.log" -w start >/dev/null
fi
runuser -u postgres -- "$PGBIN/psql" -h /tmp -p "$PORT" -U postgres -tc \
  "SELECT 1 FROM pg_database WHERE datname = 'configurator_test'" | grep -q 1 || \
  runuser -u postgres -- "$PGBIN/createdb" -h /tmp -p "$PORT" -U postgres configurator_test
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/configurator_test"
