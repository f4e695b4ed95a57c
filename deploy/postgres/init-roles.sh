#!/bin/sh
# Creates BayChat's database and its two roles. The postgres image runs this once, when its
# data directory is first initialised (/docker-entrypoint-initdb.d); changing the .env
# afterwards changes nothing here (see docs/OPERATIONS.md, "Running the cluster").
#
#   owner role  owns the database and the schema; only `baychat migrate` logs in as it
#   app role    owns nothing, may only CONNECT; `baychat migrate` grants it what the
#               gateways and workers need, and row-level security applies to it
#   backup role reads everything (pg_read_all_data, BYPASSRLS) for `baychat backup`'s
#               pg_dump, and may write nothing; only the backup service has its password
#
# None is superuser or may create roles or databases; only the backup role bypasses
# row-level security (a dump must see every tenant; the gateways refuse such a role).
# Values reach SQL only through psql variables (:'literal', :"identifier"), never by
# pasting them into the text.
set -eu

: "${BAYCHAT_DB_OWNER_PASSWORD:?must be set (see .env.example)}"
: "${BAYCHAT_DB_APP_PASSWORD:?must be set (see .env.example)}"
: "${BAYCHAT_DB_BACKUP_PASSWORD:?must be set (see .env.example)}"

psql --no-psqlrc --set ON_ERROR_STOP=1 \
    --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
    --set db="${BAYCHAT_DB_NAME:-baychat}" \
    --set owner="${BAYCHAT_DB_OWNER:-baychat_owner}" \
    --set owner_password="$BAYCHAT_DB_OWNER_PASSWORD" \
    --set app="${BAYCHAT_DB_APP:-baychat_app}" \
    --set app_password="$BAYCHAT_DB_APP_PASSWORD" \
    --set backup="${BAYCHAT_DB_BACKUP:-baychat_backup}" \
    --set backup_password="$BAYCHAT_DB_BACKUP_PASSWORD" <<'SQL'
CREATE ROLE :"owner" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'owner_password';
CREATE ROLE :"app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'app_password';
CREATE ROLE :"backup" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION BYPASSRLS
    PASSWORD :'backup_password';
GRANT pg_read_all_data TO :"backup";
CREATE DATABASE :"db" OWNER :"owner";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"app";
GRANT CONNECT ON DATABASE :"db" TO :"backup";
\connect :"db"
REVOKE ALL ON SCHEMA public FROM PUBLIC;
ALTER SCHEMA public OWNER TO :"owner";
SQL
