"""The coordinator's AgentLink and AgentHub over a real ServerSession (issue 19): command ids,
answers and timeouts come from the session, one timer per link; a late answer is a stray;
a lost connection fails what waits; a fan-out reports every agent once. In process, with a
socket stand-in that records frames (the websocket's I/O is all it replaces)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from careline.coordinator.hub import AgentHub, AgentLink, Outcome
from careline.coordinator.storage.db import Database
from careline.coordinator.storage.fleet import AgentPresence
from careline.shared import protocol as p
from careline.shared.session import CommandAnswered, ServerSession


class Socket:
    def __init__(self) -> None:
        self.sent: list[p.Message] = []

    async def send(self, data: bytes) -> None:
        self.sent.append(p.decode(data, p.ServerToAgent))


def welcomed(agent_id: str) -> AgentLink:
    now = time.monotonic()
    session = ServerSession(b"n" * 32, time.time(), now)
    session.receive(p.encode(p.Hello(agent_id=agent_id, signature=b"", agent_version="t")), now)
    session.accept(heartbeat_interval=30.0, reconnect_window=10.0, server_time=time.time(),
                   now=now, silent_after=90.0)
    session.data_to_send()  # the challenge and the welcome
    return AgentLink(Socket(), session, agent_id, 1)  # type: ignore[arg-type]


async def call(link: AgentLink, action: p.Action,
               timeout: float) -> p.CommandResult:  # noqa: ASYNC109 -- the session times it out
    """One command and its answer, as AgentHub's fan-out uses a link."""
    command_id, future = await link.start_call(action, timeout)
    try:
        return await future
    finally:
        link.done_with(command_id)


def answer(link: AgentLink, command_id: int) -> None:
    """The agent's answer, through the session as the server feeds it."""
    result = p.CommandResult(id=command_id, ok=True, data={"pong": True})
    for event in link.session.receive(p.encode(result), time.monotonic()):
        assert isinstance(event, CommandAnswered)
        link.answered(event.id, event.result)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[AgentHub]:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")  # never opened: one process, no relay
    yield AgentHub(db, dt.timedelta(seconds=90))
    await db.close()


async def test_an_answer_resolves_the_call_with_the_sessions_command_id() -> None:
    link = welcomed("ag-one")
    calling = asyncio.create_task(call(link, p.Ping(), timeout=5.0))
    await asyncio.sleep(0)
    (command,) = link.ws.sent  # type: ignore[attr-defined]
    assert isinstance(command, p.Command)
    assert isinstance(command.action, p.Ping)
    answer(link, command.id)
    result = await asyncio.wait_for(calling, 1)
    assert result.ok
    assert result.data == {"pong": True}
    assert link.pending == {}
    assert not link.session.waiting(command.id)


async def test_the_session_times_a_call_out_and_a_late_answer_is_a_stray() -> None:
    link = welcomed("ag-slow")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(call(link, p.Ping(), timeout=0.2), 2)
    assert 0.15 <= time.monotonic() - started < 1.0
    (command,) = link.ws.sent  # type: ignore[attr-defined]
    assert link.pending == {}
    assert not link.session.waiting(command.id)
    answer(link, command.id)  # too late: nothing waits, nothing breaks
    assert link.session.stray_answers == 1


async def test_a_lost_connection_fails_every_waiting_call() -> None:
    link = welcomed("ag-gone")
    calls = [asyncio.create_task(call(link, p.Ping(), timeout=30.0)) for _ in range(3)]
    await asyncio.sleep(0)
    link.lost()
    for calling in calls:
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(calling, 1)
    with pytest.raises(ConnectionError):  # and nothing more is sent on it
        await call(link, p.Ping(), timeout=1.0)


async def test_fan_out_reports_each_agent_once(hub: AgentHub) -> None:
    quick, silent = welcomed("ag-quick"), welcomed("ag-silent")
    for link in (quick, silent):
        await hub.connected(link, "t", None)
    rows = [AgentPresence(id=a, hostname=a, customer_id=1, site_id=None,
                          enrolled_at=dt.datetime.now(dt.UTC), revoked_at=None, connected=False,
                          last_seen=None, last_connected_at=None, off_at=None)
            for a in ("ag-quick", "ag-silent", "ag-never")]
    outcomes: list[Outcome] = []
    async for outcome in hub.fan_out(rows, p.Ping(), timeout=0.3):
        if outcome.agent_id == "ag-never":  # not connected here, no relay: offline at once
            (command,) = quick.ws.sent  # type: ignore[attr-defined]
            answer(quick, command.id)
        outcomes.append(outcome)
    by_agent = {o.agent_id: o for o in outcomes}
    assert len(outcomes) == 3
    assert set(by_agent) == {"ag-quick", "ag-silent", "ag-never"}
    assert by_agent["ag-never"].failure == "offline"
    assert by_agent["ag-silent"].failure == "timeout"
    quick_result = by_agent["ag-quick"].result
    assert quick_result is not None
    assert quick_result.ok
    assert by_agent["ag-quick"].seconds > 0
    assert quick.pending == {}
    assert silent.pending == {}
