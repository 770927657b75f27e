"""Live commands between coordinator processes (scale-out on PostgreSQL).

Each process holds the websockets of the agents connected to it. A technician's live command
(ping, diagnose, restart) for an agent held by another process travels over PostgreSQL
LISTEN/NOTIFY on one channel: the request to every process, of which only the holder acts;
its answer back to the asking process, cut into pieces that fit NOTIFY's 8,000-byte payload
(a diagnostics bundle is up to 512 KB). One dedicated connection per process listens and
sends. SQLite means one process, and no relay.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from careline.shared import protocol as p

log = logging.getLogger("careline.coordinator.relay")

CHANNEL = "careline_live"
PIECE_CHARS = 7000  # of base64 text per NOTIFY, under PostgreSQL's 8,000-byte limit
# Added to the asker's wait: the two hops through PostgreSQL.
RELAY_MARGIN = 2.0
# How often a lost listening connection (a PostgreSQL restart) is tried again.
RECONNECT_SECONDS = 2.0


class RelayRequest(msgspec.Struct, tag="request"):
    origin: str
    req: int
    agent: str
    action: p.Action
    timeout: float


class RelayAnswer(msgspec.Struct, tag="answer"):
    """The holder's outcome: a CommandResult, or why there is none ("timeout", "offline")."""

    result: p.CommandResult | None = None
    failure: str = ""


class RelayPiece(msgspec.Struct, tag="piece"):
    to: str
    req: int
    index: int
    count: int
    text: str  # a slice of the base64 of an encoded RelayAnswer


RelayMessage = RelayRequest | RelayPiece
# Runs a command on an agent held by this process: its answer, or None if not held here.
CallHere = Callable[[str, p.Action, float], Awaitable[p.CommandResult] | None]


class CommandRelay:
    def __init__(self, dsn: str, call_here: CallHere) -> None:
        self.dsn = dsn
        self.call_here = call_here
        self.id = secrets.token_hex(8)
        self._conn: Any = None  # asyncpg.Connection
        self._send_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[RelayAnswer]] = {}
        self._pieces: dict[int, list[str]] = {}
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
    async def call(self, agent_id: str, action: p.Action,
                   timeout: float) -> p.CommandResult:  # noqa: ASYNC109 -- sent to the holder, which enforces it
        """Run `action` on an agent another process holds; raises TimeoutError when no
        answer came in time, ConnectionError when the holder has lost the agent."""
        req = next(self._ids)
        answer: asyncio.Future[RelayAnswer] = asyncio.get_running_loop().create_future()
        self._waiting[req] = answer
        try:
            try:
                await self._notify(RelayRequest(origin=self.id, req=req, agent=agent_id,
                                                action=action, timeout=timeout))
            except Exception as exc:  # the listening connection is down
                raise ConnectionError(f"cannot reach other coordinator processes: {exc}") from exc
            outcome = await asyncio.wait_for(answer, timeout + RELAY_MARGIN)
        finally:
            self._waiting.pop(req, None)
            self._pieces.pop(req, None)
        if outcome.result is not None:
            return outcome.result
        if outcome.failure == "timeout":
            raise TimeoutError
        raise ConnectionError(f"agent {agent_id}: {outcome.failure}")

    def _take_piece(self, piece: RelayPiece) -> None:
        future = self._waiting.get(piece.req)
        if future is None or future.done():
            return
        pieces = self._pieces.setdefault(piece.req, [])
        if piece.index != len(pieces):  # NOTIFYs from one session arrive in order
            future.set_exception(ConnectionError("relay answer arrived out of order"))
            return
        pieces.append(piece.text)
        if len(pieces) == piece.count:
            data = base64.b64decode("".join(pieces))
            future.set_result(msgspec.msgpack.decode(data, type=RelayAnswer))

    # ------------------------------------------------------------------ the holding side
    async def _run_for(self, request: RelayRequest) -> None:
        running = self.call_here(request.agent, request.action, request.timeout)
        if running is None:
            return  # held by another process, or by none: the asker times out
        try:
            result = await running
            answer = RelayAnswer(result=result)
        except TimeoutError:
            answer = RelayAnswer(failure="timeout")
        except (ConnectionError, OSError):
            answer = RelayAnswer(failure="offline")
        text = base64.b64encode(msgspec.msgpack.encode(answer)).decode()
        slices = [text[i:i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)] or [""]
        try:
            for index, part in enumerate(slices):
                await self._notify(RelayPiece(to=request.origin, req=request.req, index=index,
                                              count=len(slices), text=part))
        except Exception as exc:  # the asker times out and says "no answer"
            log.warning("relaying the answer of %s failed: %s", request.agent, exc)

    # ------------------------------------------------------------------ the channel
    async def _notify(self, message: RelayMessage) -> None:
        payload = msgspec.json.encode(message).decode()
        if self._conn is None or self._conn.is_closed():
            raise ConnectionError("not connected to PostgreSQL")
        async with self._send_lock:  # one asyncpg connection runs one query at a time
            await self._conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)

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
            self._spawn(self._run_for(message))
