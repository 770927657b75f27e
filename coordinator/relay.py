"""Live commands between coordinator processes (scale-out on PostgreSQL).

Each process holds the websockets of the agents connected to it. A technician's live command
(ping, diagnose, restart) for agents held by other processes travels over PostgreSQL
LISTEN/NOTIFY on one channel, in batches: the request names many agents at once and goes to
every process; each holder runs it on the agents it holds and sends their answers back to
the asking process every `LINGER_SECONDS`, a batch per NOTIFY or, past NOTIFY's 8,000-byte
payload, cut into pieces (a diagnostics bundle is up to 512 KB). A ping to 10,000 agents
held elsewhere is a few hundred NOTIFYs, not 20,000. One dedicated connection per process
listens and sends. SQLite means one process, and no relay.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, Literal

import msgspec

from careline.shared import protocol as p

log = logging.getLogger("careline.coordinator.relay")

CHANNEL = "careline_live"
PAYLOAD_CHARS = 7000  # of JSON text per NOTIFY, under PostgreSQL's 8,000-byte limit
# Added to the asker's wait: the two hops through PostgreSQL.
RELAY_MARGIN = 2.0
# How long a holder gathers answers before sending them back as one batch.
LINGER_SECONDS = 0.1
# How often a lost listening connection (a PostgreSQL restart) is tried again.
RECONNECT_SECONDS = 2.0

Failure = Literal["", "timeout", "offline"]


class RelayRequest(msgspec.Struct, tag="request"):
    origin: str
    req: int
    agents: list[str]
    action: p.Action
    timeout: float


class RelayAnswer(msgspec.Struct):
    """One agent's outcome at its holder: a CommandResult, or why there is none."""

    agent: str
    result: p.CommandResult | None = None
    failure: Failure = ""


class RelayPiece(msgspec.Struct, tag="piece"):
    to: str
    req: int
    batch: str  # unique per holder and batch: pieces of two batches may interleave
    index: int
    count: int
    text: str  # a slice of the base64 of an encoded list[RelayAnswer]


RelayMessage = RelayRequest | RelayPiece
# Runs a command on those of `agents` held by this process, passing each answer on as it
# comes; returns once all of them are answered (or timed out).
RunHere = Callable[[Sequence[str], p.Action, float, Callable[[RelayAnswer], None]],
                   Awaitable[None]]


class _Outgoing:
    """A holder's answers to one asker's request, waiting to be sent back."""

    def __init__(self) -> None:
        self.answers: list[RelayAnswer] = []
        self.running: set[asyncio.Future[None]] = set()

    def add(self, answer: RelayAnswer) -> None:
        self.answers.append(answer)

    def finished(self, running: asyncio.Future[None]) -> None:
        self.running.discard(running)
        if not running.cancelled() and running.exception() is not None:
            log.warning("relayed command failed here: %s", running.exception())


