#!/usr/bin/env bash
# A private, throw-away PostgreSQL instance for tests and benchmarks (the message archive's
# PostgreSQL backend): its own data directory, a loopback port, its Unix socket in DIR,
# trust authentication for the `postgres` role. Used by storage/tests/archive_backends.rs
# and meant for the Python integration tests too.
#
#   scripts/pg-instance.sh start DIR PORT   # initdb DIR/data if new, start, print the URL
#   scripts/pg-instance.sh stop DIR         # stop it (fast shutdown); DIR is left to the caller
#
# PostgreSQL refuses to run as root: as root, DIR is given to the `postgres` user and the
# server runs as that user (runuser, or setpriv). The binaries are looked for under
# /usr/lib/postgresql/*/bin (newest first) unless PG_BIN names their directory.
#   PG_INSTANCE_FSYNC=on   keep fsync (default off: a test instance need not survive a crash)
# Exit status 3: PostgreSQL's binaries are not installed (callers may skip on it).
set -euo pipefail

usage() {
    echo "usage: $0 start DIR PORT | stop DIR" >&2
    exit 2
}
cmd="${1:-}"
dir="${2:-}"
[ -n "${cmd}" ] && [ -n "${dir}" ] || usage

bin="${PG_BIN:-}"
if [ -z "${bin}" ]; then
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "${d}/initdb" ] && [ -x "${d}/pg_ctl" ]; then
            bin="${d}"
            break
        fi
    done
fi
if [ -z "${bin}" ] || [ ! -x "${bin}/pg_ctl" ]; then
    echo "pg-instance: no initdb/pg_ctl in ${PG_BIN:-/usr/lib/postgresql/*/bin} (apt-get install postgresql)" >&2
    exit 3
fi

# Run as the directory's owner: ourselves, or `postgres` when we are root.
as_owner() {
    if [ "$(id -u)" -ne 0 ]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u postgres -- "$@"
    else
        setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
    fi
}

case "${cmd}" in
start)
    port="${3:-}"
    [ -n "${port}" ] || usage
    mkdir -p "${dir}"
    dir="$(cd "${dir}" && pwd)"
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || {
            echo "pg-instance: running as root needs a 'postgres' user to run the server as" >&2
            exit 1
        }
        chown -R postgres: "${dir}"
    fi
    if [ ! -f "${dir}/data/PG_VERSION" ]; then
        if ! as_owner "${bin}/initdb" -D "${dir}/data" -U postgres --auth=trust -E UTF8 \
            --no-locale >"${dir}/initdb.log" 2>&1; then
            cat "${dir}/initdb.log" >&2
            exit 1
        fi
    fi
    fsync="${PG_INSTANCE_FSYNC:-off}"
    if ! as_owner "${bin}/pg_ctl" -D "${dir}/data" -l "${dir}/postgres.log" -w -t 60 \
        -o "-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=${fsync} -c synchronous_commit=${fsync} -c full_page_writes=${fsync}" \
        start >/dev/null; then
        tail -n 20 "${dir}/postgres.log" >&2 || true
        exit 1
    fi
    echo "postgres://postgres@127.0.0.1:${port}/postgres"
    ;;
stop)
    if [ -f "${dir}/data/postmaster.pid" ]; then
        as_owner "${bin}/pg_ctl" -D "${dir}/data" -m fast -w -t 60 stop >/dev/null
    fi
    ;;
*)
    usage
    ;;
esac
