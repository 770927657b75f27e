#!/usr/bin/env bash
# mypy over the source folders under the names they install as (careline.agent, ...):
# a tree of links in build/typecheck maps each top-level folder into the namespace.
# The packages are checked strictly, tests/ and bench/ with the relaxed settings pyproject gives them.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck/careline
rm -rf build/typecheck && mkdir -p "$tree"
for pkg in agent coordinator shared; do ln -s "../../../$pkg" "$tree/$pkg"; done
.venv/bin/mypy -p careline.agent -p careline.coordinator -p careline.shared
.venv/bin/mypy tests bench
