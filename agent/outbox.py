"""The durable outbox: events survive disconnects, crashes and power cuts until acknowledged.

SQLite with synchronous=FULL: an event is on disk before `put` returns, and is deleted only
when the coordinator acknowledges its sequence number (which it stores exactly once).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from careline.shared.protocol import MAX_EVENT_BYTES, Event, check_data


class Outbox:
    def __init__(self, path: Path) -> None:
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
        cursor = self._db.execute(
            "INSERT INTO outbox (kind, at, data) VALUES (?, ?, ?)", (kind, time.time(), text))
        return int(cursor.lastrowid or 0)

    def pending(self, after: int = 0, limit: int = 100) -> list[Event]:
        rows = self._db.execute(
            "SELECT seq, kind, at, data FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [Event(seq=s, kind=k, at=a, data=json.loads(d)) for s, k, a, d in rows]

    def ack(self, seq: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        self._db.close()
