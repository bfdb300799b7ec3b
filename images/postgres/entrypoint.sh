#!/bin/sh
# codex-postgres: initialise PGDATA once (a role and a database for Celery's results, password
# authentication from the network), then run the server in the foreground.
set -eu
if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "codex-postgres: POSTGRES_PASSWORD is empty; set it (compose: CODEX_POSTGRES_PASSWORD) and start again" >&2
    exit 2
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initdb -D "$PGDATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -k /tmp" -w start >/dev/null
    psql -h /tmp -U postgres -v ON_ERROR_STOP=1 -q \
        -v user="$POSTGRES_USER" -v db="$POSTGRES_DB" -v password="$POSTGRES_PASSWORD" <<'SQL'
CREATE ROLE :"user" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"user";
SQL
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "codex-postgres: initialised $PGDATA (database $POSTGRES_DB, user $POSTGRES_USER)"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -k /tmp
