"""Batch writes isolate the items whose own data fails (storage.db.write_isolating, used by
the heartbeat flush and the event writer): everyone else's is written, and a failing
database is not blamed on anyone's data."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlalchemy.exc import OperationalError

from careline.coordinator.storage.db import write_isolating


async def test_only_the_bad_items_fail_and_the_rest_are_written() -> None:
    written: list[int] = []

    async def write(items: Sequence[int]) -> None:
        if any(i % 7 == 3 for i in items):
            raise ValueError(f"bad item in {list(items)}")
        written.extend(items)

    failed = await write_isolating(list(range(20)), write)
    assert sorted(failed) == [3, 10, 17]
    assert all(isinstance(e, ValueError) for e in failed.values())
    assert sorted(written) == [i for i in range(20) if i % 7 != 3]


async def test_a_failing_database_is_raised_not_split() -> None:
    calls: list[int] = []

    async def write(items: Sequence[int]) -> None:
        calls.append(len(items))
        raise OperationalError("COMMIT", {}, Exception("database is locked"))

    with pytest.raises(OperationalError, match="locked"):
        await write_isolating([1, 2, 3, 4], write)
    assert calls == [4]
