"""The keys agents authenticate with, held in memory.

A reconnect storm is thousands of authentications a second; each one costs a signature
check and no database round trip. The cache is loaded when the coordinator starts. An agent
enrolled through another coordinator process (scale-out) is learnt at this process's next
`refresh()`, every couple of seconds (or looked up on first sight if it comes sooner): when
a process dies, its agents come back to the others with no query each. A revocation
evicts its key at once in the process that made it, and in every other process at its next
`refresh()`, which also tells it whom to disconnect.

Ids found unknown are remembered for a while (bounded), so a stranger repeating Hellos with
made-up ids costs no query after the first.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from careline.coordinator.storage import fleet as store
from careline.coordinator.storage.db import Database

# Revocations are read back this far before the last check, so a revocation stamped by a
# process whose clock is a little behind is not missed.
CLOCK_MARGIN = dt.timedelta(seconds=60)
# Unknown ids remembered: how many, and for how long (an id is a hash of a key, so only an
# agent enrolled meanwhile through another coordinator process could turn known).
UNKNOWN_CACHE_SIZE = 100_000
UNKNOWN_TTL_SECONDS = 60.0


@dataclass(frozen=True)
class AgentKey:
    public_key: bytes
    customer_id: int
    machine_id: str = ""  # the machine it belongs to, when not the id said in hello


class AgentKeys:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._keys: dict[str, AgentKey] = {}
        self._checked_at: dt.datetime | None = None
        self._rekeys_seen: dict[str, dt.datetime] = {}  # machine -> key change handled
        self._unknown: OrderedDict[str, float] = OrderedDict()  # id -> time.monotonic() seen

    async def load(self, now: dt.datetime) -> None:
        async with self.db.connect() as conn:
            keys = await store.agent_keys(conn)
        self._keys = {agent_id: AgentKey(*key) for agent_id, key in keys.items()}
        self._checked_at = now

    async def lookup(self, agent_id: str) -> AgentKey | Literal["unknown", "revoked"]:
        """The key of an agent that may connect, or why it may not."""
        key = self._keys.get(agent_id)
        if key is not None:
            return key
        seen = self._unknown.get(agent_id)
        if seen is not None and time.monotonic() - seen < UNKNOWN_TTL_SECONDS:
            return "unknown"
        async with self.db.connect() as conn:
            row = await store.agent_for_hello(conn, agent_id)
        if row is None:
            self._unknown[agent_id] = time.monotonic()
            self._unknown.move_to_end(agent_id)
            while len(self._unknown) > UNKNOWN_CACHE_SIZE:
                self._unknown.popitem(last=False)
            return "unknown"
        if row.revoked_at is not None:
            return "revoked"
        key = self._keys[agent_id] = AgentKey(row.public_key, row.customer_id, row.id)
        return key

    def __len__(self) -> int:
        """Enrolled agents not revoked (that this process knows of)."""
        return len(self._keys)

    def add(self, agent_id: str, public_key: bytes, customer_id: int, machine_id: str = "") -> None:
        self._keys[agent_id] = AgentKey(public_key, customer_id, machine_id)
        self._unknown.pop(agent_id, None)

    def evict(self, agent_id: str) -> None:
        self._keys.pop(agent_id, None)

    async def refresh(self, now: dt.datetime) -> tuple[list[str], list[str]]:
        """What other processes did since the last check (give or take CLOCK_MARGIN): the
        agents they enrolled join the cache. Returned: the agents revoked by any process,
        evicted from the cache, whose connections the caller closes; and the ids (machine
        and new key) of machines given a new key by a reinstall, each once: the caller
        closes their connections for them to say hello again, and the old key, gone from
        the cache, is then refused."""
        since = (self._checked_at or now) - CLOCK_MARGIN
        async with self.db.connect() as conn:
            enrolled = await store.agent_keys(conn, enrolled_since=since)
            revoked = await store.revoked_since(conn, since)
            rekeys = await store.rekeyed_since(conn, since)
        self._checked_at = now
        for agent_id, key in enrolled.items():
            self.add(agent_id, *key)
        for agent_id in revoked:
            self.evict(agent_id)
        rekeyed = []
        for machine_id, key_id, at in rekeys:
            if self._rekeys_seen.get(machine_id) != at:
                self.rekeyed(machine_id, at)
                rekeyed += [ref for ref in (machine_id, key_id) if ref]
                self.evict(key_id or machine_id)
        for machine_id, at in list(self._rekeys_seen.items()):
            if at < since:
                del self._rekeys_seen[machine_id]
        return revoked, rekeyed

    def rekeyed(self, machine_id: str, at: dt.datetime) -> None:
        """The machine took a new key at `at` (handled here already, or now)."""
        self.evict(machine_id)
        self._rekeys_seen[machine_id] = at
