"""A list answer of any size reaches the technician (issue 19, seen at 20,000 agents:
`agents.list`'s one reply was past the admin channel's 8 MiB frame limit and the CLI lost
the connection). Long lists come in parts of about 1 MiB that the client joins."""

from __future__ import annotations

import asyncio
import datetime as dt
import os

from careline.coordinator.storage import fleet
from careline.coordinator.storage.db import Database
from careline.shared import protocol as p

MACHINES = 600
# Each machine lists 64 products with long names: ~17 KB a row, ~10 MB for the list.
PRODUCTS = [{"name": f"{i:02d}-" + "KeToanPro-" * 25, "version": "5.2.1", "running": True}
            for i in range(p.MAX_PRODUCTS)]


async def add_machines(url: str) -> None:
    db = Database(url)
    now = dt.datetime.now(dt.UTC)
    try:
        async with db.transaction() as conn:
            customer = await fleet.add_customer(conn, "Big Co", "Asia/Ho_Chi_Minh", now)
            ids = [os.urandom(20).hex() for _ in range(MACHINES)]
            for i, agent_id in enumerate(ids):
                await fleet.add_agent(conn, agent_id=agent_id, customer_id=customer.id,
                                      public_key=os.urandom(32), hostname=f"KT-{i:05d}",
                                      os="Windows 11", agent_version="1.0", now=now)
            await fleet.store_heartbeats(conn, [(a, now, {"products": PRODUCTS}) for a in ids])
    finally:
        await db.close()


def test_a_list_past_the_frame_limit_arrives_whole(sqlite_coordinator) -> None:
    coord = sqlite_coordinator
    asyncio.run(add_machines(f"sqlite:///{coord.data / 'careline.db'}"))
    with coord.client() as client:
        machines = client.call("agents.list")
        assert [m["hostname"] for m in machines] == [f"KT-{i:05d}" for i in range(MACHINES)]
        assert all(len(m["products"]) == p.MAX_PRODUCTS for m in machines)
        assert len(p.encode(p.Reply(id=1, result=machines))) > p.MAX_ADMIN_MESSAGE_BYTES
        assert client.call("customers.list")[0]["name"] == "Big Co"  # the channel goes on
    listed = coord.cli("agents", "list")  # and the CLI a technician runs
    assert len(listed) == MACHINES


def test_reply_parts_keep_order_and_size() -> None:
    items = [{"n": i, "pad": "x" * (i % 50)} for i in range(5000)]
    parts = p.reply_parts(items, limit=10_000)
    assert [x for part in parts for x in part] == items
    assert len(parts) > 1
    assert all(len(p.encode(p.Reply(id=1, result=part))) <= 10_200 for part in parts)
    assert p.reply_parts([], limit=10) == [[]]
    huge = {"pad": "y" * 50_000}
    assert p.reply_parts([1, huge, 2], limit=1000) == [[1], [huge], [2]]
