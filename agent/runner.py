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
from collections.abc import Coroutine
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
from careline.shared.session import DeliveryWindow
from careline.shared.tls import pinned_client_context

log = logging.getLogger("careline.agent")

# The first retry after losing a connection is spread over a window (this one until a
# coordinator's Welcome names its own, sized to its fleet), then the window doubles up to
# the cap: a restarted coordinator sees its fleet trickle back rather than every agent's
# TLS handshake in the same second.
BACKOFF_FIRST_WINDOW = 10.0
BACKOFF_CAP = 60.0
MAX_FIRST_WINDOW = 600.0  # whatever a Welcome says
# Events sent ahead of the coordinator's acks on one connection.
OUTBOX_WINDOW = 200


class CoordinatorSilent(TimeoutError):
    """The coordinator stopped answering keepalive pings: the connection is given up."""


async def keepalive(ws: ClientConnection, interval: float) -> None:
    """Notice a coordinator that froze or vanished (power cut, SIGSTOP, dropped route)
    within two heartbeat intervals: a ping every interval, unanswered for one more raises
    CoordinatorSilent. TCP alone takes about 15 minutes to give up."""
    while True:
        await asyncio.sleep(interval)
        try:
            async with asyncio.timeout(interval):
                await (await ws.ping())
        except TimeoutError:
            ws.transport.abort()  # a frozen peer would not answer a close either
            raise CoordinatorSilent(
                f"coordinator silent for {interval:g}s (no pong); reconnecting") from None


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
    honoured, with jitter; a refused identity (revoked,
    unknown) raises AuthError, since reconnecting cannot help.
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
        self._window = DeliveryWindow(OUTBOX_WINDOW)  # this connection's events in flight
        self._acked: list[int] = []  # acknowledged, not yet deleted from the outbox
        self.exit_code = 0  # entry.EXIT_RESTART after a self-update's switch
        self._stop: asyncio.Event | None = None

    # ------------------------------------------------------------------ status & events
    def _set_status(self, state: str | None = None, error: str | None = None) -> None:
        if state is not None and state != self.status.state:
            self.status.state, self.status.since = state, time.time()
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
                log.info("reconnecting in %.1fs", delay)
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
            challenge = p.decode(await asyncio.wait_for(ws.recv(), 20), p.Challenge)
            await ws.send(p.encode(p.Hello(
                agent_id=self.config.agent_id, agent_version=__version__,
                signature=sign_challenge(self.key, challenge.nonce, self.config.agent_id),
                hardware=self.hardware,
            )))
            welcome = p.decode(await asyncio.wait_for(ws.recv(), 20), p.Welcome)
            self.interval = welcome.heartbeat_interval
            self.first_window = welcome.reconnect_window
            self.attempt = 0
            await asyncio.to_thread(self._set_status, "connected", "")
            await self.updater.confirm_self_update()
            if await asyncio.to_thread(self.outbox.report_losses) is not None:
                self._outbox_wakeup.set()  # what the bound folded or dropped while away
            log.info("connected to %s as %s", self.config.server_url, self.config.agent_id)
            self._window = DeliveryWindow(OUTBOX_WINDOW)
            try:
                await first_of(self._heartbeats(ws), self._deliver_outbox(ws, self._window),
                               self._receive(ws), self._keepalive(ws), stop.wait())
            finally:
                for task in self._answering:
                    task.cancel()
                await asyncio.gather(*self._answering, return_exceptions=True)
                self.updater.connection_lost()
                await asyncio.to_thread(self._forget_acked)
            if stop.is_set():  # tell the coordinator this PC is being switched off
                await ws.close(p.CloseCode.AGENT_STOPPING, "agent stopping")

    async def _heartbeats(self, ws: ClientConnection) -> None:
        while True:
            health = await asyncio.to_thread(self.prober.check)
            await ws.send(p.encode(p.Heartbeat(health=health)))
            self.status.last_report_at = time.time()
            await asyncio.to_thread(self._set_status)  # a file write: off the event loop
            await asyncio.sleep(self.interval)

    async def _keepalive(self, ws: ClientConnection) -> None:
        await keepalive(ws, self.interval)

    def _forget_acked(self) -> None:
        acked, self._acked = self._acked, []
        self.outbox.ack_many(acked)

    async def _deliver_outbox(self, ws: ClientConnection, window: DeliveryWindow) -> None:
        """Send everything pending, at most a window ahead of the acks: each ack (or a new
        event) wakes this up, so a backlog drains as fast as the coordinator stores it."""
        while True:
            self._outbox_wakeup.clear()
            if self._acked:
                await asyncio.to_thread(self._forget_acked)
            room = window.room()
            if room > 0:
                events = await asyncio.to_thread(self.outbox.pending, window.cursor, room)
                for event in events:
                    await ws.send(p.encode(event))
                    window.sent(event.seq)
                if len(events) == room:
                    continue  # the window filled up: more may be waiting behind it
            await self._outbox_wakeup.wait()

    async def _receive(self, ws: ClientConnection) -> None:
        async for data in ws:
            message = p.decode(data, p.ServerToAgent)
            if isinstance(message, p.Ack):
                self._window.acked(message.seq)
                self._acked.append(message.seq)
                self._outbox_wakeup.set()
            elif isinstance(message, (p.MetadataReply, p.Chunk)) or (
                isinstance(message, p.Command) and isinstance(message.action, p.UpdateAction)
            ):
                await self.updater.receive(ws, message)
            elif isinstance(message, p.Command):
                task = asyncio.create_task(self._answer(ws, message))
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)
            else:
                raise ProtocolError(f"unexpected {type(message).__name__}")

    async def _answer(self, ws: ClientConnection, command: p.Command) -> None:
        result = await perform(command, self.config, self.state)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(p.encode(result))
