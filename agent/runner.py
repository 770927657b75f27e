"""The agent's connection loop: authenticate, report, deliver events, answer commands.

Reconnects forever with exponential backoff and full jitter, except when the coordinator
says the identity itself is refused (revoked, unknown): then it stops with that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from careline.agent.actions import perform
from careline.agent.outbox import Outbox
from careline.agent.probes import Prober
from careline.agent.signer import load_signer
from careline.agent.state import AgentConfig, StateDir, websocket_proxy
from careline.shared import __version__
from careline.shared import protocol as p
from careline.shared.errors import AuthError, ProtocolError
from careline.shared.keys import sign_challenge
from careline.shared.session import (
    Acked,
    AgentSession,
    Challenged,
    ChunkReceived,
    CommandReceived,
    MetadataReplied,
    Welcomed,
)
from careline.shared.tls import pinned_client_context

log = logging.getLogger("careline.agent")

# The first retry after losing a connection is spread over a window (this one until a
# coordinator's Welcome names its own, sized to its fleet), then the window doubles up to
# the cap: a restarted coordinator sees its fleet trickle back rather than every agent's
# TLS handshake in the same second.
BACKOFF_FIRST_WINDOW = 10.0
BACKOFF_CAP = 60.0
MAX_FIRST_WINDOW = 600.0  # whatever a Welcome says
# The keepalive sleeps until the session's next deadline, but at most this long: a metadata
# request made meanwhile (its timeout is 30 s) is timed out at most this late. One wake-up a
# second per agent was a tenth of a 10,000-agent simulator's CPU, and an idle PC's too.
KEEPALIVE_MAX_SLEEP = 5.0


class CoordinatorSilent(TimeoutError):
    """The coordinator stopped answering keepalive pings: the connection is given up."""


class Link:
    """One connection: its websocket, and the session that speaks the protocol on it. Code
    that wants something sent tells the session, then flushes."""

    def __init__(self, ws: ClientConnection, session: AgentSession) -> None:
        self.ws = ws
        self.session = session

    async def flush(self) -> None:
        for frame in self.session.data_to_send():
            await self.ws.send(frame)


async def handshake(link: Link, challenged: Callable[[], None] = lambda: None) -> Welcomed:
    """Challenge, signed hello, welcome; TimeoutError past the session's deadline."""
    session = link.session
    while True:
        data = await asyncio.wait_for(link.ws.recv(), session.silent_at() - time.monotonic())
        events = session.receive(data, time.monotonic())
        await link.flush()
        for event in events:
            if isinstance(event, Challenged):
                challenged()
            elif isinstance(event, Welcomed):
                return event


async def keepalive(ws: ClientConnection, session: AgentSession,
                    on_expired: Callable[[list[int]], None] = lambda ids: None) -> None:
    """The session's clock: a transport ping every heartbeat interval (the coordinator does
    not talk unasked), metadata requests past their timeout (`on_expired`), and a coordinator
    that froze or vanished (power cut, SIGSTOP, dropped route) noticed once nothing, frame
    or pong, came for two intervals: CoordinatorSilent. TCP alone takes about 15 minutes."""

    def pong(waiter: asyncio.Future[float]) -> None:
        if not waiter.cancelled() and waiter.exception() is None:
            session.heard(time.monotonic())

    while True:
        now = time.monotonic()
        if session.silent(now):
            ws.transport.abort()  # a frozen peer would not answer a close either
            raise CoordinatorSilent(
                f"coordinator silent for {now - session.last_heard:.1f}s")
        if session.ping_due(now):
            session.pinged(now)
            asyncio.ensure_future(await ws.ping()).add_done_callback(pong)
        expired = session.expired(now)
        if expired:
            on_expired(expired)
        await asyncio.sleep(min(max(session.next_deadline() - time.monotonic(), 0.01),
                                KEEPALIVE_MAX_SLEEP))


async def first_of(*coros: Coroutine[Any, Any, Any]) -> None:
    """Run `coros` until the first one returns or raises; the others are cancelled and
    awaited (a TaskGroup owns them), and the first one's exception, if any, is raised."""

    class _Done(Exception):
        pass

    async def ends_all(coro: Coroutine[Any, Any, Any]) -> None:
        await coro
        raise _Done

    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(ends_all(coro))
    except BaseExceptionGroup as errors:
        _, rest = errors.split(_Done)
        if rest is not None:
            first = rest.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None


def backoff_delay(attempt: int, rng: random.Random,
                  first_window: float = BACKOFF_FIRST_WINDOW) -> float:
    """Exponential backoff with full jitter; `attempt` counts from 1."""
    first_window = min(max(first_window, 1.0), MAX_FIRST_WINDOW)
    window = first_window * 2 ** min(max(attempt, 1) - 1, 16)
    return rng.uniform(0, min(max(BACKOFF_CAP, first_window), window))


