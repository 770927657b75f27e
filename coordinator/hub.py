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
import contextlib
import datetime as dt
import functools
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from careline.coordinator.agent_keys import AgentKeys
from careline.coordinator.quotas import AgentQuota
from careline.coordinator.relay import CommandRelay, RelayAnswer
from careline.coordinator.storage.db import Database
from careline.coordinator.storage.fleet import AgentPresence
from careline.shared import protocol as p
from careline.shared.hardware import valid as valid_hardware
from careline.shared.session import ServerSession

# Events of one agent waiting to be stored (coordinator/agent_events.py): past this its
# connection is not read until they are.
EVENT_QUEUE = 1000
REPLACED_CLOSE_TIMEOUT = 1.0  # for the close handshake of a connection an agent replaced
# A job's command is answered at once ("accepted"; its outcome comes as durable events): the
# session forgets an answer later than this.
JOB_COMMAND_TIMEOUT = 60.0
# A fan-out gives the event loop a turn before each this many sends: a send that fits the
# socket's buffer never waits, so 10,000 of them would otherwise hold the loop for a second
# or more (answers unread, heartbeats waiting, the loop-lag watcher shedding handshakes).
FAN_OUT_SENDS_PER_TURN = 200


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def close(ws: ServerConnection, code: int, reason: str) -> None:
    # A close reason is limited to 123 bytes on the wire.
    await ws.close(code, reason.encode()[:123].decode(errors="ignore"))


