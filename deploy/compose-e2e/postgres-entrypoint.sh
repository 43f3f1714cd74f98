#!/bin/bash
# The entrypoint of the PostgreSQL stand-in image that `make compose-e2e` builds from
# Debian's postgresql-15 where the official postgres image cannot be pulled. It does
# what docker-compose.yml relies on the official image's entrypoint for, the same way:
#
# - POSTGRES_PASSWORD (required, unless POSTGRES_HOST_AUTH_METHOD=trust),
#   POSTGRES_USER (default postgres), POSTGRES_DB (default POSTGRES_USER),
#   POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD (default scram-sha-256) and PGDATA
#   (default /var/lib/postgresql/data, where compose mounts its volume);
# - on an empty PGDATA only: initdb as POSTGRES_USER with that password, TCP clients
#   by password (scram-sha-256), socket clients trusted; then a temporary server on
#   the socket only (so a TCP health check fails until the end) runs
#   /docker-entrypoint-initdb.d/*.sql, *.sql.gz and *.sh in name order, as
#   POSTGRES_USER in POSTGRES_DB; then it stops and the real server starts;
# - the server runs as the postgres user, in the foreground, listening on every
#   interface; the image's STOPSIGNAL is SIGINT (a fast shutdown), as the official one.
set -Eeuo pipefail

export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
POSTGRES_HOST_AUTH_METHOD="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
SOCKET_DIR=/var/run/postgresql

log() { echo "postgres-entrypoint: $*" >&2; }

# `docker run IMAGE -c shared_buffers=...` means the server with those options.
if [ "${1:0:1}" = "-" ]; then
  set -- postgres "$@"
fi

if [ "$1" != postgres ]; then
  exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
  # As root, only to hand the data and socket directories to postgres (a new volume
  # is root's), then again as postgres.
  mkdir -p "$PGDATA" "$SOCKET_DIR"
  chmod 0700 "$PGDATA"
  chmod 2775 "$SOCKET_DIR"
  find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
  chown postgres:postgres "$SOCKET_DIR"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
    log "POSTGRES_PASSWORD is not set: set it, or POSTGRES_HOST_AUTH_METHOD=trust"
    exit 1
  fi
  log "initialising $PGDATA for $POSTGRES_USER"
  pwfile="$(mktemp)"
  trap 'rm -f "$pwfile"' EXIT
  printf '%s' "${POSTGRES_PASSWORD:-}" >"$pwfile"
  # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of options, as upstream.
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
    --auth-host="$POSTGRES_HOST_AUTH_METHOD" ${POSTGRES_INITDB_ARGS:-} >/dev/null
  rm -f "$pwfile"
  trap - EXIT
  # Every address, by password (initdb's own lines cover the loopback only).
  printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"

  # The temporary server: the socket only, so nothing outside sees it before the
  # init scripts have run.
  pg_ctl --silent -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start
  psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
  if [ "$POSTGRES_DB" != postgres ]; then
    exists="$("${psql[@]}" --dbname postgres --tuples-only --no-align \
      --set db="$POSTGRES_DB" <<<"SELECT 1 FROM pg_database WHERE datname = :'db'")"
    if [ -z "$exists" ]; then
      "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
  fi
  shopt -s nullglob
  for script in /docker-entrypoint-initdb.d/*; do
    case "$script" in
      *.sh)
        if [ -x "$script" ]; then
          log "running $script"
          "$script"
        else
          log "sourcing $script"
          # shellcheck disable=SC1090
          . "$script"
        fi
        ;;
      *.sql)
        log "running $script"
        "${psql[@]}" --dbname "$POSTGRES_DB" -f "$script"
        ;;
      *.sql.gz)
        log "running $script"
        gunzip -c "$script" | "${psql[@]}" --dbname "$POSTGRES_DB"
        ;;
      *) log "ignoring $script" ;;
    esac
  done
  shopt -u nullglob
  pg_ctl --silent -D "$PGDATA" -m fast -w stop
  log "initialised; starting the server"
fi

exec "$@"
