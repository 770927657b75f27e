#!/usr/bin/env bash
# Release Careline itself: check, test, build the wheel and sdist, check them, tag.
#   bash scripts/release.sh 0.2.0
# The version has one source, `version` in pyproject.toml (the package metadata, which
# `careline --version`, `careline-agent --version` and the agents' Hello report). Set it and
# add a "## [0.2.0]" section to CHANGELOG.md first; this script refuses otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: bash scripts/release.sh VERSION}

current=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
[ "$current" = "$version" ] || { echo "pyproject.toml says version $current: set it to $version first" >&2; exit 1; }
grep -q "^## \[$version\]" CHANGELOG.md || { echo "CHANGELOG.md has no '## [$version]' section" >&2; exit 1; }
[ -z "$(git status --porcelain)" ] || { echo "uncommitted changes: commit or stash them first" >&2; exit 1; }
if git rev-parse -q --verify "refs/tags/v$version" >/dev/null; then
    echo "tag v$version already exists" >&2; exit 1
fi

bash scripts/test.sh
rm -rf dist
.venv/bin/python -m build --outdir dist
# Everything installs under careline/ (and its .dist-info): nothing at the top of site-packages.
.venv/bin/python - "$version" <<'PY'
import sys, zipfile, pathlib
version = sys.argv[1]
wheel, = pathlib.Path("dist").glob(f"careline-{version}-*.whl")
tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
assert tops == {"careline", f"careline-{version}.dist-info"}, f"unexpected top-level entries: {tops}"
print(f"{wheel.name}: only careline/ and its metadata")
PY
git tag -a "v$version" -m "Careline $version"
echo "Tagged v$version. Publish dist/* to your package index; the agent is then built from this tag."
