"""The agents connected to one coordinator process, and the way to reach any agent.

`AgentHub` owns what is about connections rather than about what agents report: the live
links, the agents' keys (who may connect), the presence changes waiting for the heartbeat
flush, command ids, a command to one agent or to many at once (fan-out), the relay to
agents another process holds (PostgreSQL scale-out), and closing the link of an agent that
was revoked or replaced. The services that need any of it get the hub as a constructor
argument; the websocket serving and the channel routing stay in server.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from careline.coordinator.agent_keys import AgentKeys
from careline.coordinator.quotas import AgentQuota
from careline.coordinator.relay import CommandRelay
from careline.coordinator.storage.db import Database
from careline.coordinator.storage.fleet import agent_status
from careline.shared import protocol as p
from careline.shared.hardware import valid as valid_hardware

# Events of one agent stored per transaction (one fsync), and how many may wait: an outbox
# backlog of thousands is stored in seconds, not one commit per event.
EVENT_BATCH, EVENT_QUEUE = 250, 1000
REPLACED_CLOSE_TIMEOUT = 1.0  # for the close handshake of a connection an agent replaced


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def close(ws: ServerConnection, code: int, reason: str) -> None:
    # A close reason is limited to 123 bytes on the wire.
    await ws.close(code, reason.encode()[:123].decode(errors="ignore"))


@dataclass(eq=False)
class AgentLink:
    """One authenticated agent connection and the commands waiting for its answers."""

    ws: ServerConnection
    agent_id: str
    customer_id: int
    last_heard: float = field(default_factory=time.monotonic)
    connected_at: dt.datetime = field(default_factory=utcnow)
    # Events received, waiting to be stored (in batches) and acknowledged, in order.
    events: asyncio.Queue[p.Event] = field(
        default_factory=lambda: asyncio.Queue(maxsize=EVENT_QUEUE))
    pending: dict[int, asyncio.Future[p.CommandResult]] = field(default_factory=dict)

    async def start_call(self, command_id: int, action: p.Action) -> asyncio.Future[p.CommandResult]:
        """Send a command; the future gets the agent's answer, or ConnectionError if the
        agent goes away first. The caller pops `pending[command_id]` when done with it."""
        future: asyncio.Future[p.CommandResult] = asyncio.get_running_loop().create_future()
        self.pending[command_id] = future
        try:
            await self.ws.send(p.encode(p.Command(id=command_id, action=action)))
        except ConnectionClosed:
            self.pending.pop(command_id, None)
            raise ConnectionError("agent disconnected") from None
        return future

    async def call(self, command_id: int, action: p.Action, timeout: float) -> p.CommandResult:
        future = await self.start_call(command_id, action)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self.pending.pop(command_id, None)


Failure = Literal["", "timeout", "offline", "error"]


@dataclass(frozen=True)
class Outcome:
    """One agent's answer to a live command, or why there is none."""

    agent_id: str
    result: p.CommandResult | None = None
    failure: Failure = ""  # "timeout": no answer in time; "offline": not reachable
    error: str = ""  # with "error": what went wrong on the way
    seconds: float = 0.0  # from sending the command to its answer


