"""A download whose agent stops reading frees its slot; one agent cannot take many slots
(issue 12, item 8). The coordinator's real UpdateService, with sockets that never drain."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import Any

import pytest

from careline.coordinator import updates
from careline.coordinator.updates import UpdateService
from careline.shared import protocol as p


class Socket:
    """Takes `accept` messages, then blocks like a peer that stopped reading."""

    def __init__(self, accept: int = 10**9) -> None:
        self.sent: list[Any] = []
        self.accept = accept

    async def send(self, data: bytes) -> None:
        if len(self.sent) >= self.accept:
            await asyncio.Event().wait()  # TCP window full: forever
        self.sent.append(p.decode(data, p.ServerToAgent))


def link(agent_id: str, ws: Socket) -> Any:
    return types.SimpleNamespace(agent_id=agent_id, ws=ws)


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
    first = asyncio.create_task(svc._stream(link("ag-stall", stalled), "j1", package, 0, 5000))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(svc._stream(link("ag-ok", healthy), "j2", package, 0, 5000))
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
        await svc._start_download(link("ag-greedy", ws), p.Download(job="j9", offset=0))
        assert ws.sent and "already downloads" in ws.sent[0].error
    finally:
        for task in busy:
            task.cancel()
