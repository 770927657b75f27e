"""agent.outbox: events are on disk before put() returns and leave only when acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from careline.agent.outbox import (
    KEPT_KINDS,
    MAX_AGE_SECONDS,
    SUMMARY_KIND,
    Outbox,
)
from careline.shared.protocol import EVENT_KINDS, Event


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


def test_put_returns_increasing_seqs_and_pending_lists_them(path: Path) -> None:
    box = Outbox(path)
    before = time.time()
    seqs = [box.put("boot", {"n": i}) for i in range(5)]
    after = time.time()
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5
    assert seqs[0] >= 1
    pending = box.pending()
    assert [e.seq for e in pending] == seqs
    assert [e.data for e in pending] == [{"n": i} for i in range(5)]
    assert all(isinstance(e, Event) and e.kind == "boot" for e in pending)
    assert all(before <= e.at <= after for e in pending)
    assert len(box) == 5
    box.close()


def test_put_without_data_gives_empty_map_and_unusual_values_become_strings(path: Path) -> None:
    box = Outbox(path)
    a = box.put("power_loss")
    when = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    b = box.put("crash", {"when": when, "nested": {"list": [1, "x", None]}})
    events = {e.seq: e for e in box.pending()}
    assert events[a].data == {}
    assert events[b].data == {"when": str(when), "nested": {"list": [1, "x", None]}}
    box.close()


def test_ack_removes_only_that_event(path: Path) -> None:
    box = Outbox(path)
    s1, s2, s3 = (box.put("e", {"i": i}) for i in range(3))
    box.ack(s2)
    assert [e.seq for e in box.pending()] == [s1, s3]
    box.ack(s2)  # acknowledging twice (a duplicate Ack) is harmless
    box.ack(10_000)  # so is an unknown seq
    assert [e.seq for e in box.pending()] == [s1, s3]
    assert len(box) == 2
    box.ack(s1)
    box.ack(s3)
    assert box.pending() == []
    assert len(box) == 0
    box.close()


def test_pending_after_and_limit(path: Path) -> None:
    box = Outbox(path)
    seqs = [box.put("e") for _ in range(10)]
    assert [e.seq for e in box.pending(after=seqs[3])] == seqs[4:]  # strictly after
    assert [e.seq for e in box.pending(after=seqs[-1])] == []
    assert [e.seq for e in box.pending(after=0, limit=3)] == seqs[:3]
    assert [e.seq for e in box.pending(after=seqs[2], limit=2)] == seqs[3:5]
    # `after` need not be a stored seq: gaps left by acks are skipped over.
    box.ack(seqs[5])
    box.ack(seqs[6])
    assert [e.seq for e in box.pending(after=seqs[5], limit=2)] == [seqs[7], seqs[8]]
    # Paging through with after=last seen delivers each event exactly once.
    delivered: list[int] = []
    last = 0
    while page := box.pending(after=last, limit=3):
        delivered += [e.seq for e in page]
        last = page[-1].seq
    assert delivered == [s for s in seqs if s not in (seqs[5], seqs[6])]
    box.close()


def test_events_survive_close_and_reopen(path: Path) -> None:
    box = Outbox(path)
    seqs = [box.put("e", {"i": i}) for i in range(3)]
    box.ack(seqs[0])
    expected = box.pending()
    box.close()
    again = Outbox(path)
    assert again.pending() == expected
    assert len(again) == 2
    again.close()


def test_seq_is_never_reused_after_newest_is_acked_and_reopened(path: Path) -> None:
    box = Outbox(path)
    seqs = [box.put("e") for _ in range(3)]
    for seq in seqs:
        box.ack(seq)
    assert len(box) == 0
    box.close()
    again = Outbox(path)
    fresh = again.put("e")
    assert fresh > max(seqs)  # the coordinator would otherwise drop it as a duplicate
    again.ack(fresh)
    again.close()
    third = Outbox(path)
    assert third.put("e") > fresh
    third.close()


def test_two_handles_see_each_others_events(path: Path) -> None:
    writer, reader = Outbox(path), Outbox(path)
    seq = writer.put("e", {"x": 1})
    assert [e.seq for e in reader.pending()] == [seq]
    reader.ack(seq)
    assert writer.pending() == []
    writer.close()
    reader.close()


CHILD = """
import sys
from pathlib import Path
from careline.agent.outbox import Outbox
box = Outbox(Path(sys.argv[1]))
i = 0
while True:
    seq = box.put("tick", {"i": i, "pad": "x" * 200})
    print(seq, i, flush=True)
    i += 1
