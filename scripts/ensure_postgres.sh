#!/usr/bin/env bash
# Makes sure the local PostgreSQL server answers: starts the installed cluster if it is
# stopped, then waits for it. Fails loudly rather than letting the PostgreSQL tests skip.
set -euo pipefail
if pg_isready -q -h 127.0.0.1 -p 5432; then
    exit 0
fi
if ! command -v pg_ctlcluster >/dev/null; then
    echo "PostgreSQL is not running and pg_ctlcluster is not installed" >&2
    exit 1
fi
for version in $(ls /etc/postgresql); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
done
for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && exit 0
    sleep 1
done
echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2
exit 1
