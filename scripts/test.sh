#!/usr/bin/env bash
# Install everything the test suite needs into .venv and run all tests.
# PostgreSQL: uses $CARELINE_TEST_PG (default postgresql://127.0.0.1:5432/test); starts the
# local cluster if it is installed but stopped, and installs it (Debian/Ubuntu, as root)
# when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

if [ -z "${CARELINE_TEST_PG:-}" ] && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    bash scripts/ensure-postgres.sh || echo "PostgreSQL could not be started; its tests will say why"
fi

.venv/bin/ruff check agent coordinator shared tests bench
.venv/bin/mypy agent coordinator shared
.venv/bin/python -m pytest -q "$@"