@dataclass(eq=False)
class AgentLink:
    """One authenticated agent connection: its socket, the ServerSession that speaks the
    protocol on it (shared/session.py: acks, command ids, answers and timeouts, metadata and
    download bookkeeping), and the futures of the commands someone waits on.

    Session times are time.monotonic() seconds."""

    ws: ServerConnection
    session: ServerSession
    agent_id: str
    customer_id: int
    connected_at: dt.datetime = field(default_factory=utcnow)
    # Events received, waiting to be stored (agent_events.EventWriter) and acknowledged.
    events: asyncio.Queue[p.Event] = field(
        default_factory=lambda: asyncio.Queue(maxsize=EVENT_QUEUE))
    pending: dict[int, asyncio.Future[p.CommandResult]] = field(default_factory=dict)
    # One timer per link, at the session's next command deadline.
    _timer: asyncio.TimerHandle | None = field(default=None, init=False, repr=False)
    _timer_at: float = field(default=0.0, init=False, repr=False)

    def flush(self) -> Coroutine[Any, Any, None]:
        """Write what the session has queued. The frames are taken when this is called, not
        when it is awaited: called right after queueing them, each coroutine writes its own
        frames in its own order (a chunk never overtakes the one before it)."""
        return self._write(self.session.data_to_send())

    async def _write(self, frames: list[bytes]) -> None:
        for frame in frames:
            await self.ws.send(frame)

    async def send(self, action: p.Action, timeout: float) -> int:
        """Send a command nobody here waits on (a job's: its outcome comes as durable
        events); ConnectionError if the agent is gone."""
        command_id = self._queue(action, timeout)
        await self._flush_command(command_id)
        return command_id

    async def start_call(self, action: p.Action, timeout: float,
                         ) -> tuple[int, asyncio.Future[p.CommandResult]]:
        """Send a command; the future gets the agent's answer, TimeoutError once the session
        says its time is up, or ConnectionError if the agent goes away first. The caller
        calls `done_with(command_id)` when done with it."""
        command_id = self._queue(action, timeout)
        future: asyncio.Future[p.CommandResult] = asyncio.get_running_loop().create_future()
        self.pending[command_id] = future  # before sending: the answer may come at once
        await self._flush_command(command_id)
        return command_id, future

    def done_with(self, command_id: int) -> None:
        """The caller stops waiting (answered, timed out, or gone itself): a later answer is
        a stray."""
        self.pending.pop(command_id, None)
        self.session.cancel_command(command_id)

    def _queue(self, action: p.Action, timeout: float) -> int:
        if self.session.state != "open":
            raise ConnectionError("agent disconnected")
        command_id = self.session.send_command(action, time.monotonic(), timeout)
        self._arm()
        return command_id

    async def _flush_command(self, command_id: int) -> None:
        try:
            await self.flush()
        except ConnectionClosed:
            self.pending.pop(command_id, None)
            raise ConnectionError("agent disconnected") from None

    def answered(self, command_id: int, result: p.CommandResult) -> None:
        future = self.pending.get(command_id)
        if future is not None and not future.done():
            future.set_result(result)

    def _arm(self) -> None:
        """(Re)set the timer if the session's earliest command deadline moved closer."""
        deadline = self.session.next_deadline()
        if deadline is None or (self._timer is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = asyncio.get_running_loop().call_later(
            max(0.0, deadline - time.monotonic()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        for command_id in self.session.expired(time.monotonic()):
            future = self.pending.get(command_id)
            if future is not None and not future.done():
                future.set_exception(TimeoutError())
        self._arm()

    def lost(self) -> None:
        """The connection is closed: the commands still waiting will never be answered."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for command_id in self.session.connection_lost():
            future = self.pending.get(command_id)
            if future is not None and not future.done():
                future.set_exception(ConnectionError("agent disconnected"))


Failure = Literal["", "timeout", "offline", "error"]
# A fan-out's commands waiting for their answers: future -> (link, command id)
Outstanding = dict[asyncio.Future[p.CommandResult], tuple[AgentLink, int]]


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
        self.relay = None if db.is_sqlite else CommandRelay(db.driver_url, self._run_for_relay)
        # Written and emptied by the heartbeat flush (server.py), with the heartbeats:
        # agent id -> (connected, when, agent version)
        self.presence: dict[str, tuple[bool, dt.datetime, str]] = {}
        # agent id -> when it disconnected saying it was stopping cleanly (PC switched off)
        self.clean_stops: dict[str, dt.datetime] = {}
        # agent id -> the hardware identity it said hello with
        self.hardware: dict[str, dict[str, str]] = {}

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
        link.lost()
        if self.links.get(link.agent_id) is link:
            del self.links[link.agent_id]
            self.presence[link.agent_id] = (False, link.connected_at, "")
            said = link.ws.protocol.close_rcvd
            if said is not None and said.code == p.CloseCode.AGENT_STOPPING:
                self.clean_stops[link.agent_id] = utcnow()

    def quota(self, agent_id: str) -> AgentQuota:
        return self.quotas.setdefault(agent_id, AgentQuota())

    def held_elsewhere(self, agent: AgentPresence) -> bool:
        """Scale-out: connected to another coordinator process, by the database's presence."""
        return (self.relay is not None and agent.id not in self.links
                and agent.status(utcnow(), self.offline_after) == "online")

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

    async def close_silent(self) -> None:
        """Close connections that stopped talking (half-open sockets, hung agents)."""
        now = time.monotonic()
        for link in [lk for lk in self.links.values() if lk.session.silent(now)]:
            await close(link.ws, p.CloseCode.TIMEOUT, "no heartbeat; marked offline")

    # ------------------------------------------------------------------ commands
    async def send(self, agent_id: str, action: p.Action) -> bool:
        """Send a command whose outcome comes back as the agent's durable events (a job's
        part); False when the agent is not connected here."""
        link = self.links.get(agent_id)
        if link is None:
            return False
        try:
            await link.send(action, JOB_COMMAND_TIMEOUT)
        except ConnectionError:
            return False
        return True

    async def call(self, agent: AgentPresence, action: p.Action, timeout: float) -> Outcome:
        """Run one action on one agent, connected here or (scale-out) to another coordinator
        process: a fan-out to one."""
        async with contextlib.aclosing(self.fan_out([agent], action, timeout)) as outcomes:
            async for outcome in outcomes:
                return outcome
        raise AssertionError("fan_out yields one outcome per agent")

    async def _call_held_here(
        self, agent_ids: Iterable[str], action: p.Action, timeout: float,
        on_outcome: Callable[[Outcome], None], outstanding: Outstanding,
    ) -> None:
        """Send the command to each of `agent_ids` connected here, with no task per agent (at
        10,000 agents a task each was a fifth of the call's CPU): every agent's outcome
        reaches `on_outcome`, from its future's callback or at once if it is not connected
        here. The loop gets a turn every FAN_OUT_SENDS_PER_TURN sends, so answers are read
        while later agents are still being sent to. `outstanding` holds the futures not yet
        settled, also while this still sends: the caller cancels them if it stops waiting
        (each link's session times its commands out)."""

        def settle(agent_id: str, started: float, future: asyncio.Future[p.CommandResult]) -> None:
            link, command_id = outstanding.pop(future)
            link.done_with(command_id)
            error = None if future.cancelled() else future.exception()
            if future.cancelled() or isinstance(error, TimeoutError):
                on_outcome(Outcome(agent_id, failure="timeout"))
            elif error is not None:
                on_outcome(Outcome(agent_id, failure="offline"))
            else:
                on_outcome(Outcome(agent_id, future.result(),
                                   seconds=time.perf_counter() - started))

        for sent, agent_id in enumerate(agent_ids):
            if sent % FAN_OUT_SENDS_PER_TURN == 0:
                await asyncio.sleep(0)  # the relay's request, and answers already in, go first
            link = self.links.get(agent_id)
            if link is None:
                on_outcome(Outcome(agent_id, failure="offline"))
                continue
            started = time.perf_counter()
            try:
                command_id, future = await link.start_call(action, timeout)
            except ConnectionError:
                on_outcome(Outcome(agent_id, failure="offline"))
                continue
            outstanding[future] = (link, command_id)
            future.add_done_callback(functools.partial(settle, agent_id, started))

    async def _run_for_relay(self, agent_ids: Sequence[str], action: p.Action, timeout: float,
                             on_answer: Callable[[RelayAnswer], None]) -> None:
        """For another process's request: run it on those of `agent_ids` held here, until
        all of them answered or timed out. The others are not ours to answer."""
        held = [a for a in agent_ids if a in self.links]
        left = len(held)
        all_done = asyncio.get_running_loop().create_future()

        def answered(outcome: Outcome) -> None:
            nonlocal left
            on_answer(RelayAnswer(outcome.agent_id, outcome.result,
                                  "offline" if outcome.failure == "error" else outcome.failure))
            left -= 1
            if left == 0 and not all_done.done():
                all_done.set_result(None)

        if not held:
            return
        outstanding: Outstanding = {}
        try:
            await self._call_held_here(held, action, timeout, answered, outstanding)
            await all_done
        finally:
            for future in list(outstanding):
                future.cancel()

    async def fan_out(self, agents: Sequence[AgentPresence], action: p.Action,
                      timeout: float) -> AsyncGenerator[Outcome, None]:
        """Run one action on many agents; yields their outcomes as they arrive.

        Agents connected here get the command at once; agents another process holds
        (scale-out) get it through the relay in one batched request; the rest are offline."""
        answers: asyncio.Queue[Outcome] = asyncio.Queue()
        here: list[str] = []
        elsewhere: list[str] = []
        for agent in agents:
            agent_id = agent.id
            if agent_id in self.links:
                here.append(agent_id)
            elif self.held_elsewhere(agent):
                elsewhere.append(agent_id)
            else:
                answers.put_nowait(Outcome(agent_id, failure="offline"))
        relaying = (None if not elsewhere else
                    asyncio.create_task(self._relay(elsewhere, action, timeout, answers.put_nowait)))
        outstanding: Outstanding = {}
        try:
            await self._call_held_here(here, action, timeout, answers.put_nowait, outstanding)
            for _ in agents:
                yield await answers.get()
        finally:  # the asker went away: what is left is not waited for
            for future in list(outstanding):
                future.cancel()
            if relaying is not None:
                relaying.cancel()

    async def _relay(self, agent_ids: list[str], action: p.Action, timeout: float,
                     on_outcome: Callable[[Outcome], None]) -> None:
        """Agents other processes hold, through the relay: each one's outcome reaches
        `on_outcome` exactly once, an error if the relay cannot be used."""
        assert self.relay is not None
        started = time.perf_counter()
        left = set(agent_ids)
        try:
            async for answer in self.relay.fan_out(agent_ids, action, timeout):
                left.discard(answer.agent)
                on_outcome(Outcome(answer.agent, answer.result, answer.failure,
                                   seconds=time.perf_counter() - started))
        except Exception as exc:  # the relay is down (or broke): each agent left says so once
            for agent_id in left:
                on_outcome(Outcome(agent_id, failure="error", error=str(exc) or type(exc).__name__))
