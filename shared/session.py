"""The /agent conversation as two pure state machines, one per side of a connection.

Modelled on python-websockets' `Protocol` and h11's `Connection`: a session is fed the
frames its connection received (`receive(data, now)`) and hands back typed events; what it
wants sent waits in `data_to_send()`. It has no sockets, no asyncio and no clock: time comes
in as `now` (any monotonic seconds), crypto and key lookups stay with the caller. The agent,
the coordinator, the fleet simulator and the property tests all drive these same objects, so
the protocol is written once.

    AgentSession   challenge -> hello -> welcome; heartbeats and keepalive schedule; events
                   in flight ahead of acks; command answers; metadata request ids and
                   timeouts; download offsets
    ServerSession  challenge; hello shape (the caller checks the key, then accepts or
                   refuses); events to store and ack; command ids, answers and timeouts;
                   metadata requests and downloads; when the agent was last heard

One session is one connection: a reconnect is a new pair, and the agent re-sends every event
its durable outbox still holds (nothing acked is kept). A message that does not fit the state
raises ProtocolError: the caller closes with CloseCode.PROTOCOL.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from careline.shared import protocol as p
from careline.shared.errors import ProtocolError

# Events sent ahead of the coordinator's acks on one connection.
EVENT_WINDOW = 200
# Challenge to Welcome, as the agent waits for it (TLS is done by then).
AGENT_HANDSHAKE_TIMEOUT = 20.0
# A close reason is limited to 123 bytes on the wire.
MAX_CLOSE_REASON = 123


# ============================================================================= events window
class DeliveryWindow:
    """What one connection has in flight: at most `size` events sent and not yet acked.

    Acks open the window again, so a backlog of thousands drains as fast as the coordinator
    stores it, never more than `size` ahead of it.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("window size must be at least 1")
        self.size = size
        self.cursor = 0  # highest seq sent on this connection
        self.in_flight: set[int] = set()

    def room(self) -> int:
        return self.size - len(self.in_flight)

    def sent(self, seq: int) -> None:
        self.in_flight.add(seq)
        self.cursor = max(self.cursor, seq)

    def acked(self, seq: int) -> None:
        self.in_flight.discard(seq)


