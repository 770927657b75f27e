#!/usr/bin/env bash
# Install Careline into .venv and start a local demo fleet: a coordinator on SQLite and
# three agents enrolled for two customers, each watching a sample product. Shows the fleet,
# then keeps running until Ctrl-C (which stops everything it started).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=${CARELINE_DEMO_DIR:-$PWD/demo}
PORT=${CARELINE_DEMO_PORT:-8443}
WEB=${CARELINE_DEMO_WEB_PORT:-8444}

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet '.[coordinator]'
PATH=$PWD/.venv/bin:$PATH
export CARELINE_DATA=$DEMO/coordinator

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

if [ ! -e "$CARELINE_DATA/careline.toml" ]; then
    mkdir -p "$DEMO"
    careline init --listen "127.0.0.1:$PORT" --heartbeat-interval 5 | tee "$DEMO/init.txt"
fi
careline serve --web "127.0.0.1:$WEB" >"$DEMO/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.2; done

enroll() {  # enroll NAME CUSTOMER: a sample "KeToan" install dir with a manifest
    local name=$1 customer=$2 state=$DEMO/agents/$1 product=$DEMO/products/$1/KeToan
    # Three "PCs" on one host: each its own hardware identity, or the second would be
    # taken for a reinstall of the first.
    export CARELINE_AGENT_HARDWARE="{\"uuid\": \"demo-$name\", \"disk\": \"demo-disk-$name\"}"
    if [ ! -e "$state/agent.json" ]; then
        mkdir -p "$product"
        echo "sample accounting program" >"$product/ketoan.bin"
        .venv/bin/python - "$product" <<'PY'
import sys, pathlib
from careline.shared.manifest import build_manifest, encode_manifest, MANIFEST_NAME
root = pathlib.Path(sys.argv[1])
(root / MANIFEST_NAME).write_bytes(encode_manifest(build_manifest(root, "KeToan", "2026.1")))
PY
        case "$(careline customers list --json)" in
            *"\"$customer\""*) ;;
            *) careline customers add "$customer" >/dev/null ;;
        esac
        join=$(careline tokens create --customer "$customer" --uses 1 --expires 10m)
        careline-agent enroll "$join" --state "$state" --product "KeToan=$product"
    fi
    careline-agent run --state "$state" &
    pids+=($!)
}
enroll pc-ketoan-1 "Cong ty Minh Anh"
enroll pc-ketoan-2 "Cong ty Minh Anh"
enroll pc-quay-1 "Nha sach Hoa Mai"
sleep 3
careline agents list
echo
echo "Demo fleet running (data in $DEMO). In another terminal:"
echo "  CARELINE_DATA=$CARELINE_DATA .venv/bin/careline agents list"
echo "Web console: https://127.0.0.1:$WEB/ (the CA is $CARELINE_DATA/pki/ca.pem; sign in with"
echo "  the admin token in $DEMO/init.txt)"
echo "Press Ctrl-C to stop."
wait
