"""Serve the web console under uvicorn inside the coordinator's own event loop and process.

Same TLS certificate as the agents' port; the coordinator's signal handling stops both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from careline.coordinator.datadir import Settings

if TYPE_CHECKING:
    from careline.coordinator.services import Services

log = logging.getLogger("careline.coordinator")


async def serve_web(services: Services, listen: str, stop: asyncio.Event) -> None:
    import uvicorn

    from careline.coordinator.web.app import create_app

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # the coordinator owns SIGINT/SIGTERM
            yield

    host, port = Settings(listen=listen).listen_host_port()
    pki = services.datadir.pki
    server = Server(uvicorn.Config(
        create_app(services), host=host, port=port, ssl_certfile=str(pki / "server.pem"),
        ssl_keyfile=str(pki / "server.key"), lifespan="off", access_log=False,
        log_level="warning", server_header=False, proxy_headers=False, timeout_graceful_shutdown=1,
    ))
    serving = asyncio.create_task(server.serve())
    log.info("web console on https://%s:%s", host, port)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopping.cancel()
    await serving
