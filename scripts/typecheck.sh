#!/usr/bin/env bash
# mypy over the source folders under the names they install as (careline.agent, ...):
# a tree of links in build/typecheck maps each top-level folder into the namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck/careline
rm -rf build/typecheck && mkdir -p "$tree"
for pkg in agent coordinator shared; do ln -s "../../../$pkg" "$tree/$pkg"; done
MYPYPATH=build/typecheck .venv/bin/mypy -p careline.agent -p careline.coordinator -p careline.shared