def reconnect_delay(error: BaseException | None, attempt: int, rng: random.Random,
                    first_window: float = BACKOFF_FIRST_WINDOW) -> float:
    """How long to wait before connecting again after `error` (None: a clean close).

    A busy coordinator's Retry-After, or the wait an over-quota close asks for, is
    honoured, with jitter; a refused TCP connection is retried within the first window; a
    refused identity (revoked, unknown) raises AuthError, since reconnecting cannot help.
    """
    if isinstance(error, ConnectionClosed) and error.rcvd and error.rcvd.code in p.CloseCode.FATAL:
        raise AuthError(f"coordinator refused this agent: {error.rcvd.reason}")
    if isinstance(error, ConnectionClosed) and error.rcvd and error.rcvd.code == p.CloseCode.SLOW_DOWN:
        wait = p.retry_after_of(error.rcvd.reason)
        if wait is not None:
            return wait + rng.uniform(0, wait)
    if isinstance(error, InvalidStatus):
        hint = error.response.headers.get("Retry-After", "")
        if hint.isdigit():
            return int(hint) + rng.uniform(0, int(hint))
    if isinstance(error, ConnectionRefusedError):
        # Nobody listens (the coordinator is restarting): a refused connect costs it
        # nothing, so the retry stays within the first window, sized to the fleet by its
        # last Welcome, and the agent is back within that window of it listening again.
        return backoff_delay(1, rng, first_window)
    return backoff_delay(attempt, rng, first_window)


def describe(error: BaseException | None) -> str:
    if isinstance(error, ConnectionClosed):
        return error.rcvd.reason if error.rcvd else "connection lost"
    return (str(error) or type(error).__name__) if error else "connection closed"


@dataclasses.dataclass
class Status:
    state: str = "starting"
    since: float = dataclasses.field(default_factory=time.time)
    last_report_at: float | None = None
    last_error: str = ""
    # When the connection was last lost: the state moves on to retrying within a second.
    disconnected_at: float | None = None


