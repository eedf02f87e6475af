#!/usr/bin/env bash
# Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d), as the
# image's superuser (POSTGRES_USER), which only the postgres container itself ever uses.
# Creates two login roles, neither superuser nor able to create databases or roles:
#   DAGSTER_PG_USERNAME      owns DAGSTER_PG_DB only (Dagster's runs, event logs, schedules)
#   NUDGE_WAREHOUSE_USERNAME owns NUDGE_WAREHOUSE_DB only (creates its raw/analytics/nudge schemas)
# Neither may connect to the other's database.
set -euo pipefail
for var in DAGSTER_PG_USERNAME DAGSTER_PG_PASSWORD DAGSTER_PG_DB \
    NUDGE_WAREHOUSE_USERNAME NUDGE_WAREHOUSE_PASSWORD NUDGE_WAREHOUSE_DB; do
    if [ -z "${!var:-}" ]; then
        echo "nudge-roles.sh: $var must be set (see .env.example)" >&2
        exit 1
    fi
done
if [ "$DAGSTER_PG_DB" = "$NUDGE_WAREHOUSE_DB" ] \
    || [ "$DAGSTER_PG_USERNAME" = "$NUDGE_WAREHOUSE_USERNAME" ] \
    || [ "$DAGSTER_PG_USERNAME" = "$POSTGRES_USER" ] \
    || [ "$NUDGE_WAREHOUSE_USERNAME" = "$POSTGRES_USER" ]; then
    echo "nudge-roles.sh: Dagster and the warehouse need their own database and role, and" \
        "neither role may be POSTGRES_USER (the superuser)" >&2
    exit 1
fi

# Passwords are read from the environment by psql (\getenv), never put on a command line.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-postgres}" \
    -v dagster_user="$DAGSTER_PG_USERNAME" -v dagster_db="$DAGSTER_PG_DB" \
    -v warehouse_user="$NUDGE_WAREHOUSE_USERNAME" -v warehouse_db="$NUDGE_WAREHOUSE_DB" <<'SQL'
\getenv dagster_password DAGSTER_PG_PASSWORD
\getenv warehouse_password NUDGE_WAREHOUSE_PASSWORD
create role :"dagster_user" login nosuperuser nocreatedb nocreaterole noinherit noreplication
    password :'dagster_password';
create role :"warehouse_user" login nosuperuser nocreatedb nocreaterole noinherit noreplication
    password :'warehouse_password';
create database :"dagster_db" owner :"dagster_user";
create database :"warehouse_db" owner :"warehouse_user";
-- Only each database's owner (and the superuser) may connect to it.
revoke all on database :"dagster_db" from public;
revoke all on database :"warehouse_db" from public;
-- The `public` schema of each belongs to its owner (before Postgres 15 it is the superuser's,
-- writable by everyone).
\connect :"dagster_db"
alter schema public owner to :"dagster_user";
revoke all on schema public from public;
\connect :"warehouse_db"
alter schema public owner to :"warehouse_user";
revoke all on schema public from public;
SQL
