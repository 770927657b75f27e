"""The durable outbox: events survive disconnects, crashes and power cuts until acknowledged.

SQLite with synchronous=FULL: an event is on disk before `put` returns, and is deleted only
when the coordinator acknowledges its sequence number (which it stores exactly once).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from careline.shared.protocol import MAX_EVENT_BYTES, Event, check_data


class DeliveryWindow:
    """What one connection has in flight: at most `size` events sent and not yet acked.

    Pure bookkeeping for the sender: acks open the window again, so a backlog of thousands
    drains as fast as the coordinator stores it, never more than `size` ahead of it.
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


class Outbox:
    def __init__(self, path: Path) -> None:
        # One connection used from the event loop and from worker threads (to_thread).
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # AUTOINCREMENT: a sequence number is never reused, even after the newest is deleted.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " kind TEXT NOT NULL, at REAL NOT NULL, data TEXT NOT NULL)"
        )

    def put(self, kind: str, data: dict[str, Any] | None = None) -> int:
        text = json.dumps(data or {}, default=str)
        try:  # what the coordinator would refuse must not block the outbox forever
            check_data(json.loads(text))
            if len(text) > MAX_EVENT_BYTES - 1024:
                raise ValueError(f"event data of {len(text)} bytes is too large")
        except ValueError as exc:
            text = json.dumps({"unsendable": str(exc)})
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO outbox (kind, at, data) VALUES (?, ?, ?)", (kind, time.time(), text))
        return int(cursor.lastrowid or 0)

    def pending(self, after: int = 0, limit: int = 100) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, at, data FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [Event(seq=s, kind=k, at=a, data=json.loads(d)) for s, k, a, d in rows]

    def ack(self, seq: int) -> None:
        self.ack_many([seq])

    def ack_many(self, seqs: Iterable[int]) -> None:
        """Forget acknowledged events, in one transaction (one fsync for a whole batch)."""
        params = [(seq,) for seq in seqs]
        if not params:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM outbox WHERE seq = ?", params)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
