#!/usr/bin/env bash
# Screenshots of the web console's main pages (English and Vietnamese) and a page image of the
# care report, into DIR (default ./screenshots). Needs .venv (scripts/test.sh makes it),
# Debian's chromium and poppler-utils (pdftoppm).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python scripts/screenshots.py "${1:-screenshots}"
