"""agent.runner.first_of: a session's tasks end together, and the reason is not lost."""

from __future__ import annotations

import asyncio

import pytest

from careline.agent.runner import first_of


async def test_first_to_return_cancels_and_awaits_the_others() -> None:
    cleaned: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.append(name)

    await first_of(forever("a"), asyncio.sleep(0.01), forever("b"))
    assert sorted(cleaned) == ["a", "b"]  # awaited, not just cancelled


async def test_first_exception_is_raised_as_itself() -> None:
    async def fail() -> None:
        await asyncio.sleep(0.01)
        raise TimeoutError("coordinator silent")

    with pytest.raises(TimeoutError, match="coordinator silent"):
        await first_of(fail(), asyncio.sleep(3600))


async def test_cancelling_the_caller_is_not_swallowed() -> None:
    task = asyncio.create_task(first_of(asyncio.sleep(3600), asyncio.sleep(3600)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
