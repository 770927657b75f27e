"""The coordinator's network side: one TLS port, three websocket channels.

    /enroll  an agent registers its key with a one-time token
    /agent   an enrolled agent proves its key on a fresh challenge, then reports
    /admin   a technician's CLI, authenticated by a bearer token

The Coordinator builds the services and hands each what it needs: the AgentHub (coordinator/
hub.py) holds the live agent links; the API and web console get a Services bag. No service
holds the Coordinator.

Bad input closes only the connection that sent it, with a close code and a reason the
other side can show (shared.protocol.CloseCode); every other connection carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http
import logging
import secrets
import ssl
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from careline.coordinator import api
from careline.coordinator.agent_events import EventWriter
from careline.coordinator.datadir import DataDir, Settings
from careline.coordinator.enrollment import enroll_machine
from careline.coordinator.health_history import RETENTION as HEALTH_RETENTION
from careline.coordinator.health_history import Sampler, sample_of
from careline.coordinator.health_port import serve_health
from careline.coordinator.hub import AgentHub, AgentLink, close
from careline.coordinator.incidents import IncidentDesk
from careline.coordinator.notify.sender import Notifier
from careline.coordinator.pki import server_context
from careline.coordinator.policy.config import load_policy_data
from careline.coordinator.policy.overrides import PolicyLayers
from careline.coordinator.quotas import Gate, Overload, caps_for
from careline.coordinator.rollouts import Rollouts
from careline.coordinator.services import Services
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage import health, service
from careline.coordinator.storage.db import Database, write_isolating
from careline.coordinator.technicians import AdminSession, Technicians
from careline.coordinator.updates import UpdateService
from careline.shared import protocol as p
from careline.shared.errors import AuthError, CarelineError, PermissionDenied, ProtocolError
from careline.shared.keys import (
    cert_fingerprint,
    looks_like_agent_id,
    token_hash,
    verify_challenge,
)
from careline.shared.logs import safe_text
from careline.shared.session import (
    CommandAnswered,
    DownloadRequested,
    EventReceived,
    HeartbeatReceived,
    HelloReceived,
    MetadataRequested,
    ServerEvent,
    ServerSession,
)

log = logging.getLogger("careline.coordinator")

# TLS and upgrade, then answering the challenge (or sending the enrollment): a real agent
# needs well under a second; a stranger holding a connection open is dropped after this.
# Not less: when a dead process's agents come back to a survivor faster than it can take
# them, their handshakes wait their turn, and with 5 s a fifth of them were cut after the
# survivor had done most of the work (TLS), to be redone later.
HANDSHAKE_TIMEOUT = 10.0
# Connections the kernel holds for us before we accept them (it caps this at
# net.core.somaxconn, 4096 by default). With asyncio's 100, the thousands of agents of a
# killed process reconnecting through a proxy overflowed it: dropped SYNs, retried after
# 1, 3, 7 s, and the proxy's health check timing out on a live process.
LISTEN_BACKLOG = 4096
# Connections not yet authenticated are capped per channel and per address
# (coordinator/quotas.py); past a cap the upgrade gets 503 and a Retry-After, so a reconnect
# storm or a flood from one address sheds load instead of locking agents out.
# Agents authenticated per second, roughly: how Retry-After grows with the queue and with
# the agents turned away in the last SHED_WINDOW seconds.
DRAIN_RATE = 200
SHED_WINDOW = 10.0
MAX_RETRY_AFTER = 60
HEARTBEAT_FLUSH_SECONDS = 1.0
# Per-agent storage budget: newest events kept per agent, and how long any event is kept;
# newest diagnostics bundles kept per agent (each at most protocol.MAX_MESSAGE_BYTES / 2).
EVENTS_KEPT_PER_AGENT = 10_000
EVENT_RETENTION = dt.timedelta(days=400)
DIAGNOSTICS_KEPT_PER_AGENT = 20
PRUNE_SECONDS = 600.0
# Bounds of the window over which agents spread their first reconnect (Welcome).
# A small fleet (50 PCs: one second at DRAIN_RATE) is back within a second or two of a
# restart; a large one spreads itself over fleet / DRAIN_RATE seconds.
RECONNECT_WINDOW_MIN, RECONNECT_WINDOW_MAX = 1.0, 300.0
# How soon a revocation made through another coordinator process (scale-out) disconnects
# the agent here.
REVOCATION_CHECK_SECONDS = 2.0
# How often the event loop's lateness is measured (quotas.Overload).
LAG_SAMPLE_SECONDS = 0.1


def reconnect_window(fleet_size: int) -> float:
    """Seconds over which a fleet should spread its reconnects after a coordinator restart:
    long enough that they arrive at about DRAIN_RATE a second, the pace it authenticates
    at, instead of queueing in TLS until their handshakes time out."""
    return min(max(fleet_size / DRAIN_RATE, RECONNECT_WINDOW_MIN), RECONNECT_WINDOW_MAX)


def agents_at_stake(connected_here: int, known: int) -> int:
    """How many agents one kill of this process sends reconnecting at once, for the window
    its Welcome gives: those connected here (behind a load balancer, one process's share;
    the survivor takes them back), but at least half of those it knows, so the agents that
    came back first after a restart, when few were connected, do not all get a tiny window
    and arrive together the next time."""
    return max(connected_here, known // 2)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def peer_address(ws: ServerConnection) -> str:
    address = ws.remote_address
    return str(address[0]) if address else "?"


async def send_stream(ws: ServerConnection, request_id: int,
                      stream: AsyncGenerator[Any, None]) -> None:
    """A streaming method's partials, each as soon as the socket takes it; those that came
    while it was busy go together in one reply (`many`). One reply per answer was a fifth of
    the process's CPU in a ping to 20,000 machines. The stream is closed at once if the
    technician goes away mid-stream: its finally blocks (timers, relayed commands) run now,
    not whenever the GC gets to it."""
    waiting: list[Any] = []
    ready = asyncio.Event()

    async def produce() -> None:
        try:
            async with contextlib.aclosing(stream):
                async for partial in stream:
                    waiting.append(p.to_builtins(partial))
                    ready.set()
        finally:
            ready.set()

    producer = asyncio.create_task(produce())
    try:
        while not producer.done() or waiting:
            await ready.wait()
            ready.clear()
            batch, waiting[:] = waiting[:], []
            if len(batch) == 1:
                await ws.send(p.encode(p.Reply(id=request_id, result=batch[0], final=False)))
            elif batch:
                await ws.send(p.encode(p.Reply(id=request_id, result=batch, final=False,
                                               many=True)))
        await producer  # the method's own error, if it failed
    finally:
        if not producer.done():
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer


class Coordinator:
    def __init__(self, datadir: DataDir, settings: Settings, db: Database) -> None:
        self.datadir = datadir
        self.settings = settings
        self.db = db
        host, port = settings.listen_host_port()
        self.public_url = settings.public_url or f"wss://{host}:{port}"
        self.ca_pem = datadir.ca_file.read_text()
        self.ca_fingerprint = cert_fingerprint(self.ca_pem)
        self.heartbeat_interval = settings.heartbeat_interval
        self.offline_after = dt.timedelta(
            seconds=settings.heartbeat_interval * settings.missed_heartbeats
        )
        self.policy_layers = PolicyLayers(
            *load_policy_data(Path(settings.policy) if settings.policy else None))
        self.desk = IncidentDesk(db, self.policy_layers, self.offline_after)
        self.hub = AgentHub(db, self.offline_after)
        # agent id -> (time.time() received, its last Health): converted for storage only at
        # the flush, so the reports an agent's next one replaces cost nothing more.
        self._heartbeats: dict[str, tuple[float, p.Health]] = {}
        self.health_sampler = Sampler()  # which reports become the machines' health history
        self.gate = Gate(caps_for(settings.max_unauthenticated_per_address))
        self._shed_since, self._shed_count = 0.0, 0
        self.overload = Overload()
        self.technicians = Technicians(db)
        self.server: Server | None = None
        api.load_all()
        self.updates = UpdateService(db, datadir.path, self.hub)
        self.rollouts = Rollouts(db, self.hub, self.desk, self.updates)
        self.events = EventWriter(db, self.hub, self.updates, self.desk)
        self.notifier = Notifier(db, datadir.path, self.desk, settings)
        self.services = Services(
            db=db, datadir=datadir, settings=settings, public_url=self.public_url,
            ca_fingerprint=self.ca_fingerprint, hub=self.hub, desk=self.desk,
            policy_layers=self.policy_layers, updates=self.updates, rollouts=self.rollouts,
            notifier=self.notifier, technicians=self.technicians)

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        host, port = self.settings.listen_host_port()
        await self.hub.start()
        context = server_context(self.datadir.pki)
        context.sni_callback = self._on_client_hello  # called with or without SNI
        async with serve(
            self._route, host, port, ssl=context,
            process_request=self._check_request, compression=None,
            max_size=p.MAX_MESSAGE_BYTES, ping_interval=None,
            open_timeout=HANDSHAKE_TIMEOUT, logger=logging.getLogger("careline.websockets"),
            backlog=LISTEN_BACKLOG,
        ) as server:
            self.server = server
            health = self.settings.health_host_port()
            health_server = None if health is None else await serve_health(
                *health, serving=lambda: not stop.is_set())
            # Owned by a TaskGroup: at stop they are cancelled and awaited (a flush cut
            # short keeps its batch for the last one below).
            async with asyncio.TaskGroup() as group:
                loops = [self._flush_heartbeats_forever(), self._sweep_silent_forever(),
                         self._sweep_offline_forever(), self.rollouts.run_forever(),
                         self._prune_forever(), self.notifier.run_forever(),
                         self.events.run_forever(), self._measure_lag_forever()]
                if self.hub.relay is not None:  # other processes may share the database
                    loops.append(self._disconnect_revoked_forever())
                tasks = [group.create_task(loop) for loop in loops]
                log.info("listening on %s:%s (%s)", host, port, self.public_url)
                if ready is not None:
                    ready.set()
                await stop.wait()
                for task in tasks:
                    task.cancel()
            if health_server is not None:
                health_server.close()
            server.close(close_connections=True)
            await server.wait_closed()
        await self.updates.close()
        await self.hub.close()
        await self._flush_heartbeats()

    def _on_client_hello(self, ssl_object: ssl.SSLObject, server_name: str | None,
                         context: ssl.SSLContext) -> int | None:
        """Refuse a TLS handshake before its key exchange while overloaded (the client
        sees the connection reset and retries after its backoff)."""
        return None if self.overload.admit() else ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE

    async def _measure_lag_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_SAMPLE_SECONDS)
            lag = loop.time() - started - LAG_SAMPLE_SECONDS
            refused = self.overload.refused
            if self.overload.measure(lag):
                if self.overload.shedding:
                    log.warning("event loop %.1f s late: refusing new TLS handshakes until "
                                "it catches up", lag)
                else:
                    log.warning("caught up: refused %d TLS handshake(s) meanwhile", refused)

    async def _check_request(self, ws: ServerConnection, request: Request) -> Response | None:
        if request.path not in (p.ENROLL_PATH, p.AGENT_PATH, p.ADMIN_PATH):
            return ws.respond(http.HTTPStatus.NOT_FOUND, "no such channel\n")
        full = self.gate.check(request.path, peer_address(ws))
        if full is not None:
            return self._shed(ws, request.path, full)
        if request.path == p.ADMIN_PATH:
            authorization = request.headers.get("Authorization", "")
            if not authorization.startswith("Bearer "):
                return ws.respond(http.HTTPStatus.UNAUTHORIZED, "technician token required\n")
            # A valid token lifts the frame limit before the upgrade completes: a client
            # may send a large first request (a release upload) at once, and it must not
            # be parsed under the unauthenticated limit. A bad token keeps the small limit
            # and is refused by _serve_admin, as before.
            digest = token_hash(authorization.removeprefix("Bearer ").strip())
            with self._unauthenticated(ws, p.ADMIN_PATH):
                caller = await asyncio.wait_for(self._technician(digest), HANDSHAKE_TIMEOUT)
            if caller is not None:
                ws.protocol.max_message_size = p.MAX_ADMIN_MESSAGE_BYTES
        return None

    def _shed(self, ws: ServerConnection, channel: str, full: str) -> Response:
        """503 with a Retry-After that grows with how many were turned away lately, so a
        storm spreads itself over the time the coordinator needs to take everyone back."""
        now = time.monotonic()
        if now - self._shed_since > SHED_WINDOW:
            self._shed_since, self._shed_count = now, 0
            log.warning("turning away unauthenticated %s connections (%s cap full, from %s)",
                        channel, full, peer_address(ws))
        self._shed_count += 1
        busy = ws.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "coordinator busy\n")
        retry = 1 + (self.gate.pending(channel) + self._shed_count) // DRAIN_RATE
        busy.headers["Retry-After"] = str(min(retry, MAX_RETRY_AFTER))
        return busy

    @contextlib.contextmanager
    def _unauthenticated(self, ws: ServerConnection, channel: str) -> Iterator[None]:
        """Counts the connection against its channel's caps until the block ends."""
        address = peer_address(ws)
        self.gate.enter(channel, address)
        try:
            yield
        finally:
            self.gate.leave(channel, address)

    async def _route(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        path = ws.request.path
        try:
            if path == p.AGENT_PATH:
                await self._serve_agent(ws)
            elif path == p.ENROLL_PATH:
                with self._unauthenticated(ws, path):
                    await self._serve_enroll(ws)
            else:
                await self._serve_admin(ws, ws.request.headers)
        except ConnectionClosed:
            pass
        except ProtocolError as exc:
            await close(ws, p.CloseCode.PROTOCOL, str(exc))
        except TimeoutError:
            await close(ws, p.CloseCode.TIMEOUT, "handshake not completed in time")

    # ------------------------------------------------------------------ /enroll
    async def _serve_enroll(self, ws: ServerConnection) -> None:
        await ws.send(p.encode(p.ServerIdentity(ca_pem=self.ca_pem)))
        request = p.decode(
            await asyncio.wait_for(ws.recv(), HANDSHAKE_TIMEOUT), p.EnrollRequest
        )
        if len(request.public_key) != 32:
            raise ProtocolError("public_key must be a raw 32-byte Ed25519 key")
        if looks_like_agent_id(request.hostname):
            # Checked before the token is spent: the machine can be renamed and try again.
            raise ProtocolError(f"hostname {request.hostname!r} looks like an agent id; "
                                "rename the machine and enroll again")
        now = utcnow()
        try:
            async with self.db.transaction() as conn:
                token = await store.spend_enrollment_token(conn, token_hash(request.token), now)
                enrolled = await enroll_machine(conn, token, request, now, self.offline_after)
        except CarelineError as exc:
            await close(ws, p.CloseCode.TOKEN_REFUSED, str(exc))
            return
        agent_id = enrolled.machine_id
        if enrolled.relinked:  # a reinstall: the machine's old key is gone
            await self.hub.disconnect_revoked(agent_id)
            self.hub.keys.rekeyed(agent_id, now)
        self.hub.keys.add(agent_id, request.public_key, token.customer_id, agent_id)
        await ws.send(
            p.encode(
                p.Enrolled(
                    agent_id=agent_id, customer_id=token.customer_id,
                    heartbeat_interval=self.heartbeat_interval,
                    **self.updates.enrollment_trust(),
                )
            )
        )
        log.info("enrolled %s (%s) for customer %s", agent_id, safe_text(request.hostname),
                 token.customer_id)

    # ------------------------------------------------------------------ /agent
    async def _authenticate_agent(self, ws: ServerConnection) -> AgentLink | None:
        """The session's challenge and hello; the key check is ours (and the database's)."""
        session = ServerSession(secrets.token_bytes(32), time.time(), time.monotonic(),
                                handshake_timeout=HANDSHAKE_TIMEOUT)
        for frame in session.data_to_send():
            await ws.send(frame)
        data = await asyncio.wait_for(ws.recv(), HANDSHAKE_TIMEOUT)
        hello = next(e.hello for e in session.receive(data, time.monotonic())
                     if isinstance(e, HelloReceived))
        key = await self.hub.keys.lookup(hello.agent_id)

        async def refuse(code: int, reason: str) -> None:
            refusal = session.refuse(code, reason)
            await close(ws, refusal.code, refusal.reason)

        if key == "unknown":
            await refuse(p.CloseCode.UNAUTHENTICATED, "unknown agent: enroll it again")
            return None
        if key == "revoked":
            await refuse(p.CloseCode.REVOKED, "agent revoked by the vendor")
            return None
        try:
            verify_challenge(key.public_key, hello.signature, session.nonce, hello.agent_id)
        except AuthError as exc:
            await refuse(p.CloseCode.UNAUTHENTICATED, str(exc))
            return None
        session.accept(heartbeat_interval=self.heartbeat_interval,
                       reconnect_window=reconnect_window(
                           agents_at_stake(len(self.hub.links) + 1, len(self.hub.keys))),
                       server_time=time.time(), now=time.monotonic(),
                       silent_after=self.offline_after.total_seconds())
        link = AgentLink(ws, session, key.machine_id or hello.agent_id, key.customer_id)
        try:  # registered all or nothing: a link that fails here is forgotten at once
            await link.flush()  # the Welcome, before the link can carry any command
            await self.hub.connected(link, hello.agent_version, hello.hardware)
            await self.updates.on_agent_connected(link.agent_id)
        except BaseException:
            self.hub.forget(link)
            raise
        return link

    async def _serve_agent(self, ws: ServerConnection) -> None:
        with self._unauthenticated(ws, p.AGENT_PATH):
            link = await self._authenticate_agent(ws)
        if link is None:
            return
        quota = self.hub.quota(link.agent_id)
        try:
            async for data in ws:
                events = link.session.receive(data, time.monotonic())
                kind = "event" if events and isinstance(events[0], EventReceived) else "other"
                refused = quota.admit(kind, len(data), time.monotonic())
                if refused is not None:
                    log.warning("agent %s over quota (%d refused so far): %s",
                                link.agent_id, quota.refused, refused)
                    # Its unread flood may hide its close frame: don't wait long for it.
                    ws.close_timeout = 1.0
                    await close(ws, p.CloseCode.SLOW_DOWN, refused)
                    return
                for event in events:
                    await self._on_agent_event(link, event)
        finally:
            self.hub.forget(link)

    async def _on_agent_event(self, link: AgentLink, event: ServerEvent) -> None:
        if isinstance(event, HeartbeatReceived):
            self._heartbeats[link.agent_id] = (time.time(), event.health)
        elif isinstance(event, EventReceived):
            await self.events.put(link, event.event)  # stored, then acknowledged
        elif isinstance(event, (MetadataRequested, DownloadRequested)):
            await self.updates.handle(link, event.request)
        elif isinstance(event, CommandAnswered):
            link.answered(event.id, event.result)
        # Anything else (a second hello) the session refused already.

    async def _disconnect_revoked_forever(self) -> None:
        """Agents and technicians revoked through another coordinator process leave this
        one too."""
        while True:
            await asyncio.sleep(REVOCATION_CHECK_SECONDS)
            try:
                revoked, rekeyed = await self.hub.keys.refresh(utcnow())
                for agent_id in revoked:
                    await self.hub.disconnect_revoked(agent_id)
                for ref in rekeyed:  # a reinstall linked elsewhere: say hello again
                    await self.hub.disconnect(ref, p.CloseCode.REPLACED, "machine re-keyed; reconnect")
                await self.technicians.close_revoked()
            except Exception:
                log.exception("checking revocations failed; will retry")

    # ------------------------------------------------------------------ background work
    async def _flush_heartbeats(self) -> None:
        """One transaction a second for every connect, disconnect and heartbeat since the
        last: a reconnect storm costs a few writes, not one per agent.

        If the batch fails it is split in halves until the failing agents are alone: each
        of those loses only its own report, logged with its id, and everyone else's is
        stored. If the database itself is at fault (unreachable, locked, or nothing could
        be stored, which is all one can tell of a batch of one), the batch is put back,
        newer reports winning, and tried again."""
        hub = self.hub
        if not (self._heartbeats or hub.presence):
            return
        stops, hub.clean_stops = hub.clean_stops, {}
        hardware, hub.hardware = hub.hardware, {}
        if stops or hardware:  # before the disconnects they explain: never seen offline
            try:
                async with self.db.transaction() as conn:
                    await store.store_clean_stops(conn, stops)
                    await store.store_hardware(conn, hardware)
            except BaseException:
                hub.clean_stops = {**stops, **hub.clean_stops}
                hub.hardware = {**hardware, **hub.hardware}
                raise
        received, self._heartbeats = self._heartbeats, {}
        presence, hub.presence = hub.presence, {}
        agent_ids = sorted(received.keys() | presence.keys())
        try:
            failed = await write_isolating(agent_ids, lambda ids: self._write_reports(
                {a: received[a] for a in ids if a in received},
                {a: presence[a] for a in ids if a in presence}))
            if failed and len(failed) == len(agent_ids):  # nothing stored: blame the storage
                raise next(iter(failed.values()))
        except BaseException:  # cancelled at shutdown, or storage down: keep it
            self._heartbeats = {**received, **self._heartbeats}
            hub.presence = {**presence, **hub.presence}
            raise
        for agent_id, exc in failed.items():
            log.error("report of agent %s not stored: %s", agent_id,
                      safe_text((str(exc).splitlines() or [type(exc).__name__])[0], 300))

    async def _write_reports(self, received: dict[str, tuple[float, p.Health]],
                             presence: dict[str, tuple[bool, dt.datetime, str]]) -> None:
        # Health stays a typed Struct: stored as JSON by the engine's msgspec serializer
        # (converting 10,000 reports to dicts a second was a sixth of the process's CPU).
        batch = {agent_id: (dt.datetime.fromtimestamp(at, dt.UTC), health)
                 for agent_id, (at, health) in received.items()}
        async with self.db.transaction() as conn:
            # Before storing them: targeting compares the reported versions with the stored.
            await self.rollouts.on_heartbeats(conn, {a: h for a, (_, h) in batch.items()},
                                              utcnow())
            # Heartbeats first: a disconnect in the same batch comes after them.
            await store.store_heartbeats(conn, ((a, seen, h) for a, (seen, h) in batch.items()))
            await store.store_presence(conn, presence)
            await self.desk.on_heartbeats(conn, {a: h for a, (_, h) in batch.items()}, utcnow())
            due = self.health_sampler.due({a: seen for a, (seen, _) in batch.items()})
            await health.store_samples(conn, [(a, batch[a][0], sample_of(p.to_builtins(batch[a][1])))
                                              for a in due])
        self.health_sampler.taken((a, batch[a][0]) for a in due)

    async def _flush_heartbeats_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_FLUSH_SECONDS)
            try:
                await self._flush_heartbeats()
            except Exception:
                log.exception("storing heartbeats failed; will retry")

    async def _prune_forever(self) -> None:
        """Each agent's storage budget: its newest events and diagnostics, within retention."""
        while True:
            await asyncio.sleep(PRUNE_SECONDS)
            try:
                await self.prune()
            except Exception:
                log.exception("pruning old events failed; will retry")

    async def prune(self) -> dict[str, int]:
        async with self.db.transaction() as conn:
            removed = await store.prune_events(conn, EVENTS_KEPT_PER_AGENT,
                                               utcnow() - EVENT_RETENTION)
            removed_diagnostics = await service.prune_diagnostics(conn, DIAGNOSTICS_KEPT_PER_AGENT)
            removed_samples = await health.prune_samples(conn, utcnow() - HEALTH_RETENTION)
        if removed or removed_diagnostics or removed_samples:
            log.info("pruned %d events, %d diagnostics bundles and %d health samples",
                     removed, removed_diagnostics, removed_samples)
        return {"events": removed, "diagnostics": removed_diagnostics, "health_samples": removed_samples}

    async def _sweep_silent_forever(self) -> None:
        """Close connections that stopped talking (half-open sockets, hung agents)."""
        while True:
            await asyncio.sleep(min(self.heartbeat_interval, 5.0))
            await self.hub.close_silent()

    async def _sweep_offline_forever(self) -> None:
        """Agents silent longer than the policy allows get an agent_offline incident."""
        period = min(60.0, max(1.0, self.desk.policy.offline_incident_after.total_seconds() / 3))
        while True:
            await asyncio.sleep(period)
            try:
                await self.desk.sweep_offline(utcnow())
            except Exception:
                log.exception("offline sweep failed; will retry")

    # ------------------------------------------------------------------ /admin
    async def _technician(self, digest: str) -> api.Caller | None:
        """The technician holding this token now, or None once it is revoked."""
        async with self.db.connect() as conn:
            row = await store.technician_by_token_hash(conn, digest)
        if row is None or row.revoked_at is not None:
            return None
        return api.Caller(row.name, row.role)

    async def _serve_admin(self, ws: ServerConnection, headers: Headers) -> None:
        digest = token_hash(headers.get("Authorization", "").removeprefix("Bearer ").strip())
        with self._unauthenticated(ws, p.ADMIN_PATH):
            caller = await asyncio.wait_for(self._technician(digest), HANDSHAKE_TIMEOUT)
        if caller is None:
            await self.technicians.login_failed(peer_address(ws))
            await close(ws, p.CloseCode.UNAUTHENTICATED, "technician token unknown or revoked")
            return
        session = AdminSession(ws, digest, caller.name)
        self.technicians.sessions.add(session)
        try:
            while True:
                try:
                    data = await asyncio.wait_for(ws.recv(), self.settings.admin_idle_timeout)
                except TimeoutError:
                    await close(ws, p.CloseCode.TIMEOUT, "idle technician connection closed")
                    return
                request = p.decode(data, p.Request, limit=p.MAX_ADMIN_MESSAGE_BYTES)
                caller = await self._technician(digest)  # revoked or demoted since?
                if caller is None:
                    await self.technicians.refused(session.name, request.method, "token revoked")
                    await close(ws, p.CloseCode.REVOKED, "technician token revoked")
                    return
                await self._answer(ws, caller, request)
        finally:
            self.technicians.sessions.discard(session)

    async def _answer(self, ws: ServerConnection, caller: api.Caller, request: p.Request) -> None:
        try:
            try:
                found = api.lookup(request.method, caller)
            except PermissionDenied as exc:
                await self.technicians.refused(caller.name, request.method, str(exc))
                raise
            params = api.parse_params(found, request.params)
            ctx = api.Context(self.services, caller, utcnow())
            if found.streams:
                stream: AsyncGenerator[Any, None] = found.handler(ctx, params)  # type: ignore[assignment]
                await send_stream(ws, request.id, stream)
                result = None
            else:
                result = await found.handler(ctx, params)  # type: ignore[misc]
            result = p.to_builtins(result)
            parts = p.reply_parts(result) if isinstance(result, list) else [result]
            for part in parts[:-1]:  # a long list: slices the client joins
                await ws.send(p.encode(p.Reply(id=request.id, result=part, final=False,
                                               part=True)))
            reply = p.Reply(id=request.id, result=parts[-1], part=len(parts) > 1)
        except CarelineError as exc:
            reply = p.Reply(id=request.id, ok=False, error_code=exc.code, error=str(exc))
        except Exception:
            # The details stay in the log; the technician gets an id to quote.
            log_id = secrets.token_hex(4)
            log.exception("admin method %s failed [log id %s]", safe_text(request.method), log_id)
            reply = p.Reply(id=request.id, ok=False, error_code="internal",
                            error=f"internal error on the coordinator (log id {log_id})")
        await ws.send(p.encode(reply))


async def run_coordinator(
    datadir: DataDir, settings: Settings, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    db = Database(datadir.database_url(settings))
    try:
        await db.migrate()
        coordinator = Coordinator(datadir, settings, db)
        if not settings.web:
            await coordinator.run(stop, ready)
            return
        from careline.coordinator.web.serve import serve_web

        async with asyncio.TaskGroup() as both:  # the web console shares the process and loop
            both.create_task(coordinator.run(stop, ready))
            both.create_task(serve_web(coordinator.services, settings.web, stop))
    finally:
        with contextlib.suppress(Exception):
            await db.close()
