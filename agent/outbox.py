"""The durable outbox: events survive disconnects, crashes and power cuts until acknowledged.

SQLite with synchronous=FULL: an event is on disk before `put` returns, and is deleted only
when the coordinator acknowledges its sequence number (which it stores exactly once).
In the agent's event loop, `put_async` does the same write on the outbox's one writer
thread: a slow disk (a failing HDD's fsync) never stalls heartbeats, pings or acks, and
writes happen one at a time in the order they were asked for (seq follows call order).

Bounded (a PC offline for weeks with a flapping probe must not fill its disk): a repeat of
a health-trouble event about the same subject is folded into the one waiting (its newest
data, with `repeats`), and past MAX_EVENTS or MAX_AGE_SECONDS the oldest events that can
go (update progress, health trouble) are dropped. Update and verify results, integrity
mismatches and power losses are never dropped. What was folded or dropped is counted and
reported with the next connection (`report_losses`, an `outbox_summary` event).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from careline.shared.protocol import MAX_EVENT_BYTES, Event, check_data

# What the coordinator admits from one agent at once (coordinator.quotas.EVENT_BURST): a full
# outbox is delivered in one go after any absence.
MAX_EVENTS = 5_000
MAX_AGE_SECONDS = 30 * 86400
# Never dropped or folded: what a technician or a rollout must see.
KEPT_KINDS = frozenset({"update_result", "verify_result", "integrity_mismatch", "unclean_shutdown"})
# Health trouble: a repeat about the same subject says nothing new but "still".
FOLDED_KINDS = frozenset({"disk_full", "disk_failing", "product_not_running", "product_crash_loop"})
SUMMARY_KIND = "outbox_summary"


def fold_key(kind: str, data: dict[str, Any]) -> str | None:
    """Events with the same key stand for one another while waiting; None: never folded."""
    if kind not in FOLDED_KINDS:
        return None
    return f"{kind}:{data.get('product') or data.get('subject') or ''}"


class Outbox:
    def __init__(self, path: Path) -> None:
        # The writing connection, used from worker threads (the writer, to_thread) in turn.
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-writer")
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # AUTOINCREMENT: a sequence number is never reused, even after the newest is deleted.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " kind TEXT NOT NULL, at REAL NOT NULL, data TEXT NOT NULL)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "fold_key" not in columns:  # outboxes written before the bound
            self._db.execute("ALTER TABLE outbox ADD COLUMN fold_key TEXT")
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_fold ON outbox (fold_key)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS losses (name TEXT PRIMARY KEY, count INTEGER NOT NULL)")
        # Reads on their own connection: in WAL mode they never wait for a slow commit.
        self._read_lock = threading.Lock()
        self._reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def put(self, kind: str, data: dict[str, Any] | None = None, *, now: float | None = None) -> int:
        """Store an event (or fold it into the one it repeats); returns its seq."""
        now = time.time() if now is None else now
        text = json.dumps(data or {}, default=str)
        try:  # what the coordinator would refuse must not block the outbox forever
            check_data(json.loads(text))
            if len(text) > MAX_EVENT_BYTES - 1024:
                raise ValueError(f"event data of {len(text)} bytes is too large")
        except ValueError as exc:
            text = json.dumps({"unsendable": str(exc)})
        key = fold_key(kind, json.loads(text))
        with self._lock, self._transaction():
            if key is not None:
                folded = self._fold(key, text, now)
                if folded is not None:
                    return folded
            cursor = self._db.execute(
                "INSERT INTO outbox (kind, at, data, fold_key) VALUES (?, ?, ?, ?)",
                (kind, now, text, key))
            self._trim(now)
        return int(cursor.lastrowid or 0)

    def put_async(self, kind: str, data: dict[str, Any] | None = None) -> asyncio.Future[int]:
        """`put` on the writer thread, queued now (so seq follows the order of calls); the
        future's result (its seq) means the event is on disk. Cancelling the future does not
        cancel the write: an event asked for is written."""
        write = functools.partial(self.put, kind, data, now=time.time())
        return asyncio.shield(asyncio.get_running_loop().run_in_executor(self._writer, write))

    def _fold(self, key: str, text: str, now: float) -> int | None:
        row = self._db.execute("SELECT seq, at, data FROM outbox WHERE fold_key = ?"
                               " ORDER BY seq DESC LIMIT 1", (key,)).fetchone()
        if row is None:
            return None
        seq, first_at, old = row
        previous = json.loads(old)
        data = {**json.loads(text), "repeats": int(previous.get("repeats", 1)) + 1,
                "first_at": previous.get("first_at", first_at)}
        self._db.execute("UPDATE outbox SET at = ?, data = ? WHERE seq = ?",
                         (now, json.dumps(data), seq))
        self._count("folded", 1)
        return int(seq)

    def _trim(self, now: float) -> None:
        droppable = f"kind NOT IN ({', '.join('?' * len(KEPT_KINDS))})"
        kept = sorted(KEPT_KINDS)
        dropped = self._db.execute(
            f"DELETE FROM outbox WHERE {droppable} AND at < ?",
            (*kept, now - MAX_AGE_SECONDS)).rowcount
        excess = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]) - MAX_EVENTS
        if excess > 0:
            dropped += self._db.execute(
                f"DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE {droppable}"
                " ORDER BY seq LIMIT ?)", (*kept, excess)).rowcount
        self._count("dropped", dropped)

    def _count(self, name: str, n: int) -> None:
        if n:
            self._db.execute("INSERT INTO losses (name, count) VALUES (?, ?) ON CONFLICT (name)"
                             " DO UPDATE SET count = count + excluded.count", (name, n))

    def losses(self) -> dict[str, int]:
        """Events folded into others and dropped since the last report."""
        with self._read_lock:
            rows = self._reader.execute("SELECT name, count FROM losses").fetchall()
        return {"folded": 0, "dropped": 0, **{name: int(count) for name, count in rows}}

    def report_losses(self) -> int | None:
        """Turn the counts of folded and dropped events into one `outbox_summary` event
        (and reset them, in the same transaction); None if nothing was lost."""
        with self._lock, self._transaction():
            counts = dict(self._db.execute("SELECT name, count FROM losses").fetchall())
            if not any(counts.values()):
                return None
            self._db.execute("DELETE FROM losses")
            cursor = self._db.execute(
                "INSERT INTO outbox (kind, at, data) VALUES (?, ?, ?)",
                (SUMMARY_KIND, time.time(), json.dumps({"folded": counts.get("folded", 0),
                                                        "dropped": counts.get("dropped", 0)})))
        return int(cursor.lastrowid or 0)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def pending(self, after: int = 0, limit: int = 100) -> list[Event]:
        with self._read_lock:
            rows = self._reader.execute(
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
        with self._lock, self._transaction():
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", params)

    def __len__(self) -> int:
        with self._read_lock:
            return int(self._reader.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        """Finish the writes already asked for, then close."""
        self._writer.shutdown(wait=True)
        with self._lock, self._read_lock:
            self._reader.close()
            self._db.close()
