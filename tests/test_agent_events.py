"""Which agents' events go into the next transaction (coordinator/agent_events.py): all
agents with something waiting, in order per agent, within the batch budget, and an agent
with a large backlog does not hold the others back."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from careline.coordinator.agent_events import EventWriter
from careline.shared import protocol as p


def event(seq: int) -> p.Event:
    return p.Event(seq=seq, kind="update_step", at=1_700_000_000.0)


@dataclasses.dataclass(eq=False)  # hashed by identity, as AgentLink is
class Link:
    """What EventWriter's batching reads of a link: its queue (the rest is I/O)."""

    agent_id: str
    events: asyncio.Queue[p.Event] = dataclasses.field(
        default_factory=lambda: asyncio.Queue(maxsize=1000))


def link(name: str) -> Any:
    return Link(name)


async def test_a_backlog_shares_the_batch_round_robin_and_keeps_order() -> None:
    writer = EventWriter(None, None, None, None)  # type: ignore[arg-type]
    backlog, small, late = link("backlog"), link("small"), link("late")
    for seq in range(1, 901):
        await writer.put(backlog, event(seq))
    for seq in (1, 2):
        await writer.put(small, event(seq))

    first = writer._take(500)  # an equal share each
    assert [e.seq for e in first[backlog]] == list(range(1, 251))
    assert [e.seq for e in first[small]] == [1, 2]
    await writer.put(late, event(7))

    # A newcomer gets its share of the next batch, however long the backlog.
    second = writer._take(4)
    assert list(second) == [backlog, late]
    assert [e.seq for e in second[late]] == [7]
    assert [e.seq for e in second[backlog]] == [251, 252]

    rest = writer._take(10_000)
    assert [e.seq for e in rest[backlog]] == list(range(253, 901))
    assert writer._take(10) == {}