class CommandRelay:
    def __init__(self, dsn: str, run_here: RunHere) -> None:
        self.dsn = dsn
        self.run_here = run_here
        self.id = secrets.token_hex(8)
        self.notifies_sent = 0
        self._conn: Any = None  # asyncpg.Connection
        self._send_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._batches = itertools.count(1)
        self._waiting: dict[int, asyncio.Queue[RelayAnswer]] = {}
        self._pieces: dict[tuple[int, str], list[str]] = {}  # (req, batch) -> pieces so far
        self._outgoing: dict[tuple[str, int], _Outgoing] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._connect()
        self._spawn(self._keep_connected())

    async def _connect(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        await conn.add_listener(CHANNEL, self._on_notify)
        self._conn = conn

    async def _keep_connected(self) -> None:
        while True:
            await asyncio.sleep(RECONNECT_SECONDS)
            if self._conn is None or self._conn.is_closed():
                try:
                    await self._connect()
                    log.info("relay listening again")
                except Exception as exc:  # asyncpg's errors are not all OSError
                    log.warning("relay connection to PostgreSQL failed: %s", exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ the asking side
    async def fan_out(self, agent_ids: Sequence[str], action: p.Action,
                      timeout: float) -> AsyncGenerator[RelayAnswer, None]:  # noqa: ASYNC109 -- sent to the holders, which enforce it
        """Run `action` on agents other processes hold; yields each one's answer as it
        comes, then "timeout" for those no holder answered in time. ConnectionError, before
        anything is yielded, if the request cannot be sent."""
        req = next(self._ids)
        answers: asyncio.Queue[RelayAnswer] = asyncio.Queue()
        self._waiting[req] = answers
        try:
            try:
                # JSON: each id in quotes, with a comma
                for ids in p.slices_by_size(agent_ids, PAYLOAD_CHARS - 500, lambda a: len(a) + 3):
                    await self._notify(RelayRequest(origin=self.id, req=req, agents=ids,
                                                    action=action, timeout=timeout))
            except Exception as exc:  # the listening connection is down
                raise ConnectionError(f"cannot reach other coordinator processes: {exc}") from exc
            left = set(agent_ids)
            deadline = time.monotonic() + timeout + RELAY_MARGIN
            while left:
                try:
                    answer = await asyncio.wait_for(answers.get(), deadline - time.monotonic())
                except TimeoutError:
                    break
                if answer.agent in left:  # a second holder's answer (a moving agent) is not
                    left.discard(answer.agent)
                    yield answer
            for agent_id in left:
                yield RelayAnswer(agent_id, failure="timeout")
        finally:
            del self._waiting[req]
            for key in [key for key in self._pieces if key[0] == req]:  # a holder cut short
                del self._pieces[key]

    def _take_piece(self, piece: RelayPiece) -> None:
        answers = self._waiting.get(piece.req)
        if answers is None:  # the asker stopped waiting
            return
        key = (piece.req, piece.batch)
        pieces = self._pieces.setdefault(key, [])
        if piece.index != len(pieces):  # NOTIFYs from one session arrive in order
            del self._pieces[key]
            log.warning("relay batch %s arrived out of order; its agents time out", piece.batch)
            return
        pieces.append(piece.text)
        if len(pieces) == piece.count:
            del self._pieces[key]
            data = base64.b64decode("".join(pieces))
            for answer in msgspec.msgpack.decode(data, type=list[RelayAnswer]):
                answers.put_nowait(answer)

    # ------------------------------------------------------------------ the holding side
    def _run_for(self, request: RelayRequest) -> None:
        """Run the request on the agents held here. One asker's request comes in several
        NOTIFYs (slices of its agents); their answers go back together."""
        key = (request.origin, request.req)
        out = self._outgoing.get(key)
        if out is None:
            out = self._outgoing[key] = _Outgoing()
            self._spawn(self._send_back(key, out))
        running = asyncio.ensure_future(
            self.run_here(request.agents, request.action, request.timeout, out.add))
        out.running.add(running)
        running.add_done_callback(out.finished)

    async def _send_back(self, key: tuple[str, int], out: _Outgoing) -> None:
        """Every LINGER_SECONDS (or once all are answered), what was answered since."""
        to, req = key
        try:
            while True:
                if out.running:
                    await asyncio.wait(set(out.running), timeout=LINGER_SECONDS)
                batch, out.answers = out.answers, []
                if batch:
                    await self._send_answers(to, req, batch)
                if not out.running and not out.answers:
                    break
        finally:
            del self._outgoing[key]
            for task in out.running:
                task.cancel()

    async def _send_answers(self, to: str, req: int, answers: list[RelayAnswer]) -> None:
        text = base64.b64encode(msgspec.msgpack.encode(answers)).decode()
        step = PAYLOAD_CHARS - 200
        slices = [text[i:i + step] for i in range(0, len(text), step)]
        batch = f"{self.id}.{next(self._batches)}"
        try:
            for index, part in enumerate(slices):
                await self._notify(RelayPiece(to=to, req=req, batch=batch, index=index,
                                              count=len(slices), text=part))
        except Exception as exc:  # the asker times these out and says "no answer"
            log.warning("relaying %d answers failed: %s", len(answers), exc)

    # ------------------------------------------------------------------ the channel
    async def _notify(self, message: RelayMessage) -> None:
        payload = msgspec.json.encode(message).decode()
        if self._conn is None or self._conn.is_closed():
            raise ConnectionError("not connected to PostgreSQL")
        async with self._send_lock:  # one asyncpg connection runs one query at a time
            await self._conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
        self.notifies_sent += 1

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = msgspec.json.decode(payload, type=RelayMessage)
        except msgspec.DecodeError as exc:
            log.warning("ignoring a malformed relay message: %s", exc)
            return
        if isinstance(message, RelayPiece):
            if message.to == self.id:
                self._take_piece(message)
        elif message.origin != self.id:
            self._run_for(message)
