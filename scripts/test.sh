#!/usr/bin/env bash
# Install everything the test suite needs into .venv and run all tests.
# Careline is installed from this checkout as a wheel would install it (not in editable
# mode), so the tests see exactly the packages, data files and entry points users get.
# PostgreSQL: uses $CARELINE_TEST_PG (default postgresql://127.0.0.1:5432/test); starts the
# local cluster if it is installed but stopped, and installs it (Debian/Ubuntu, as root)
# when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet '.[test]'
.venv/bin/python -m pip install --quiet --no-deps --force-reinstall .

# The web console's browser tests drive Debian's chromium (Playwright's own browser download is
# not used); WeasyPrint needs Pango, and the care report embeds DejaVu (Vietnamese diacritics);
# pdftotext/pdftoppm check and picture the PDF.
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v pdftoppm >/dev/null || missing+=(poppler-utils)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
ldconfig -p 2>/dev/null | grep libpangoft2 >/dev/null || missing+=(libpango-1.0-0 libpangoft2-1.0-0)
# The scale-out test and bench/scale_out.py put Debian's HAProxy in front of two coordinators.
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    else
        echo "missing system packages: ${missing[*]} (browser, PDF and load-balancer tests will skip or fail)"
    fi
fi

if [ -z "${CARELINE_TEST_PG:-}" ] && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    bash scripts/ensure-postgres.sh || echo "PostgreSQL could not be started; its tests will say why"
fi

# `systemd-analyze verify` checks the agent's unit file (tests/agent/test_service.py).
if ! command -v systemd-analyze >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q systemd >/dev/null \
        || echo "systemd could not be installed; the unit-file check will skip"
fi

.venv/bin/ruff check agent coordinator shared tests bench
bash scripts/typecheck.sh
.venv/bin/python -m pytest -q -n 3 "$@"