"""


def test_events_reported_as_put_survive_sigkill(path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    reported: dict[int, int] = {}
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        while len(reported) < 200 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seq, i = map(int, line.split())
            reported[seq] = i
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: no close(), no checkpoint
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert len(reported) >= 200, proc.stderr.read() if proc.stderr else ""
    box = Outbox(path)
    stored = {e.seq: e.data["i"] for e in box.pending(limit=1_000_000)}
    missing = set(reported) - set(stored)
    assert not missing, f"events reported as put but lost: {sorted(missing)[:10]}"
    assert all(stored[seq] == i for seq, i in reported.items())
    # The child may have stored a few more than it managed to report; all are in order.
    assert sorted(stored) == list(stored)
    assert max(stored) >= max(reported)
    # New events after the crash get fresh numbers.
    assert box.put("after-crash") > max(stored)
    box.close()


def test_ack_many_forgets_a_batch_in_one_go(path: Path) -> None:
    box = Outbox(path)
    seqs = [box.put("e") for _ in range(10)]
    box.ack_many([*seqs[::2], 10_000])  # unknown seqs are harmless
    assert [e.seq for e in box.pending()] == seqs[1::2]
    box.ack_many([])
    assert len(box) == 5
    box.close()


# ----------------------------------------------------------------------------- the bound
def test_repeated_health_trouble_is_folded_into_the_waiting_event(path: Path) -> None:
    box = Outbox(path)
    first = box.put("disk_full", {"subject": "C:", "detail": "95%"}, now=100.0)
    other = box.put("disk_full", {"subject": "D:", "detail": "91%"}, now=101.0)
    for n, detail in enumerate(["96%", "97%", "98%"]):
        assert box.put("disk_full", {"subject": "C:", "detail": detail}, now=102.0 + n) == first
    events = {e.seq: e for e in box.pending()}
    assert set(events) == {first, other}
    assert events[first].data == {"subject": "C:", "detail": "98%", "repeats": 4, "first_at": 100.0}
    assert events[first].at == 104.0  # the newest
    assert box.losses() == {"folded": 3, "dropped": 0}
    # Once delivered, the next one starts afresh.
    box.ack(first)
    assert box.put("disk_full", {"subject": "C:"}, now=200.0) > other
    box.close()


def test_bound_drops_oldest_droppable_never_results_integrity_or_power_loss(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import careline.agent.outbox as outbox_module

    monkeypatch.setattr(outbox_module, "MAX_EVENTS", 10)
    box = Outbox(path)
    kept = [box.put(kind, {"n": i}, now=float(i)) for i, kind in enumerate(sorted(KEPT_KINDS))]
    steps = [box.put("update_step", {"step": i}, now=10.0 + i) for i in range(20)]
    remaining = [e.seq for e in box.pending(limit=100)]
    assert len(remaining) == 10
    assert remaining == kept + steps[-(10 - len(kept)):]  # the newest steps, every kept one
    assert box.losses()["dropped"] == 20 - (10 - len(kept))
    # Past the bound with only kept kinds: nothing is dropped (the bound yields).
    more = [box.put("update_result", {"n": i}, now=50.0) for i in range(10)]
    assert set(kept + more) <= {e.seq for e in box.pending(limit=100)}
    box.close()


def test_old_droppable_events_age_out(path: Path) -> None:
    box = Outbox(path)
    old_step = box.put("update_step", {}, now=0.0)
    old_result = box.put("update_result", {}, now=0.0)
    box.put("update_step", {}, now=MAX_AGE_SECONDS + 10.0)
    seqs = {e.seq for e in box.pending()}
    assert old_step not in seqs
    assert old_result in seqs
    assert box.losses()["dropped"] == 1
    box.close()


def test_losses_are_reported_once_as_an_event(path: Path) -> None:
    box = Outbox(path)
    assert box.report_losses() is None
    box.put("disk_failing", {"subject": "sda"})
    box.put("disk_failing", {"subject": "sda"})
    seq = box.report_losses()
    assert seq is not None
    summary = next(e for e in box.pending() if e.seq == seq)
    assert (summary.kind, summary.data) == (SUMMARY_KIND, {"folded": 1, "dropped": 0})
    assert summary.kind in EVENT_KINDS  # the coordinator stores it
    assert box.report_losses() is None  # counted once
    box.close()


def test_an_outbox_from_before_the_bound_is_upgraded(path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,"
               " at REAL NOT NULL, data TEXT NOT NULL)")
    db.execute("INSERT INTO outbox (kind, at, data) VALUES ('unclean_shutdown', 1.0, '{}')")
    db.commit()
    db.close()
    box = Outbox(path)
    assert [e.kind for e in box.pending()] == ["unclean_shutdown"]
    box.put("disk_full", {"subject": "C:"})
    box.put("disk_full", {"subject": "C:"})
    assert len(box) == 2
    box.close()


SLOW_COMMIT = 0.2  # a failing HDD's fsync


class SlowDisk(Outbox):
    """An outbox on a disk whose commits are slow: the write lock and the open transaction
    are held for SLOW_COMMIT, as a slow fsync holds them."""

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with super()._transaction():
            yield
            time.sleep(SLOW_COMMIT)


async def _max_loop_lag(until: asyncio.Future[Any], tick: float = 0.01) -> float:
    """The longest the event loop was late for a `tick` sleep until `until` is done."""
    worst = 0.0
    while not until.done():
        started = time.monotonic()
        await asyncio.sleep(tick)
        worst = max(worst, time.monotonic() - started - tick)
    return worst


def test_put_async_writes_off_the_loop_in_call_order(path: Path) -> None:
    box = SlowDisk(path)

    async def main() -> tuple[list[int], float, list[int]]:
        writes = asyncio.gather(*(box.put_async("update_step", {"n": n}) for n in range(10)))
        counts: list[int] = []

        async def read_meanwhile() -> None:  # the status file and the sender keep reading
            while not writes.done():
                counts.append(await asyncio.to_thread(len, box))

        lag, seqs, _ = await asyncio.gather(_max_loop_lag(writes), writes, read_meanwhile())
        return seqs, lag, counts

    started = time.monotonic()
    seqs, lag, counts = asyncio.run(main())
    assert time.monotonic() - started >= 10 * SLOW_COMMIT  # the slow disk really was slow
    assert lag < 0.75 * SLOW_COMMIT, f"event loop stalled {lag:.3f}s by outbox writes"
    assert len(counts) > 10, "reads waited for the slow commits"
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 10
    assert [e.data["n"] for e in box.pending()] == list(range(10))
    box.close()


def test_put_async_write_survives_its_caller_being_cancelled(path: Path) -> None:
    box = SlowDisk(path)

    async def main() -> None:
        box.put_async("update_step", {"n": 0})  # the writer is busy with this one
        waiter = box.put_async("update_result", {"n": 1})  # while this one is queued
        await asyncio.sleep(0)
        waiter.cancel()

    asyncio.run(main())
    box.close()  # waits for the writes already asked for
    again = Outbox(path)
    assert [e.data for e in again.pending()] == [{"n": 0}, {"n": 1}]
    again.close()
