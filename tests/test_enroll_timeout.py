"""Every wait on the network has a timeout (issue 13, item 6): enrollment against a
coordinator that accepts the connection and then says nothing gives up in bounded time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from careline.agent.enroll import register
from careline.coordinator.pki import server_context
from careline.shared.keys import JoinString, cert_fingerprint, generate_key, public_bytes
from tests.conftest import CoordinatorProcess


async def test_register_gives_up_on_a_silent_coordinator(tmp_path: Path) -> None:
    pki = CoordinatorProcess(tmp_path).data / "pki"  # `careline init`: a real CA and server cert

    async def silent(ws: ServerConnection) -> None:
        await ws.wait_closed()  # never answers

    async with serve(silent, "127.0.0.1", 0, ssl=server_context(pki)) as server:
        port = server.sockets[0].getsockname()[1]
        join = JoinString(f"wss://127.0.0.1:{port}", "cle_x",
                          cert_fingerprint((pki / "ca.pem").read_text()))
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(10):  # the old code waited forever
                await register(join, public_bytes(generate_key()), hostname="pc", os="Linux",
                               products=[], open_timeout=1.0)
        assert time.monotonic() - started < 5
