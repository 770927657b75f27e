"""shared.session: each side's transitions and refusals, and an agent/coordinator pair
driven through random interleavings and dropped connections keeps its promises."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import careline.shared.protocol as p
from careline.shared.errors import MessageTooLarge, ProtocolError
from careline.shared.session import (
    Acked,
    AgentSession,
    Challenged,
    ChunkReceived,
    CommandAnswered,
    CommandReceived,
    DeliveryWindow,
    DownloadRequested,
    EventReceived,
    HeartbeatReceived,
    HelloReceived,
    MetadataReplied,
    MetadataRequested,
    PendingEvents,
    ServerSession,
    Welcomed,
)

NONCE = b"n" * 32
INTERVAL = 10.0
HEALTH = p.Health(cpu_percent=1.0, memory_total=1, memory_used=1, memory_percent=1.0, disks=[],
                  boot_time=0.0, uptime=1.0, os="test", agent_version="1", products=[])


def sign(nonce: bytes) -> bytes:
    return b"sig:" + nonce


def enc(message: p.Message) -> bytes:
    return p.encode(message)


def sent(frames: list[bytes], union: object = p.AgentToServer) -> list[object]:
    return [p.decode(f, union) for f in frames]  # type: ignore[call-overload]


def agent(window: int = 3, now: float = 0.0) -> AgentSession:
    return AgentSession("m1", "1.2.3", sign, now, hardware={"board": "b1"}, window=window)


def open_agent(window: int = 3, now: float = 0.0) -> AgentSession:
    session = agent(window, now)
    session.receive(enc(p.Challenge(nonce=NONCE, server_time=1.0)), now)
    session.receive(enc(p.Welcome(heartbeat_interval=INTERVAL, server_time=1.0,
                                  reconnect_window=42.0)), now)
    session.data_to_send()
    return session


def open_server(now: float = 0.0, silent_after: float = 30.0) -> ServerSession:
    server = ServerSession(NONCE, 1.0, now)
    server.receive(enc(p.Hello(agent_id="m1", agent_version="1", signature=sign(NONCE))), now)
    server.accept(heartbeat_interval=INTERVAL, reconnect_window=10.0, server_time=1.0, now=now,
                  silent_after=silent_after)
    server.data_to_send()
    return server


# ============================================================================= agent side
def test_agent_answers_the_challenge_with_a_signed_hello_then_is_welcomed() -> None:
    session = agent()
    assert session.data_to_send() == []
    events = session.receive(enc(p.Challenge(nonce=NONCE, server_time=5.0)), 0.0)
    assert events == [Challenged(5.0)]
    [hello] = sent(session.data_to_send())
    assert hello == p.Hello(agent_id="m1", agent_version="1.2.3", signature=sign(NONCE),
                            hardware={"board": "b1"})
    assert session.state == "welcome"
    assert session.room() == 0
    events = session.receive(enc(p.Welcome(heartbeat_interval=7.0, server_time=6.0,
                                           reconnect_window=42.0)), 1.0)
    assert events == [Welcomed(7.0, 42.0, 6.0)]
    assert session.state == "open"
    assert session.interval == 7.0
    assert session.room() == 3


@pytest.mark.parametrize("first", [
    p.Welcome(heartbeat_interval=1.0, server_time=0.0), p.Ack(seq=1),
    p.Command(id=1, action=p.Ping()),
], ids=["welcome", "ack", "command"])
def test_agent_refuses_anything_but_a_challenge_first(first: p.Message) -> None:
    with pytest.raises(ProtocolError, match="expected a challenge"):
        agent().receive(enc(first), 0.0)


def test_agent_refuses_a_second_challenge_and_a_late_welcome() -> None:
    session = agent()
    session.receive(enc(p.Challenge(nonce=NONCE, server_time=0.0)), 0.0)
    with pytest.raises(ProtocolError, match="expected a welcome"):
        session.receive(enc(p.Challenge(nonce=NONCE, server_time=0.0)), 0.0)
    opened = open_agent()
    for late in (p.Challenge(nonce=NONCE, server_time=0.0),
                 p.Welcome(heartbeat_interval=1.0, server_time=0.0)):
        with pytest.raises(ProtocolError, match="after welcome"):
            opened.receive(enc(late), 0.0)


def test_agent_refuses_bytes_that_are_no_message() -> None:
    with pytest.raises(ProtocolError):
        open_agent().receive(b"\xc1garbage", 0.0)
    with pytest.raises(ProtocolError, match="text frames"):
        open_agent().receive("text", 0.0)
    with pytest.raises(MessageTooLarge):
        open_agent().receive(b"\x00" * (p.MAX_MESSAGE_BYTES + 1), 0.0)
    with pytest.raises(ProtocolError):  # a message of the other direction
        open_agent().receive(enc(p.Heartbeat(health=HEALTH)), 0.0)


def test_agent_cannot_send_before_it_is_welcomed() -> None:
    session = agent()
    with pytest.raises(ProtocolError, match="not welcomed"):
        session.send_heartbeat(HEALTH, 0.0)
    with pytest.raises(ProtocolError, match="not welcomed"):
        session.fetch_metadata("root.json", 0.0, 5.0)
    assert not session.heartbeat_due(100.0)
    assert not session.ping_due(100.0)


def test_heartbeats_are_due_at_welcome_then_every_interval() -> None:
    session = open_agent(now=100.0)
    assert session.heartbeat_due(100.0)
    session.send_heartbeat(HEALTH, 100.0)
    assert sent(session.data_to_send()) == [p.Heartbeat(health=HEALTH)]
    assert not session.heartbeat_due(109.9)
    assert session.heartbeat_due(110.0)
    assert session.next_heartbeat_at == 110.0


def test_agent_counts_the_coordinator_silent_after_two_intervals_unheard() -> None:
    session = agent(now=0.0)
    assert not session.silent(20.0)
    assert session.silent(20.1)
    session = open_agent(now=0.0)
    assert not session.ping_due(9.9)
    assert session.ping_due(10.0)
    session.pinged(10.0)
    assert not session.ping_due(19.9)
    assert session.ping_due(20.0)
    assert not session.silent(20.0)
    assert session.silent(20.1)
    session.heard(15.0)  # a pong
    assert not session.silent(35.0)
    assert session.silent(35.1)
    session.receive(enc(p.Command(id=1, action=p.Ping())), 30.0)  # any frame counts
    assert session.silent_at() == 50.0


def test_events_go_at_most_a_window_ahead_of_acks() -> None:
    session = open_agent(window=2)
    box = PendingEvents()
    for i in range(3):
        box.put("update_step", {"n": i}, at=1.0)
    for event in box.pending(session.cursor, session.room()):
        session.send_event(event)
    assert [m.seq for m in sent(session.data_to_send())] == [1, 2]  # type: ignore[attr-defined]
    assert session.room() == 0
    with pytest.raises(ValueError, match="full"):
        session.send_event(box.events[3])
    assert session.receive(enc(p.Ack(seq=2)), 0.0) == [Acked((2,))]
    assert session.room() == 1
    with pytest.raises(ValueError, match="not after"):
        session.send_event(box.events[1])  # sent once on this connection already
    assert session.receive(enc(p.Ack(seq=2)), 0.0) == []  # a duplicate ack says nothing
    with pytest.raises(ProtocolError, match="never sent"):
        session.receive(enc(p.Ack(seq=3)), 0.0)


def test_commands_are_answered_once() -> None:
    session = open_agent()
    command = p.Command(id=4, action=p.Ping())
    assert session.receive(enc(command), 0.0) == [CommandReceived(command)]
    with pytest.raises(ProtocolError, match="reused"):
        session.receive(enc(command), 0.0)
    session.answer(p.CommandResult(id=4, ok=True))
    assert sent(session.data_to_send()) == [p.CommandResult(id=4, ok=True)]
    with pytest.raises(ValueError, match="not waiting"):
        session.answer(p.CommandResult(id=4, ok=True))
    assert session.receive(enc(command), 0.0) == [CommandReceived(command)]  # answered: may come again


def test_metadata_replies_are_matched_by_id_and_time_out() -> None:
    session = open_agent()
    first = session.fetch_metadata("timestamp.json", 0.0, 30.0)
    second = session.fetch_metadata("1.root.json", 5.0, 30.0)
    assert sent(session.data_to_send()) == [p.FetchMetadata(id=first, name="timestamp.json"),
                                            p.FetchMetadata(id=second, name="1.root.json")]
    assert first != second
    assert session.next_deadline() <= 30.0
    assert session.receive(enc(p.MetadataReply(id=second, data=b"{}")), 1.0) == [
        MetadataReplied(second, b"{}")]
    assert session.expired(29.9) == []
    assert session.expired(30.0) == [first]
    assert session.expired(100.0) == []  # reported once
    assert session.receive(enc(p.MetadataReply(id=first, data=None)), 31.0) == []  # too late
    with pytest.raises(ProtocolError, match="no request"):
        session.receive(enc(p.MetadataReply(id=99, data=None)), 31.0)


def test_chunks_must_follow_on_from_the_offset_asked() -> None:
    session = open_agent()
    with pytest.raises(ProtocolError, match="not asked for"):
        session.receive(enc(p.Chunk(job="j", offset=0, data=b"x")), 0.0)
    session.download("j", 10)
    assert sent(session.data_to_send()) == [p.Download(job="j", offset=10)]
    chunk = p.Chunk(job="j", offset=10, data=b"abc")
    assert session.receive(enc(chunk), 0.0) == [ChunkReceived(chunk)]
    with pytest.raises(ProtocolError, match="expected byte 13"):
        session.receive(enc(p.Chunk(job="j", offset=10, data=b"abc")), 0.0)


def test_a_replaced_or_ended_stream_drops_its_late_chunks() -> None:
    session = open_agent()
    session.download("j", 0)
    session.receive(enc(p.Chunk(job="j", offset=0, data=b"ab")), 0.0)
    session.download("j", 2)  # asked again: the old stream's chunks may still be coming
    assert session.receive(enc(p.Chunk(job="j", offset=5, data=b"zz")), 0.0) == []
    chunk = p.Chunk(job="j", offset=2, data=b"cd")
    assert session.receive(enc(chunk), 0.0) == [ChunkReceived(chunk)]
    session.end_download("j")
    assert session.receive(enc(p.Chunk(job="j", offset=4, data=b"ef")), 0.0) == []
    session.download("k", 0)
    failed = p.Chunk(job="k", offset=0, error="no such job")
    assert session.receive(enc(failed), 0.0) == [ChunkReceived(failed)]  # the end of it
    assert session.receive(enc(p.Chunk(job="k", offset=0, data=b"x")), 0.0) == []


# ============================================================================= server side
def test_server_challenges_then_hands_the_hello_over_for_checking() -> None:
    server = ServerSession(NONCE, 3.0, 0.0)
    assert sent(server.data_to_send(), p.ServerToAgent) == [
        p.Challenge(nonce=NONCE, server_time=3.0)]
    hello = p.Hello(agent_id="m1", agent_version="1", signature=b"s")
    assert server.receive(enc(hello), 1.0) == [HelloReceived(hello)]
    assert server.state == "verifying"
    assert server.hello == hello
    with pytest.raises(ProtocolError, match="before welcome"):
        server.receive(enc(p.Heartbeat(health=HEALTH)), 1.0)
    server.accept(heartbeat_interval=5.0, reconnect_window=20.0, server_time=4.0, now=1.0,
                  silent_after=15.0)
    assert sent(server.data_to_send(), p.ServerToAgent) == [
        p.Welcome(heartbeat_interval=5.0, server_time=4.0, reconnect_window=20.0)]
    with pytest.raises(ProtocolError, match="after hello"):
        server.receive(enc(hello), 2.0)
    with pytest.raises(ValueError, match="no hello"):
        server.accept(heartbeat_interval=5.0, reconnect_window=20.0, server_time=4.0, now=1.0,
                      silent_after=15.0)


def test_server_refuses_anything_but_a_hello_first_and_trims_refusals() -> None:
    with pytest.raises(ProtocolError, match="expected hello"):
        ServerSession(NONCE, 0.0, 0.0).receive(enc(p.Heartbeat(health=HEALTH)), 0.0)
    with pytest.raises(ProtocolError):
        ServerSession(NONCE, 0.0, 0.0).receive(enc(p.Ack(seq=1)), 0.0)  # agent-bound
    server = ServerSession(NONCE, 0.0, 0.0)
    server.receive(enc(p.Hello(agent_id="m1", agent_version="1", signature=b"s")), 0.0)
    close = server.refuse(p.CloseCode.UNAUTHENTICATED, "é" * 100)
    assert close.code == p.CloseCode.UNAUTHENTICATED
    assert len(close.reason.encode()) <= 123
    assert server.state == "closed"


def test_server_notices_a_slow_handshake_and_a_silent_agent() -> None:
    server = ServerSession(NONCE, 0.0, 0.0, handshake_timeout=5.0)
    assert not server.silent(5.0)
    assert server.silent(5.1)
    server = open_server(now=0.0, silent_after=30.0)
    server.receive(enc(p.Heartbeat(health=HEALTH)), 10.0)
    assert not server.silent(40.0)
    assert server.silent(40.1)
    assert server.last_heard == 10.0


def test_server_events_come_in_seq_order_and_are_acked_once() -> None:
    server = open_server()
    event = p.Event(seq=5, kind="update_step", at=1.0)
    assert server.receive(enc(event), 0.0) == [EventReceived(event)]
    with pytest.raises(ProtocolError, match="after 5"):
        server.receive(enc(p.Event(seq=5, kind="update_step", at=1.0)), 0.0)
    with pytest.raises(ValueError, match="not waiting"):
        server.ack([4])
    server.ack([5])
    assert sent(server.data_to_send(), p.ServerToAgent) == [p.Ack(seq=5)]
    with pytest.raises(ValueError, match="not waiting"):
        server.ack([5])
    assert server.receive(enc(p.Heartbeat(health=HEALTH)), 0.0) == [HeartbeatReceived(HEALTH)]


def test_server_commands_are_answered_or_time_out_or_are_lost_once() -> None:
    server = open_server()
    with pytest.raises(ValueError, match="not open"):
        ServerSession(NONCE, 0.0, 0.0).send_command(p.Ping(), 0.0, 5.0)
    first = server.send_command(p.Ping(), 0.0, 5.0)
    second = server.send_command(p.Diagnose(), 1.0, 5.0)
    third = server.send_command(p.Ping(), 2.0, 50.0)
    assert len({first, second, third}) == 3
    assert server.next_deadline() == 5.0
    assert [m.id for m in sent(server.data_to_send(), p.ServerToAgent)] == [  # type: ignore[attr-defined]
        first, second, third]
    answer = p.CommandResult(id=first, ok=True)
    assert server.receive(enc(answer), 3.0) == [CommandAnswered(first, answer, p.Ping())]
    assert server.expired(6.0) == [second]
    assert server.expired(7.0) == []
    assert server.receive(enc(p.CommandResult(id=second, ok=True)), 8.0) == []  # too late
    assert server.receive(enc(p.CommandResult(id=first, ok=True)), 8.0) == []  # twice
    assert server.stray_answers == 2
    assert server.waiting(third)
    fourth = server.send_command(p.Ping(), 9.0, 50.0)
    assert server.cancel_command(fourth)
    assert not server.cancel_command(fourth)
    assert server.receive(enc(p.CommandResult(id=fourth, ok=True)), 10.0) == []
    assert server.stray_answers == 3
    assert server.connection_lost() == [third]
    assert not server.waiting(third)


def test_server_serves_only_what_was_asked_for() -> None:
    server = open_server()
    request = p.FetchMetadata(id=7, name="timestamp.json")
    assert server.receive(enc(request), 0.0) == [MetadataRequested(request)]
    with pytest.raises(ValueError, match="not waiting"):
        server.reply_metadata(8, b"")
    server.reply_metadata(7, None)
    with pytest.raises(ValueError, match="not waiting"):
        server.reply_metadata(7, None)
    with pytest.raises(ValueError, match="no download"):
        server.send_chunk("j", 0, b"x")
    download = p.Download(job="j", offset=3)
    assert server.receive(enc(download), 0.0) == [DownloadRequested(download)]
    server.send_chunk("j", 3, b"x")
    assert sent(server.data_to_send(), p.ServerToAgent) == [
        p.MetadataReply(id=7, data=None), p.Chunk(job="j", offset=3, data=b"x")]


# ============================================================================= the window
@given(st.lists(st.sampled_from(["emit", "send", "ack"]), max_size=200), st.integers(1, 8))
def test_window_never_has_more_than_its_size_in_flight_and_delivers_all_once(
    steps: list[str], size: int
) -> None:
    """A model of the sender: events are sent in seq order while there is room, acks come
    back in the order sent; nothing is sent twice, nothing is skipped."""
    window = DeliveryWindow(size)
    emitted: list[int] = []
    delivered: list[int] = []
    for step in [*steps, *["send", "ack"] * (len(steps) + 1)]:
        if step == "emit":
            emitted.append(len(emitted) + 1)
        elif step == "send":
            ready = [seq for seq in emitted if seq > window.cursor][: window.room()]
            for seq in ready:
                window.sent(seq)
                delivered.append(seq)
        elif window.in_flight:
            window.acked(min(window.in_flight))
        assert 0 <= len(window.in_flight) <= size
        assert window.room() == size - len(window.in_flight)
    assert delivered == emitted  # in order, exactly once
    assert not window.in_flight


def test_window_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DeliveryWindow(0)


# ============================================================================= a pair
@dataclass
class Pair:
    """An agent with an outbox that survives connections, a coordinator that stores events
    deduplicated by seq, and one connection at a time between them: FIFO each way, frames
    lost only when the connection drops (then a new session pair)."""

    window: int
    now: float = 0.0
    outbox: PendingEvents = field(default_factory=PendingEvents)
    emitted: list[int] = field(default_factory=list)
    stored: list[int] = field(default_factory=list)  # first-time stores, in order
    deliveries: dict[int, int] = field(default_factory=dict)  # seq -> times received
    outcomes: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    connection: int = 0

    def __post_init__(self) -> None:
        self.connect()

    def connect(self) -> None:
        self.connection += 1
        self.agent = AgentSession("m1", "1", sign, self.now, window=self.window)
        self.server = ServerSession(NONCE + bytes([self.connection % 256]), 0.0, self.now)
        self.to_server: deque[bytes] = deque()
        self.to_agent: deque[bytes] = deque()
        self.received: list[int] = []  # this connection's events, in order
        self.unacked: list[int] = []  # stored, not acked yet
        self.acked_here: list[int] = []  # acks the agent took on this connection
        self.commands: deque[int] = deque()  # received by the agent, not answered
        self.flush()

    def flush(self) -> None:
        self.to_server.extend(self.agent.data_to_send())
        self.to_agent.extend(self.server.data_to_send())

    def step(self, action: str) -> None:
        getattr(self, "do_" + action)()
        self.flush()
        assert len(self.agent.window.in_flight) <= self.window

    def do_emit(self) -> None:
        self.emitted.append(self.outbox.put("update_step", {}, self.now))

    def do_pump(self) -> None:
        for event in self.outbox.pending(self.agent.cursor, self.agent.room()):
            self.agent.send_event(event)
        if self.agent.heartbeat_due(self.now):
            self.agent.send_heartbeat(HEALTH, self.now)

    def do_to_server(self) -> None:
        if not self.to_server:
            return
        for event in self.server.receive(self.to_server.popleft(), self.now):
            if isinstance(event, HelloReceived):
                assert event.hello.signature == sign(self.server.nonce)
                self.server.accept(heartbeat_interval=INTERVAL, reconnect_window=10.0,
                                   server_time=0.0, now=self.now, silent_after=3 * INTERVAL)
            elif isinstance(event, EventReceived):
                seq = event.event.seq
                self.received.append(seq)
                self.deliveries[seq] = self.deliveries.get(seq, 0) + 1
                if seq not in self.stored:  # the store's dedupe by seq
                    self.stored.append(seq)
                self.unacked.append(seq)
            elif isinstance(event, CommandAnswered):
                self.outcomes[(self.connection, event.id)].append("answered")

    def do_to_agent(self) -> None:
        if not self.to_agent:
            return
        for event in self.agent.receive(self.to_agent.popleft(), self.now):
            if isinstance(event, Acked):
                assert set(event.seqs) <= set(self.stored)  # acked only once stored
                self.outbox.ack_many(event.seqs)
                self.acked_here.extend(event.seqs)
            elif isinstance(event, CommandReceived):
                self.commands.append(event.command.id)

    def do_ack(self) -> None:
        self.server.ack(self.unacked)
        self.unacked = []

    def do_ack_again(self) -> None:
        """A duplicate ack (of one the agent already took) reaches the agent."""
        if self.acked_here:
            self.to_agent.append(enc(p.Ack(seq=self.acked_here[0])))

    def do_command(self) -> None:
        if self.server.state == "open":
            command_id = self.server.send_command(p.Ping(), self.now, 3.0)
            self.outcomes[(self.connection, command_id)] = []

    def do_answer(self) -> None:
        if self.commands:
            self.agent.answer(p.CommandResult(id=self.commands.popleft(), ok=True))

    def do_tick(self) -> None:
        self.now += 1.0
        for command_id in self.server.expired(self.now):
            self.outcomes[(self.connection, command_id)].append("expired")

    def do_drop(self) -> None:
        for command_id in self.server.connection_lost():
            self.outcomes[(self.connection, command_id)].append("lost")
        self.connect()

    def settle(self) -> None:
        """No more drops: run until everything emitted is stored and acked."""
        for _ in range(10 * len(self.emitted) + 50):
            if not (self.outbox or self.to_server or self.to_agent or self.unacked
                    or self.commands):
                break
            for action in ("pump", "to_server", "to_agent", "ack", "answer"):
                self.step(action)
        for command_id in self.server.connection_lost():
            self.outcomes[(self.connection, command_id)].append("lost")


# Frames move more often than anything else happens, so most connections get past their
# handshake before the next drop.
ACTIONS = ["emit", "emit", "pump", "pump", *["to_server", "to_agent"] * 4, "ack", "ack_again",
           "command", "command", "answer", "tick", "drop"]


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.sampled_from(ACTIONS), min_size=10, max_size=120), window=st.integers(1, 4))
def test_a_pair_delivers_every_event_and_settles_every_command(steps: list[str],
                                                                window: int) -> None:
    pair = Pair(window)
    orders: list[list[int]] = []
    for action in steps:
        if action == "drop":
            orders.append(pair.received)
        pair.step(action)
    pair.settle()
    orders.append(pair.received)

    assert not pair.outbox, "every event acknowledged"
    assert all(pair.deliveries.get(seq, 0) >= 1 for seq in pair.emitted)
    assert pair.stored == pair.emitted  # each stored once, in the order emitted
    for order in orders:  # in seq order on each connection
        assert order == sorted(set(order))
    assert all(len(outcome) == 1 for outcome in pair.outcomes.values()), pair.outcomes
