"""The bare-library baseline for bench/fleet.py: a websockets TLS server and nothing else.

Same certificate material, TLS context, event loop and `serve()` options as the coordinator
(coordinator/server.py), but no protocol, no authentication and no storage:

    /        echo server: every message is sent back
    /sink    receives messages and drops them (the bare analogue of a heartbeat consumer)
    /stats   answers each message with {"received": N, "connections": M, "monotonic": T}
             (T: this process's time.monotonic(), the same clock as the bench's on Linux)

Run by bench/fleet.py; not meant to be started by hand:
    python bench/echo_server.py --pki DATA/pki --port PORT
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

from websockets.asyncio.server import ServerConnection, serve

from careline.coordinator.bootstrap import tune_gc
from careline.coordinator.pki import server_context
from careline.shared import protocol as p

received = 0


async def handler(ws: ServerConnection) -> None:
    global received
    assert ws.request is not None
    path = ws.request.path
    if path == "/stats":
        server = ws.server
        async for _ in ws:
            await ws.send(json.dumps({
                "received": received, "connections": len(server.connections),
                "monotonic": time.monotonic(),
            }))
        return
    if path == "/sink":
        async for _ in ws:
            received += 1
        return
    async for message in ws:
        received += 1
        await ws.send(message)


async def main(pki: str, host: str, port: int) -> None:
    from pathlib import Path

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serve(
        handler, host, port, ssl=server_context(Path(pki)), compression=None,
        max_size=p.MAX_ADMIN_MESSAGE_BYTES, ping_interval=None, open_timeout=10,
    ) as server:
        print(f"listening on {host}:{port}", flush=True)
        await stop.wait()
        server.close(close_connections=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--pki", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    tune_gc()  # the coordinator's collector settings: the same process, minus Careline
    try:
        import uvloop  # the coordinator uses it when installed; so must its baseline
    except ImportError:
        asyncio.run(main(args.pki, args.host, args.port))
    else:
        uvloop.run(main(args.pki, args.host, args.port))
    sys.exit(0)
