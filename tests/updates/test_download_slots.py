"""A download whose agent stops reading frees its slot; one agent cannot take many slots
(issue 12, item 8). The coordinator's real UpdateService, with sockets that never drain."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from careline.coordinator import updates
from careline.coordinator.hub import AgentLink
from careline.coordinator.updates import UpdateService
from careline.shared import protocol as p
from careline.shared.session import ServerSession


class Socket:
    """Takes `accept` messages, then blocks like a peer that stopped reading."""

    def __init__(self, accept: int = 10**9) -> None:
        self.sent: list[Any] = []
        self.accept = accept

    async def send(self, data: bytes) -> None:
        if len(self.sent) >= self.accept:
            await asyncio.Event().wait()  # TCP window full: forever
        self.sent.append(p.decode(data, p.ServerToAgent))


def link(agent_id: str, ws: Socket, *downloads: str) -> AgentLink:
    """A welcomed agent's link whose session was asked for these downloads."""
    session = ServerSession(b"n" * 32, 0.0, 0.0)
    session.receive(p.encode(p.Hello(agent_id=agent_id, signature=b"", agent_version="t")), 0.0)
    session.accept(heartbeat_interval=30.0, reconnect_window=10.0, server_time=0.0, now=0.0,
                   silent_after=90.0)
    for job in downloads:
        session.receive(p.encode(p.Download(job=job, offset=0)), 0.0)
    session.data_to_send()  # the challenge and the welcome: not what these tests look at
    return AgentLink(ws, session, agent_id, 1)  # type: ignore[arg-type]


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[UpdateService, Path]:
    monkeypatch.setattr(updates, "DOWNLOAD_SLOTS", 1)
    monkeypatch.setattr(updates, "SEND_STALL_SECONDS", 0.3)
    monkeypatch.setattr(updates, "SEND_CHUNK", 1000)
    package = tmp_path / "package"
    package.write_bytes(b"x" * 5000)
    # Streaming needs neither the database nor the hub: the link is given.
    return UpdateService(None, tmp_path, None), package  # type: ignore[arg-type]


async def test_a_stalled_download_gives_its_slot_to_the_next_agent(service):
    svc, package = service
    stalled, healthy = Socket(accept=1), Socket()
    first = asyncio.create_task(svc._stream(link("ag-stall", stalled, "j1"), "j1", package, 0, 5000))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(svc._stream(link("ag-ok", healthy, "j2"), "j2", package, 0, 5000))
    await asyncio.wait_for(asyncio.gather(first, second), 5)  # old code: waits forever
    assert [m.offset for m in healthy.sent] == [0, 1000, 2000, 3000, 4000]
    assert len(stalled.sent) == 1


async def test_one_agent_streams_at_most_a_few_packages_at_once(service):
    svc, _ = service
    ws = Socket()
    busy = [asyncio.create_task(asyncio.sleep(60)) for _ in range(updates.MAX_DOWNLOADS_PER_AGENT)]
    for n, task in enumerate(busy):
        svc._streams[("ag-greedy", f"j{n}")] = task
    try:
        await svc._start_download(link("ag-greedy", ws, "j9"), p.Download(job="j9", offset=0))
        assert ws.sent
        assert "already downloads" in ws.sent[0].error
    finally:
        for task in busy:
            task.cancel()
