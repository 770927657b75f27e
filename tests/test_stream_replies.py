"""Streaming replies on the admin channel (coordinator/server.py send_stream): partials
that come while the socket is busy travel together, in order, and the client yields each
one (coordinator/client.py). A method that fails mid-stream still fails the request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from careline.coordinator.server import send_stream
from careline.shared import protocol as p
from careline.shared.errors import NotFound


class SlowSocket:
    """Takes one frame every `delay` seconds, as a congested connection would."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.replies: list[p.Reply] = []

    async def send(self, data: bytes) -> None:
        await asyncio.sleep(self.delay)
        self.replies.append(p.decode(data, p.Reply, limit=p.MAX_ADMIN_MESSAGE_BYTES))


def partials_of(replies: list[p.Reply]) -> list[Any]:
    """What the client yields (coordinator/client.py AdminClient.stream)."""
    out: list[Any] = []
    for reply in replies:
        assert not reply.final
        out.extend(reply.result if reply.many else [reply.result])
    return out


async def answers(n: int, every: float = 0.0) -> AsyncIterator[dict[str, Any]]:
    for i in range(n):
        if every:
            await asyncio.sleep(every)
        yield {"machine": f"ag-{i}", "status": "ok"}


async def test_answers_that_come_while_the_socket_is_busy_go_together_in_order() -> None:
    ws = SlowSocket(delay=0.01)
    await send_stream(ws, 7, answers(2000))  # type: ignore[arg-type]
    assert partials_of(ws.replies) == [{"machine": f"ag-{i}", "status": "ok"} for i in range(2000)]
    assert len(ws.replies) < 20  # one reply each was 2,000 sends
    assert {reply.id for reply in ws.replies} == {7}


async def test_an_answer_alone_goes_alone_at_once() -> None:
    ws = SlowSocket(delay=0.0)
    await send_stream(ws, 1, answers(3, every=0.05))  # type: ignore[arg-type]
    assert [reply.many for reply in ws.replies] == [False, False, False]
    assert partials_of(ws.replies) == [{"machine": f"ag-{i}", "status": "ok"} for i in range(3)]


async def test_a_method_failing_mid_stream_fails_the_request_after_what_it_sent() -> None:
    async def failing() -> AsyncIterator[dict[str, Any]]:
        yield {"machine": "ag-0"}
        raise NotFound("no such machine")

    ws = SlowSocket(delay=0.0)
    with pytest.raises(NotFound):
        await send_stream(ws, 1, failing())  # type: ignore[arg-type]
    assert partials_of(ws.replies) == [{"machine": "ag-0"}]


async def test_a_technician_gone_mid_stream_closes_the_method_at_once() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                yield {"machine": "ag"}
                await asyncio.sleep(0)
        finally:
            closed.set()

    class GoneSocket:
        async def send(self, data: bytes) -> None:
            raise ConnectionError("technician went away")

    with pytest.raises(ConnectionError):
        await send_stream(GoneSocket(), 1, endless())  # type: ignore[arg-type]
    assert closed.is_set()