class PendingEvents:
    """An outbox in memory, with the durable Outbox's reading interface (`pending`,
    `ack_many`): for the simulator and the tests, which have no disk to survive."""

    def __init__(self) -> None:
        self.events: dict[int, p.Event] = {}
        self._seqs = itertools.count(1)

    def put(self, kind: str, data: dict[str, Any], at: float) -> int:
        seq = next(self._seqs)
        self.events[seq] = p.Event(seq=seq, kind=kind, at=at, data=data)
        return seq

    def pending(self, after: int = 0, limit: int = 100) -> list[p.Event]:
        return [self.events[s] for s in sorted(self.events) if s > after][:max(limit, 0)]

    def ack_many(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            self.events.pop(seq, None)

    def __len__(self) -> int:
        return len(self.events)


# ============================================================================= agent side
@dataclass(frozen=True)
class Challenged:
    """The coordinator's challenge came and the Hello is queued."""

    server_time: float


@dataclass(frozen=True)
class Welcomed:
    interval: float
    reconnect_window: float
    server_time: float


@dataclass(frozen=True)
class Acked:
    """Events the coordinator has stored: the outbox may forget them."""

    seqs: tuple[int, ...]


@dataclass(frozen=True)
class CommandReceived:
    command: p.Command


@dataclass(frozen=True)
class MetadataReplied:
    id: int
    data: bytes | None


@dataclass(frozen=True)
class ChunkReceived:
    """The next piece of a download (or, with `chunk.error`, its end)."""

    chunk: p.Chunk


AgentEvent = Challenged | Welcomed | Acked | CommandReceived | MetadataReplied | ChunkReceived
Signer = Callable[[bytes], bytes]  # the challenge's nonce -> the Hello's signature


class AgentSession:
    """The agent's side of one connection."""

    def __init__(self, agent_id: str, agent_version: str, sign: Signer, now: float, *,
                 hardware: dict[str, str] | None = None, window: int = EVENT_WINDOW,
                 interval: float = 30.0,
                 handshake_timeout: float = AGENT_HANDSHAKE_TIMEOUT) -> None:
        self.agent_id = agent_id
        self.agent_version = agent_version
        self.hardware = dict(hardware or {})
        self._sign = sign
        self.state = "challenge"  # -> "welcome" -> "open"
        self.interval = interval  # the Welcome's from then on
        self.window = DeliveryWindow(window)
        self._out: list[bytes] = []
        self._handshake_deadline = now + handshake_timeout
        self.last_heard = now
        self.next_heartbeat_at = now
        self.next_ping_at = now
        self._commands: set[int] = set()  # received, not yet answered
        self._request_ids = itertools.count(1)
        self._last_request = 0
        self._requests: dict[int, float] = {}  # metadata request id -> deadline
        self._downloads: dict[str, int] = {}  # job -> the offset its next chunk must have
        self._stale: set[str] = set()  # jobs whose earlier streams may still send chunks

    # ------------------------------------------------------------------ in
    def receive(self, data: bytes | str, now: float) -> list[AgentEvent]:
        """One frame from the coordinator; ProtocolError if it does not fit the state."""
        message = p.decode(data, p.ServerToAgent)
        self.last_heard = now
        if self.state == "challenge":
            if not isinstance(message, p.Challenge):
                raise ProtocolError(f"expected a challenge, got {type(message).__name__}")
            self._send(p.Hello(agent_id=self.agent_id, agent_version=self.agent_version,
                               signature=self._sign(message.nonce), hardware=self.hardware))
            self.state = "welcome"
            return [Challenged(message.server_time)]
        if self.state == "welcome":
            if not isinstance(message, p.Welcome):
                raise ProtocolError(f"expected a welcome, got {type(message).__name__}")
            self.state = "open"
            self.interval = message.heartbeat_interval
            self.next_heartbeat_at = now  # at once, then every interval
            self.next_ping_at = now + self.interval  # the welcome itself says it is alive
            return [Welcomed(message.heartbeat_interval, message.reconnect_window,
                             message.server_time)]
        if isinstance(message, p.Ack):
            return self._on_ack(message.seq)
        if isinstance(message, p.Command):
            if message.id in self._commands:
                raise ProtocolError(f"command id {message.id} reused before it was answered")
            self._commands.add(message.id)
            return [CommandReceived(message)]
        if isinstance(message, p.MetadataReply):
            if self._requests.pop(message.id, None) is not None:
                return [MetadataReplied(message.id, message.data)]
            if 0 < message.id <= self._last_request:
                return []  # a late reply to a request that timed out
            raise ProtocolError(f"metadata reply {message.id} to no request")
        if isinstance(message, p.Chunk):
            return self._on_chunk(message)
        raise ProtocolError(f"unexpected {type(message).__name__} after welcome")

    def _on_ack(self, seq: int) -> list[AgentEvent]:
        if seq in self.window.in_flight:
            self.window.acked(seq)
            return [Acked((seq,))]
        if seq <= self.window.cursor:
            return []  # acked before: a duplicate says nothing new
        raise ProtocolError(f"ack for event {seq}, which was never sent")

    def _on_chunk(self, chunk: p.Chunk) -> list[AgentEvent]:
        expected = self._downloads.get(chunk.job)
        if expected is None or chunk.offset != expected:
            if chunk.job in self._stale:
                return []  # from a stream this connection asked for before, now replaced
            if expected is None:
                raise ProtocolError(f"chunk of {chunk.job!r}, which was not asked for")
            raise ProtocolError(f"chunk of {chunk.job!r} at byte {chunk.offset}, "
                                f"expected byte {expected}")
        if chunk.error:
            self.end_download(chunk.job)
        else:
            self._downloads[chunk.job] = expected + len(chunk.data)
        return [ChunkReceived(chunk)]

    def heard(self, now: float) -> None:
        """The coordinator answered a transport-level ping: it is alive."""
        self.last_heard = now

    # ------------------------------------------------------------------ out
    def data_to_send(self) -> list[bytes]:
        """Frames to write, in order; each is returned once."""
        out, self._out = self._out, []
        return out

    def _send(self, message: p.Message) -> None:
        self._out.append(p.encode(message))

    def _require_open(self) -> None:
        if self.state != "open":
            raise ProtocolError("not welcomed yet")

    # ------------------------------------------------------------------ heartbeats, keepalive
    def heartbeat_due(self, now: float) -> bool:
        return self.state == "open" and now >= self.next_heartbeat_at

    def send_heartbeat(self, health: p.Health, now: float) -> None:
        self._require_open()
        self._send(p.Heartbeat(health=health))
        self.next_heartbeat_at = now + self.interval

    def ping_due(self, now: float) -> bool:
        """Time for a transport-level ping (the coordinator does not talk unasked)."""
        return self.state == "open" and now >= self.next_ping_at

    def pinged(self, now: float) -> None:
        self.next_ping_at = now + self.interval

    def silent_at(self) -> float:
        """When the coordinator counts as gone: the handshake's deadline, then two heartbeat
        intervals without a frame or a pong (TCP alone takes about 15 minutes)."""
        if self.state != "open":
            return self._handshake_deadline
        return self.last_heard + 2 * self.interval

    def silent(self, now: float) -> bool:
        return now > self.silent_at()

    def next_deadline(self) -> float:
        """The earliest time something is due: a heartbeat, a ping, a timeout."""
        times = [self.silent_at(), *self._requests.values()]
        if self.state == "open":
            times += [self.next_heartbeat_at, self.next_ping_at]
        return min(times)

    # ------------------------------------------------------------------ events
    def room(self) -> int:
        """How many more events may be sent before acks come back."""
        return self.window.room() if self.state == "open" else 0

    @property
    def cursor(self) -> int:
        """The highest seq sent on this connection: send only what lies after it."""
        return self.window.cursor

    def send_event(self, event: p.Event) -> None:
        self._require_open()
        if event.seq <= self.window.cursor:
            raise ValueError(f"event {event.seq} is not after {self.window.cursor}")
        if self.window.room() <= 0:
            raise ValueError("the delivery window is full")
        self._send(event)
        self.window.sent(event.seq)

    # ------------------------------------------------------------------ commands
    def answer(self, result: p.CommandResult) -> None:
        """Answer a command this connection received; each is answered once."""
        if result.id not in self._commands:
            raise ValueError(f"command {result.id} is not waiting for an answer here")
        self._commands.discard(result.id)
        self._send(result)

    # ------------------------------------------------------------------ metadata
    def fetch_metadata(self, name: str, now: float, timeout: float) -> int:
        """Ask for one TUF metadata file; returns the request id its reply will carry."""
        self._require_open()
        request_id = self._last_request = next(self._request_ids)
        self._requests[request_id] = now + timeout
        self._send(p.FetchMetadata(id=request_id, name=name))
        return request_id

    def expired(self, now: float) -> list[int]:
        """Metadata requests past their timeout, each reported once (a late reply is
        dropped)."""
        gone = [rid for rid, deadline in self._requests.items() if now >= deadline]
        for rid in gone:
            del self._requests[rid]
        return gone

    # ------------------------------------------------------------------ downloads
    def download(self, job: str, offset: int) -> None:
        """Ask for a job's package from `offset` on; its chunks must follow on from there."""
        self._require_open()
        if job in self._downloads:
            self._stale.add(job)  # the coordinator replaces the stream; late chunks drop
        self._downloads[job] = offset
        self._send(p.Download(job=job, offset=offset))

    def end_download(self, job: str) -> None:
        """The download is complete or given up: whatever still comes for it is dropped."""
        if self._downloads.pop(job, None) is not None:
            self._stale.add(job)


# ============================================================================= coordinator side
@dataclass(frozen=True)
class HelloReceived:
    """The caller looks the key up, checks `hello.signature` on the session's nonce, then
    calls accept() or refuse()."""

    hello: p.Hello


@dataclass(frozen=True)
class HeartbeatReceived:
    health: p.Health


@dataclass(frozen=True)
class EventReceived:
    """To store (deduplicated by seq: a reconnect re-sends what was not acked), then ack."""

    event: p.Event


@dataclass(frozen=True)
class CommandAnswered:
    id: int
    result: p.CommandResult
    action: p.Action


@dataclass(frozen=True)
class MetadataRequested:
    request: p.FetchMetadata


@dataclass(frozen=True)
class DownloadRequested:
    request: p.Download


@dataclass(frozen=True)
class Close:
    """What the caller closes the connection with."""

    code: int
    reason: str


@dataclass
class _Call:
    action: p.Action
    deadline: float


ServerEvent = (HelloReceived | HeartbeatReceived | EventReceived | CommandAnswered
               | MetadataRequested | DownloadRequested)


def close_reason(reason: str) -> str:
    return reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore")


class ServerSession:
    """The coordinator's side of one /agent connection. The Challenge is queued at once."""

    def __init__(self, nonce: bytes, server_time: float, now: float, *,
                 handshake_timeout: float = 5.0) -> None:
        self.nonce = nonce
        self.state = "hello"  # -> "verifying" -> "open"; "closed" once refused or lost
        self.hello: p.Hello | None = None
        self.opened_at = now
        self.handshake_timeout = handshake_timeout
        self.last_heard = now
        self.silent_after = 0.0  # set by accept()
        self.stray_answers = 0  # answers to commands not (or no longer) waiting
        self._out: list[bytes] = []
        self._calls: dict[int, _Call] = {}
        self._command_ids = itertools.count(1)
        self._last_seq = 0  # events come in seq order on one connection
        self._unacked: set[int] = set()
        self._metadata: set[int] = set()  # requests not yet replied to
        self._downloads: set[str] = set()
        self._send(p.Challenge(nonce=nonce, server_time=server_time))

    # ------------------------------------------------------------------ in
    def receive(self, data: bytes | str, now: float) -> list[ServerEvent]:
        """One frame from the agent; ProtocolError if it does not fit the state."""
        message = p.decode(data, p.AgentToServer)
        self.last_heard = now
        if self.state == "hello":
            if not isinstance(message, p.Hello):
                raise ProtocolError(f"expected hello, got {type(message).__name__}")
            self.hello = message
            self.state = "verifying"
            return [HelloReceived(message)]
        if self.state != "open":
            raise ProtocolError(f"unexpected {type(message).__name__} before welcome")
        if isinstance(message, p.Heartbeat):
            return [HeartbeatReceived(message.health)]
        if isinstance(message, p.Event):
            if message.seq <= self._last_seq:
                raise ProtocolError(f"event {message.seq} sent after {self._last_seq}")
            self._last_seq = message.seq
            self._unacked.add(message.seq)
            return [EventReceived(message)]
        if isinstance(message, p.CommandResult):
            call = self._calls.pop(message.id, None)
            if call is None:
                self.stray_answers += 1
                return []
            return [CommandAnswered(message.id, message, call.action)]
        if isinstance(message, p.FetchMetadata):
            self._metadata.add(message.id)
            return [MetadataRequested(message)]
        if isinstance(message, p.Download):
            self._downloads.add(message.job)
            return [DownloadRequested(message)]
        raise ProtocolError(f"unexpected {type(message).__name__} after hello")

    # ------------------------------------------------------------------ out
    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def _send(self, message: p.Message) -> None:
        self._out.append(p.encode(message))

    def _require_open(self) -> None:
        if self.state != "open":
            raise ValueError(f"session is {self.state}, not open")

    # ------------------------------------------------------------------ handshake
    def accept(self, *, heartbeat_interval: float, reconnect_window: float,
               server_time: float, now: float, silent_after: float) -> None:
        """The key and signature check out: welcome the agent. Silent for `silent_after`
        seconds from then on, it counts as gone."""
        if self.state != "verifying":
            raise ValueError(f"no hello to accept (session is {self.state})")
        self.state = "open"
        self.last_heard = now
        self.silent_after = silent_after
        self._send(p.Welcome(heartbeat_interval=heartbeat_interval, server_time=server_time,
                             reconnect_window=reconnect_window))

    def refuse(self, code: int, reason: str) -> Close:
        self.state = "closed"
        return Close(code, close_reason(reason))

    def silent(self, now: float) -> bool:
        """Not authenticated in time, or not heard from for `silent_after` seconds."""
        if self.state == "open":
            return now - self.last_heard > self.silent_after
        return now - self.opened_at > self.handshake_timeout

    # ------------------------------------------------------------------ events
    def ack(self, seqs: Iterable[int]) -> None:
        """Acknowledge stored events, each once."""
        for seq in seqs:
            if seq not in self._unacked:
                raise ValueError(f"event {seq} is not waiting for an ack here")
            self._unacked.discard(seq)
            self._send(p.Ack(seq=seq))

    # ------------------------------------------------------------------ commands
    def send_command(self, action: p.Action, now: float, timeout: float) -> int:
        """Queue a command; its answer comes as CommandAnswered, or its id from expired()
        or connection_lost(), exactly once."""
        self._require_open()
        command_id = next(self._command_ids)
        self._calls[command_id] = _Call(action, now + timeout)
        self._send(p.Command(id=command_id, action=action))
        return command_id

    def waiting(self, command_id: int) -> bool:
        return command_id in self._calls

    def cancel_command(self, command_id: int) -> bool:
        """The caller stopped waiting (its own timer, a technician gone): a later answer is
        a stray. False if the command was not waiting."""
        return self._calls.pop(command_id, None) is not None

    def expired(self, now: float) -> list[int]:
        """Commands past their timeout; a late answer is then a stray."""
        gone = [cid for cid, call in self._calls.items() if now >= call.deadline]
        for cid in gone:
            del self._calls[cid]
        return gone

    def next_deadline(self) -> float | None:
        return min((call.deadline for call in self._calls.values()), default=None)

    def connection_lost(self) -> list[int]:
        """The connection is gone: the commands that will never be answered."""
        self.state = "closed"
        lost, self._calls = list(self._calls), {}
        return lost

    # ------------------------------------------------------------------ updates
    def reply_metadata(self, request_id: int, data: bytes | None) -> None:
        if request_id not in self._metadata:
            raise ValueError(f"metadata request {request_id} is not waiting here")
        self._metadata.discard(request_id)
        self._send(p.MetadataReply(id=request_id, data=data))

    def send_chunk(self, job: str, offset: int, data: bytes = b"", error: str = "") -> None:
        """A piece of a download this connection asked for (or, with `error`, its end)."""
        if job not in self._downloads:
            raise ValueError(f"no download of {job!r} was asked for here")
        self._send(p.Chunk(job=job, offset=offset, data=data, error=error))
