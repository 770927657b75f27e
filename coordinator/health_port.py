"""A plain-HTTP health endpoint for the load balancer in front of several coordinator
processes (`serve --health-listen`, README "Scale-out").

HAProxy's TLS check on the agents' port queues behind every handshake in progress there: a
process busy taking back a dead one's 10,000 agents failed it, was taken out of rotation,
and with no server left HAProxy reset every agent coming back. This port answers from the
same event loop but with no TLS and nothing queued in front of it, so a busy process passes
and a frozen one (SIGSTOP, a blocked loop: its kernel still accepts the TCP connection)
fails. It says nothing but whether the process is serving.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

HEALTH_PATH = "/health"
READ_TIMEOUT = 2.0  # for the request's headers; a check that stalls is dropped
REQUEST_LIMIT = 2048  # bytes of request line and headers read at most


def health_response(request_line: bytes, serving: bool) -> bytes:
    """The whole HTTP/1.0 answer to one request line."""
    parts = request_line.split()
    if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD") or parts[1] != HEALTH_PATH.encode():
        status, body = b"404 Not Found", b"no such path\n"
    elif serving:
        status, body = b"200 OK", b"ok\n"
    else:
        status, body = b"503 Service Unavailable", b"stopping\n"
    if parts[:1] == [b"HEAD"]:
        body = b""
    return (b"HTTP/1.0 " + status + b"\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def serve_health(host: str, port: int, serving: Callable[[], bool]) -> asyncio.Server:
    """Listen on HOST:PORT; each connection gets one answer and is closed."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            writer.write(health_response(head.split(b"\r\n", 1)[0], serving()))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(answer, host, port, limit=REQUEST_LIMIT)
