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

from careline.coordinator.hub import FAN_OUT_SENDS_PER_TURN, AgentHub, AgentLink, Outcome
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


def presence(agent_id: str) -> AgentPresence:
    return AgentPresence(id=agent_id, hostname=agent_id, customer_id=1, site_id=None,
                         enrolled_at=dt.datetime.now(dt.UTC), revoked_at=None, connected=False,
                         last_seen=None, last_connected_at=None, off_at=None)


async def test_fan_out_reports_each_agent_once(hub: AgentHub) -> None:
    quick, silent = welcomed("ag-quick"), welcomed("ag-silent")
    for link in (quick, silent):
        await hub.connected(link, "t", None)
    rows = [presence(a) for a in ("ag-quick", "ag-silent", "ag-never")]
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


async def connected_links(hub: AgentHub, n: int) -> list[AgentLink]:
    links = [welcomed(f"ag-{i:05d}") for i in range(n)]
    for link in links:
        await hub.connected(link, "t", None)
    return links


def sent_on(link: AgentLink) -> list[p.Message]:
    socket: Socket = link.ws  # type: ignore[assignment]
    return socket.sent


def commands_sent(links: list[AgentLink]) -> int:
    return sum(len(sent_on(link)) for link in links)


async def test_a_large_fan_out_lets_the_loop_run_between_its_sends(hub: AgentHub) -> None:
    """Sends that fit the socket buffers never wait: without a turn now and then, a ping to
    10,000 agents held the event loop until the last was sent, so no answer was read (and
    no heartbeat stored, no handshake let in by the loop-lag watcher) meanwhile."""
    links = await connected_links(hub, 3 * FAN_OUT_SENDS_PER_TURN)
    seen_while_sending: list[int] = []

    async def other_work() -> None:
        while commands_sent(links) < len(links):
            seen_while_sending.append(commands_sent(links))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(other_work())
    outcomes = hub.fan_out([presence(link.agent_id) for link in links], p.Ping(), timeout=5.0)
    answering = asyncio.create_task(anext(outcomes))
    await asyncio.wait_for(watcher, 5)
    assert any(0 < sent < len(links) for sent in seen_while_sending), seen_while_sending
    for link in links:  # every agent got the ping once
        (command,) = sent_on(link)
        assert isinstance(command, p.Command)
        answer(link, command.id)
    assert (await answering).result is not None
    got = 1 + len([o async for o in outcomes])
    assert got == len(links)


async def test_an_asker_leaving_in_the_middle_of_the_sends_leaves_nothing_waiting(
        hub: AgentHub) -> None:
    links = await connected_links(hub, 3 * FAN_OUT_SENDS_PER_TURN)
    outcomes = hub.fan_out([presence(link.agent_id) for link in links], p.Ping(), timeout=30.0)
    asking = asyncio.create_task(anext(outcomes))
    for _ in range(len(links)):  # a bounded wait for the middle of the sends
        if 0 < commands_sent(links) < len(links):
            break
        await asyncio.sleep(0)
    assert 0 < commands_sent(links) < len(links), "the asker never had a turn mid-send"
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    await outcomes.aclose()
    await asyncio.sleep(0)
    assert commands_sent(links) < len(links)  # it stopped sending when the asker left
    assert all(link.pending == {} for link in links)
    assert not any(link.session.waiting(command.id) for link in links
                   for command in sent_on(link) if isinstance(command, p.Command))
