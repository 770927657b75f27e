#!/usr/bin/env bash
# Build the self-contained agent for this machine: one file, no Python needed on the PC.
#
#   bash scripts/build-agent.sh [--smoke]
#
# Makes a clean build venv (build/agent-venv) with the agent's install only (no coordinator
# libraries) and PyInstaller, builds dist/careline-agent (careline-agent.exe on Windows, from
# Git Bash; see README "Building the Windows agent"), checks `--version`, and prints the size.
# --smoke then runs tests/agent/test_agent_binary.py against the binary: it enrolls against a
# real coordinator, runs, reports, and is installed as a service unit (needs the dev venv,
# .venv, for the coordinator and pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

case "$(uname -s)" in
    MINGW*|MSYS*|CYGWIN*) exe=dist/careline-agent.exe; bin=build/agent-venv/Scripts ;;
    *) exe=dist/careline-agent; bin=build/agent-venv/bin ;;
esac

python3 -m venv build/agent-venv 2>/dev/null || python -m venv build/agent-venv
"$bin/python" -m pip install --quiet --upgrade pip
"$bin/python" -m pip install --quiet . 'pyinstaller>=6.10'
# careline.coordinator ships in the same wheel but is never imported by the agent.
"$bin/python" -m PyInstaller --noconfirm --clean --onefile --name careline-agent \
    --distpath dist --workpath build/pyinstaller --specpath build \
    --collect-submodules careline.agent --collect-submodules careline.shared \
    --exclude-module careline.coordinator --exclude-module tkinter \
    --copy-metadata careline \
    packaging/careline-agent.py

"$exe" --version
size=$(wc -c < "$exe")
echo "built $exe: $((size / 1024 / 1024)) MB ($size bytes)"

if [ "${1:-}" = "--smoke" ]; then
    CARELINE_AGENT_BINARY="$PWD/$exe" .venv/bin/python -m pytest -q tests/agent/test_agent_binary.py
fi
