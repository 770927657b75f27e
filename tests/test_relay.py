"""Live commands across coordinator processes (issue 19): two AgentHubs on one real
PostgreSQL, each holding its own agents (sessions over a socket stand-in that answers as the
agent would). A ping to thousands of agents held by the other process is relayed in batches,
a few NOTIFYs per thousand agents rather than two per agent, and every agent is reported
exactly once: answered, timed out, or offline."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from careline.coordinator.hub import AgentHub, AgentLink, Outcome
from careline.coordinator.storage.db import Database
from careline.coordinator.storage.fleet import AgentPresence
from careline.shared import protocol as p
from careline.shared.session import CommandAnswered, ServerSession


class AnsweringSocket:
    """The websocket of one agent: every command it is sent is answered (unless silent), as
    the agent's session would, through the link's ServerSession."""

    def __init__(self, payload: int = 0, silent: bool = False) -> None:
        self.link: AgentLink | None = None
        self.payload = payload
        self.silent = silent

    async def send(self, data: bytes) -> None:
        command = p.decode(data, p.ServerToAgent)
        if self.silent or not isinstance(command, p.Command):
            return
        result = p.CommandResult(id=command.id, ok=True, data={"blob": "x" * self.payload})
        asyncio.get_running_loop().call_soon(self._answer, result)

    def _answer(self, result: p.CommandResult) -> None:
        assert self.link is not None
        for event in self.link.session.receive(p.encode(result), time.monotonic()):
            assert isinstance(event, CommandAnswered)
            self.link.answered(event.id, event.result)


async def hold(hub: AgentHub, agent_id: str, **socket: Any) -> None:
    now = time.monotonic()
    session = ServerSession(b"n" * 32, time.time(), now)
    session.receive(p.encode(p.Hello(agent_id=agent_id, signature=b"", agent_version="t")), now)
    session.accept(heartbeat_interval=30.0, reconnect_window=10.0, server_time=time.time(),
                   now=now, silent_after=90.0)
    session.data_to_send()
    ws = AnsweringSocket(**socket)
    ws.link = AgentLink(ws, session, agent_id, 1)  # type: ignore[arg-type]
    await hub.connected(ws.link, "t", None)


def online(agent_id: str, connected: bool = True) -> AgentPresence:
    """The agent as the database shows one connected to some process (or not)."""
    now = dt.datetime.now(dt.UTC)
    return AgentPresence(id=agent_id, hostname=agent_id, customer_id=1, site_id=None,
                         enrolled_at=now, revoked_at=None, connected=connected, last_seen=now,
                         last_connected_at=now, off_at=None)


@pytest.fixture
async def two_hubs(pg_url: str) -> AsyncIterator[tuple[AgentHub, AgentHub]]:
    dbs = [Database(pg_url), Database(pg_url)]
    hubs = [AgentHub(db, dt.timedelta(seconds=90)) for db in dbs]
    for hub in hubs:
        assert hub.relay is not None
        await hub.relay.start()  # the relay alone: these tests need no tables
    yield hubs[0], hubs[1]
    for hub in hubs:
        await hub.close()
    for db in dbs:
        await db.close()


def notifies(*hubs: AgentHub) -> int:
    return sum(hub.relay.notifies_sent for hub in hubs if hub.relay is not None)


async def test_a_ping_to_thousands_held_elsewhere_goes_in_batches(
        two_hubs: tuple[AgentHub, AgentHub]) -> None:
    asking, holding = two_hubs
    n = 2000
    for i in range(n):
        await hold(holding, f"ag-{i:05d}")
    started = time.monotonic()
    outcomes = [o async for o in asking.fan_out([online(f"ag-{i:05d}") for i in range(n)],
                                                p.Ping(), timeout=5.0)]
    took = time.monotonic() - started
    assert sorted(o.agent_id for o in outcomes) == [f"ag-{i:05d}" for i in range(n)]
    assert {o.failure for o in outcomes} == {""}
    assert all(o.result is not None and o.result.ok and o.seconds > 0 for o in outcomes)
    # One NOTIFY per command and one per answer was 4,000 here, and missed a 5 s deadline
    # at 10,000 agents.
    assert notifies(asking, holding) <= 60, notifies(asking, holding)
    assert took < 5.0
    assert all(not link.pending for link in holding.links.values())


async def test_every_agent_is_reported_once_whoever_holds_it(
        two_hubs: tuple[AgentHub, AgentHub]) -> None:
    asking, holding = two_hubs
    await hold(asking, "ag-here")
    await hold(holding, "ag-there")
    await hold(holding, "ag-big", payload=200_000)  # its answer needs many NOTIFY pieces
    await hold(holding, "ag-silent", silent=True)
    rows = [online(a) for a in ("ag-here", "ag-there", "ag-big", "ag-silent", "ag-nowhere")]
    rows.append(online("ag-offline", connected=False))
    outcomes: dict[str, Outcome] = {}
    async for outcome in asking.fan_out(rows, p.Ping(), timeout=0.5):
        assert outcome.agent_id not in outcomes
        outcomes[outcome.agent_id] = outcome
    assert set(outcomes) == {r.id for r in rows}
    for agent_id in ("ag-here", "ag-there", "ag-big"):
        result = outcomes[agent_id].result
        assert result is not None, agent_id
        assert result.ok, agent_id
    big = outcomes["ag-big"].result
    assert big is not None
    assert len(big.data["blob"]) == 200_000
    # Silent where it is held, held by no process after all, or offline by the database.
    assert outcomes["ag-silent"].failure == "timeout"
    assert outcomes["ag-nowhere"].failure == "timeout"
    assert outcomes["ag-offline"].failure == "offline"


async def test_one_call_to_an_agent_held_elsewhere(two_hubs: tuple[AgentHub, AgentHub]) -> None:
    asking, holding = two_hubs
    await hold(holding, "ag-one")
    outcome = await asking.call(online("ag-one"), p.Ping(), timeout=2.0)
    assert outcome.result is not None
    assert outcome.result.ok
    gone = await asking.call(online("ag-gone"), p.Ping(), timeout=0.3)
    assert gone.failure == "timeout"


async def test_a_relay_that_cannot_reach_postgresql_reports_each_agent_once(
        two_hubs: tuple[AgentHub, AgentHub]) -> None:
    asking, holding = two_hubs
    await hold(asking, "ag-here")
    await hold(holding, "ag-there")
    assert asking.relay is not None
    await asking.relay.close()  # its listening connection is gone
    outcomes = {o.agent_id: o async for o in asking.fan_out(
        [online("ag-here"), online("ag-there"), online("ag-other")], p.Ping(), timeout=1.0)}
    assert set(outcomes) == {"ag-here", "ag-there", "ag-other"}
    assert outcomes["ag-here"].result is not None  # held here: no relay needed
    assert outcomes["ag-there"].failure == "error"
    assert "PostgreSQL" in outcomes["ag-there"].error
    assert outcomes["ag-other"].failure == "error"