class AgentRunner:
    def __init__(self, state: StateDir, config: AgentConfig | None = None) -> None:
        self.state = state
        self.config = config or state.load_config()
        self.key = load_signer(state.key_file)
        self.ssl = pinned_client_context(state.ca_file.read_text())
        self.outbox = Outbox(state.outbox_file)
        self.prober = Prober(self.config)
        from careline.agent.platform import hardware_identity

        self.hardware = hardware_identity()  # said with every hello: see shared.hardware
        self.status = Status()
        self.interval = self.config.heartbeat_interval
        self._outbox_wakeup = asyncio.Event()
        self._rng = random.Random()
        self.attempt = 0  # failed connections since the last welcome
        self.first_window = BACKOFF_FIRST_WINDOW  # from the last Welcome
        self._answering: set[asyncio.Task[None]] = set()
        self._acked: list[int] = []  # acknowledged, not yet deleted from the outbox
        self.exit_code = 0  # entry.EXIT_RESTART after a self-update's switch
        self._stop: asyncio.Event | None = None

    # ------------------------------------------------------------------ status & events
    def _set_status(self, state: str | None = None, error: str | None = None) -> None:
        if state is not None and state != self.status.state:
            self.status.state, self.status.since = state, time.time()
            if state == "disconnected":
                self.status.disconnected_at = self.status.since
        if error is not None:
            self.status.last_error = error
        self.state.write_json(self.state.status_file, {
            **dataclasses.asdict(self.status), "agent_id": self.config.agent_id,
            "coordinator": self.config.server_url, "outbox_pending": len(self.outbox),
        })

    async def emit(self, kind: str, data: dict[str, Any] | None = None) -> int:
        """Put an event in the durable outbox (on its writer thread: a slow disk never stalls
        heartbeats, pings or acks); returns its seq once it is on disk. It is sent when
        connected."""
        seq = await self.outbox.put_async(kind, data)
        self._outbox_wakeup.set()
        return seq

    async def check_power_loss(self) -> None:
        """A boot since the last run without the agent's clean-stop mark means power was lost."""
        previous = self.state.read_json(self.state.runtime_file)
        boot = psutil.boot_time()
        if previous and abs(previous.get("boot_time", boot) - boot) > 2 and not previous.get(
            "clean_stop", True
        ):
            await self.emit("unclean_shutdown", {"previous_boot": previous["boot_time"], "boot_time": boot})
        await asyncio.to_thread(self.state.write_json, self.state.runtime_file,
                                {"boot_time": boot, "clean_stop": False})

    def mark_clean_stop(self) -> None:
        self.state.write_json(
            self.state.runtime_file, {"boot_time": psutil.boot_time(), "clean_stop": True}
        )

    # ------------------------------------------------------------------ main loop
    def request_restart(self, code: int) -> None:
        """Stop, and exit with `code` so the service manager starts the (new) program."""
        self.exit_code = code
        if self._stop is not None:
            self._stop.set()

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        await self.check_power_loss()
        from careline.agent.updater import Updater  # issue 6: recover interrupted installs first

        self.updater = Updater(self)
        await self.updater.start()
        try:
            while not stop.is_set():
                await asyncio.to_thread(self._set_status, "connecting")
                error: BaseException | None = None
                try:
                    await self._session(stop)
                except (ConnectionClosed, OSError, InvalidHandshake, TimeoutError,
                        ProtocolError) as exc:
                    error = exc
                if stop.is_set():
                    break
                self.attempt += 1
                try:
                    delay = reconnect_delay(error, self.attempt, self._rng, self.first_window)
                except AuthError as exc:
                    await asyncio.to_thread(self._set_status, "refused", describe(error))
                    raise exc from None
                await asyncio.to_thread(self._set_status, "disconnected", describe(error))
                log.info("disconnected (%s); reconnecting in %.1fs", describe(error), delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            await self.updater.close()
            if self.status.state != "refused":
                await asyncio.to_thread(self._set_status, "stopped")
            await asyncio.to_thread(self.mark_clean_stop)
            await asyncio.to_thread(self.outbox.close)  # waits for writes still queued

    async def _session(self, stop: asyncio.Event) -> None:
        async with connect(
            self.config.server_url + p.AGENT_PATH, ssl=self.ssl, compression=None,
            max_size=p.MAX_MESSAGE_BYTES, open_timeout=20, close_timeout=2, ping_interval=None,
            proxy=websocket_proxy(self.config.proxy),
        ) as ws:
            agent_id = self.config.agent_id
            session = AgentSession(
                agent_id, __version__, lambda nonce: sign_challenge(self.key, nonce, agent_id),
                time.monotonic(), hardware=self.hardware, interval=self.interval)
            link = Link(ws, session)
            welcome = await handshake(link)
            self.interval, self.first_window = welcome.interval, welcome.reconnect_window
            self.attempt = 0
            await asyncio.to_thread(self._set_status, "connected", "")
            await self.updater.confirm_self_update()
            if await asyncio.to_thread(self.outbox.report_losses) is not None:
                self._outbox_wakeup.set()  # what the bound folded or dropped while away
            log.info("connected to %s as %s", self.config.server_url, agent_id)
            self.updater.connected(link)
            try:
                await first_of(self._heartbeats(link), self._deliver_outbox(link),
                               self._receive(link), self._keepalive(link), stop.wait())
            finally:
                for task in self._answering:
                    task.cancel()
                await asyncio.gather(*self._answering, return_exceptions=True)
                self.updater.connection_lost()
                await asyncio.to_thread(self._forget_acked)
            if stop.is_set():  # tell the coordinator this PC is being switched off
                await ws.close(p.CloseCode.AGENT_STOPPING, "agent stopping")

    async def _heartbeats(self, link: Link) -> None:
        session = link.session
        while True:
            await asyncio.sleep(max(session.next_heartbeat_at - time.monotonic(), 0.0))
            health = await asyncio.to_thread(self.prober.check)
            session.send_heartbeat(health, time.monotonic())
            await link.flush()
            self.status.last_report_at = time.time()
            await asyncio.to_thread(self._set_status)  # a file write: off the event loop

    async def _keepalive(self, link: Link) -> None:
        await keepalive(link.ws, link.session, self.updater.fetches_expired)

    def _forget_acked(self) -> None:
        acked, self._acked = self._acked, []
        self.outbox.ack_many(acked)

    async def _deliver_outbox(self, link: Link) -> None:
        """Send everything pending, at most a window ahead of the acks: each ack (or a new
        event) wakes this up, so a backlog drains as fast as the coordinator stores it."""
        session = link.session
        while True:
            self._outbox_wakeup.clear()
            if self._acked:
                await asyncio.to_thread(self._forget_acked)
            room = session.room()
            if room > 0:
                events = await asyncio.to_thread(self.outbox.pending, session.cursor, room)
                for event in events:
                    session.send_event(event)
                await link.flush()
                if len(events) == room:
                    continue  # the window filled up: more may be waiting behind it
            await self._outbox_wakeup.wait()

    async def _receive(self, link: Link) -> None:
        async for data in link.ws:
            for event in link.session.receive(data, time.monotonic()):
                if isinstance(event, Acked):
                    self._acked.extend(event.seqs)
                    self._outbox_wakeup.set()
                elif isinstance(event, MetadataReplied):
                    self.updater.on_reply(link, event)
                elif isinstance(event, ChunkReceived):
                    self.updater.on_chunk(event.chunk)
                elif isinstance(event, CommandReceived):
                    if isinstance(event.command.action, p.UpdateAction):
                        await self.updater.on_command(link, event.command)
                    else:
                        task = asyncio.create_task(self._answer(link, event.command))
                        self._answering.add(task)
                        task.add_done_callback(self._answering.discard)

    async def _answer(self, link: Link, command: p.Command) -> None:
        link.session.answer(await perform(command, self.config, self.state))
        with contextlib.suppress(ConnectionClosed):
            await link.flush()