class AgentHub:
    def __init__(self, db: Database, offline_after: dt.timedelta) -> None:
        self.keys = AgentKeys(db)
        self.offline_after = offline_after
        self.links: dict[str, AgentLink] = {}
        self.quotas: dict[str, AgentQuota] = {}  # by agent id: a reconnect does not refill them
        # Live commands for agents held by another process (PostgreSQL scale-out only).
        self.relay = None if db.is_sqlite else CommandRelay(db.driver_url, self._call_here)
        # Written and emptied by the heartbeat flush (server.py), with the heartbeats:
        # agent id -> (connected, when, agent version)
        self.presence: dict[str, tuple[bool, dt.datetime, str]] = {}
        # agent id -> when it disconnected saying it was stopping cleanly (PC switched off)
        self.clean_stops: dict[str, dt.datetime] = {}
        # agent id -> the hardware identity it said hello with
        self.hardware: dict[str, dict[str, str]] = {}
        self._command_ids = itertools.count(1)

    async def start(self) -> None:
        await self.keys.load(utcnow())
        if self.relay is not None:
            await self.relay.start()

    async def close(self) -> None:
        if self.relay is not None:
            await self.relay.close()

    # ------------------------------------------------------------------ links
    async def connected(self, link: AgentLink, agent_version: str,
                        hardware: Mapping[str, str] | None) -> None:
        """An agent proved its key: its link replaces any older one (usually half-open,
        which is why the agent came back)."""
        self.presence[link.agent_id] = (True, link.connected_at, agent_version[:40])
        previous = self.links.get(link.agent_id)
        self.links[link.agent_id] = link
        if hardware and valid_hardware(hardware):
            self.hardware[link.agent_id] = dict(hardware)
        if previous is not None:
            # Don't hold the new one for the default 10 s waiting for a close frame that
            # will not come.
            previous.ws.close_timeout = REPLACED_CLOSE_TIMEOUT
            await close(previous.ws, p.CloseCode.REPLACED, "replaced by a newer connection")

    def forget(self, link: AgentLink) -> None:
        """The link is closed: its waiting commands fail, and unless a newer link replaced
        it, the agent is offline here (or off, if it said it was stopping)."""
        for future in link.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("agent disconnected"))
        if self.links.get(link.agent_id) is link:
            del self.links[link.agent_id]
            self.presence[link.agent_id] = (False, link.connected_at, "")
            said = link.ws.protocol.close_rcvd
            if said is not None and said.code == p.CloseCode.AGENT_STOPPING:
                self.clean_stops[link.agent_id] = utcnow()

    def quota(self, agent_id: str) -> AgentQuota:
        return self.quotas.setdefault(agent_id, AgentQuota())

    def held_elsewhere(self, agent_id: str, row: Mapping[str, Any]) -> bool:
        """Scale-out: connected to another coordinator process, by the database's presence
        (`row` has the agent's connected, last_seen and revoked_at)."""
        return (self.relay is not None and agent_id not in self.links
                and agent_status(row, utcnow(), self.offline_after) == "online")

    async def disconnect(self, agent_id: str, code: int, reason: str) -> None:
        link = self.links.get(agent_id)
        if link is not None:
            await close(link.ws, code, reason)

    async def disconnect_revoked(self, agent_id: str) -> None:
        """After a revocation is committed: the agent can no longer connect, and is gone."""
        self.keys.evict(agent_id)
        await self.disconnect(agent_id, p.CloseCode.REVOKED, "agent revoked by the vendor")

    async def relinked(self, machine_id: str, replaced_id: str, at: dt.datetime) -> None:
        """A technician linked agent `replaced_id` to the machine it reinstalls: the machine's
        old key is gone, and the agent reconnects as that machine (REPLACED: it retries)."""
        await self.disconnect_revoked(machine_id)
        self.keys.rekeyed(machine_id, at)
        self.keys.evict(replaced_id)
        await self.disconnect(replaced_id, p.CloseCode.REPLACED, f"linked to machine {machine_id}")

    async def close_silent(self, silent_for: float) -> None:
        """Close connections that stopped talking (half-open sockets, hung agents)."""
        deadline = time.monotonic() - silent_for
        for link in [lk for lk in self.links.values() if lk.last_heard < deadline]:
            await close(link.ws, p.CloseCode.TIMEOUT, "no heartbeat; marked offline")

    # ------------------------------------------------------------------ commands
    def next_command_id(self) -> int:
        return next(self._command_ids)

    async def send(self, agent_id: str, action: p.Action) -> bool:
        """Send a command whose outcome comes back as the agent's durable events (a job's
        part); False when the agent is not connected here."""
        link = self.links.get(agent_id)
        if link is None:
            return False
        try:
            await link.ws.send(p.encode(p.Command(id=self.next_command_id(), action=action)))
        except ConnectionClosed:
            return False
        return True

    def _call_here(self, agent_id: str, action: p.Action,
                   timeout: float) -> Awaitable[p.CommandResult] | None:
        """For the relay: the answer of an agent connected here, None if it is not."""
        link = self.links.get(agent_id)
        return None if link is None else link.call(self.next_command_id(), action, timeout)

    async def call(self, agent: Mapping[str, Any], action: p.Action, timeout: float) -> Outcome:
        """Run one action on one agent, connected here or (scale-out) to another coordinator
        process (`agent` is its row, for its presence)."""
        agent_id = agent["id"]
        started = time.perf_counter()
        running = self._call_here(agent_id, action, timeout)
        if running is None and self.relay is not None and self.held_elsewhere(agent_id, agent):
            running = self.relay.call(agent_id, action, timeout)
        if running is None:
            return Outcome(agent_id, failure="offline")
        try:
            result = await running
        except TimeoutError:
            return Outcome(agent_id, failure="timeout")
        except (ConnectionError, OSError):
            return Outcome(agent_id, failure="offline")
        return Outcome(agent_id, result, seconds=time.perf_counter() - started)

    async def fan_out(self, agents: Sequence[Mapping[str, Any]], action: p.Action,
                      timeout: float) -> AsyncIterator[Outcome]:
        """Run one action on many agents; yields their outcomes as they arrive.

        Commands to agents connected here are all sent first and their answers collected from
        the futures' callbacks, with no task per agent (at 10,000 agents, a task each was a
        fifth of the call's CPU); one timer turns what is left at the deadline into "timeout".
        Agents held by another process (scale-out), or by none, go through `call`.
        """
        answers: asyncio.Queue[Outcome] = asyncio.Queue()
        outstanding: dict[asyncio.Future[p.CommandResult], tuple[AgentLink, int]] = {}
        others: list[asyncio.Task[Outcome]] = []

        def settle(agent_id: str, started: float, future: asyncio.Future[p.CommandResult]) -> None:
            link, command_id = outstanding.pop(future)
            link.pending.pop(command_id, None)
            if future.cancelled():
                answers.put_nowait(Outcome(agent_id, failure="timeout"))
            elif future.exception() is not None:
                answers.put_nowait(Outcome(agent_id, failure="offline"))
            else:
                answers.put_nowait(Outcome(agent_id, future.result(),
                                           seconds=time.perf_counter() - started))

        def relayed(agent_id: str, task: asyncio.Task[Outcome]) -> None:
            if task.cancelled():
                return
            error = task.exception()
            answers.put_nowait(task.result() if error is None else
                               Outcome(agent_id, failure="error", error=str(error)))

        def expire() -> None:
            for future in list(outstanding):
                future.cancel()

        timer = asyncio.get_running_loop().call_later(timeout, expire)
        try:
            for agent in agents:
                link = self.links.get(agent["id"])
                if link is None:
                    task = asyncio.create_task(self.call(agent, action, timeout))
                    task.add_done_callback(functools.partial(relayed, agent["id"]))
                    others.append(task)
                    continue
                command_id = self.next_command_id()
                started = time.perf_counter()
                try:
                    future = await link.start_call(command_id, action)
                except ConnectionError:
                    answers.put_nowait(Outcome(agent["id"], failure="offline"))
                    continue
                outstanding[future] = (link, command_id)
                future.add_done_callback(functools.partial(settle, agent["id"], started))
            for _ in agents:
                yield await answers.get()
        finally:
            timer.cancel()
            expire()
            for task in others:
                task.cancel()
