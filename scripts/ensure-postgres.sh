#!/usr/bin/env bash
# Make sure a PostgreSQL server answers on 127.0.0.1:5432 with a database
# `test` that user `postgres` can use without a password, for the
# coordinator's storage tests (ARCHIPELAGO_TEST_DATABASE_URL, default
# postgres://postgres@127.0.0.1:5432/test).
#
# 1. If something already answers there, only make sure `test` exists.
# 2. Otherwise start the Debian cluster if one is installed, or install
#    PostgreSQL from Debian's packages (apt-get) and start it, or as a last
#    resort initdb a throwaway cluster under $PGDATA_DIR (trust auth).
#
# Idempotent; safe to run on a machine that already has PostgreSQL.
set -euo pipefail

HOST=127.0.0.1
PORT=5432
DB=test
PGDATA_DIR=${PGDATA_DIR:-/tmp/archipelago-pg}

log() { echo "ensure-postgres: $*" >&2; }

answers() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -h "$HOST" -p "$PORT" -q
    else
        (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
    fi
}

as_postgres() {
    if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1; then
        su postgres -s /bin/sh -c "$*"
    else
        sh -c "$*"
    fi
}

ensure_db() {
    if ! psql -h "$HOST" -p "$PORT" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
        log "creating database $DB"
        psql -h "$HOST" -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE $DB" >/dev/null
    fi
    log "PostgreSQL ready at postgres://postgres@$HOST:$PORT/$DB"
}

wait_up() {
    for _ in $(seq 1 60); do
        answers && return 0
        sleep 0.5
    done
    return 1
}

if answers; then
    ensure_db
    exit 0
fi

# A Debian cluster that is installed but not running.
if command -v pg_lsclusters >/dev/null 2>&1 && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
    read -r ver name _ < <(pg_lsclusters -h | head -n1)
    log "starting Debian cluster $ver/$name"
    pg_ctlcluster "$ver" "$name" start || true
    if wait_up; then
        ensure_db
        exit 0
    fi
fi

# Install from Debian's packages.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing PostgreSQL from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq postgresql >/dev/null
    if command -v pg_lsclusters >/dev/null 2>&1 && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
        read -r ver name _ < <(pg_lsclusters -h | head -n1)
        pg_ctlcluster "$ver" "$name" start || true
        if wait_up; then
            # Debian clusters use peer auth on the socket; trust local TCP for tests.
            hba=$(ls /etc/postgresql/"$ver"/"$name"/pg_hba.conf)
            if ! grep -q "archipelago-test" "$hba"; then
                sed -i '1i host all all 127.0.0.1/32 trust # archipelago-test' "$hba"
                pg_ctlcluster "$ver" "$name" reload
            fi
            ensure_db
            exit 0
        fi
    fi
fi

# Last resort: a throwaway cluster with trust auth.
BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n1 || command -v initdb)")
[ -x "$BIN/initdb" ] || { log "no initdb found; install PostgreSQL"; exit 1; }
log "initialising a throwaway cluster in $PGDATA_DIR"
mkdir -p "$PGDATA_DIR"
if [ "$(id -u)" = 0 ]; then chown postgres "$PGDATA_DIR"; fi
if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
    as_postgres "$BIN/initdb -D $PGDATA_DIR -U postgres --auth=trust >/dev/null"
fi
as_postgres "$BIN/pg_ctl -D $PGDATA_DIR -o '-h $HOST -p $PORT -k /tmp' -l $PGDATA_DIR/log start >/dev/null"
wait_up || { log "PostgreSQL did not start; see $PGDATA_DIR/log"; exit 1; }
ensure_db
