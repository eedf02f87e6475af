#!/usr/bin/env bash
# Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d): the
# warehouse gets its own database beside Dagster's, on the same server.
set -euo pipefail
: "${NUDGE_WAREHOUSE_DB:?NUDGE_WAREHOUSE_DB names the warehouse database}"
if [ "$NUDGE_WAREHOUSE_DB" = "$POSTGRES_DB" ]; then
    exit 0  # one database for both: nothing to create
fi
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v db="$NUDGE_WAREHOUSE_DB" -v owner="$POSTGRES_USER" <<'SQL'
create database :"db" owner :"owner";
SQL
