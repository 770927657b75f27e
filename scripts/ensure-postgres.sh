#!/usr/bin/env bash
# Make a PostgreSQL server answer on 127.0.0.1:5432 with trust auth and a `test` database.
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "no PostgreSQL installed and cannot install it here" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /etc/postgresql | sort -V | tail -n 1)
hba=/etc/postgresql/$version/main/pg_hba.conf
if ! grep -q "careline-test" "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust # careline-test\nlocal all all trust # careline-test' "$hba"
fi
pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
    || pg_ctlcluster --skip-systemctl-redirect "$version" main reload
for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
user=$(id -un)
su postgres -c "psql -qtc \"SELECT 1 FROM pg_roles WHERE rolname='$user'\" | grep -q 1 || createuser -s $user" 2>/dev/null \
    || true
psql -h 127.0.0.1 -d postgres -qtc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1 \
    || createdb -h 127.0.0.1 test
