"""Agents' durable events, stored for every agent at once and acknowledged after the commit.

An installing fleet sends a few events per machine (update steps, the result), each from a
different agent: stored one agent at a time, every event was its own transaction (one fsync
and several database round trips), and a 2,000-machine rollout waited on them. Here
everything waiting when the previous transaction committed goes into the next one, from as
many agents as sent something, and each agent is acknowledged once its events are committed
(its outbox keeps them until then, so a crash or a failed write loses nothing: they are sent
again).

Each agent's events wait in its link's bounded queue (AgentLink.events): an agent whose
events pile up stops being read until they are stored. If a batch fails, it is split until
the agents whose own events fail are alone: only their connections are closed (they send
again later); everyone else's events are stored. If the database itself fails, every
connection in the batch is closed the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

from websockets.exceptions import ConnectionClosed

from careline.coordinator.hub import AgentHub, AgentLink
from careline.coordinator.incidents import IncidentDesk
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage.db import Database, write_isolating
from careline.coordinator.updates import UpdateService
from careline.shared import protocol as p
from careline.shared.logs import safe_text

log = logging.getLogger("careline.coordinator")

# Events stored per transaction, whatever the number of agents they come from.
EVENT_BATCH = 500


class EventWriter:
    def __init__(self, db: Database, hub: AgentHub, updates: UpdateService,
                 desk: IncidentDesk) -> None:
        self.db, self.hub, self.updates, self.desk = db, hub, updates, desk
        self._ready: dict[AgentLink, None] = {}  # links with queued events, oldest first
        self._wakeup = asyncio.Event()

    async def put(self, link: AgentLink, event: p.Event) -> None:
        """Queue an event; waits while the agent's queue is full (its reads stop)."""
        await link.events.put(event)
        self._ready.setdefault(link, None)
        self._wakeup.set()

    async def run_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._ready:
                await self._write(self._take(EVENT_BATCH))

    def _take(self, budget: int) -> dict[AgentLink, list[p.Event]]:
        """Up to `budget` events, in order per agent, each agent at most an equal share of
        it, round robin over the agents: one agent's backlog of thousands does not hold the
        others' events back."""
        taken: dict[AgentLink, list[p.Event]] = {}
        share = max(budget // max(len(self._ready), 1), 1)
        for link in list(self._ready):
            if budget <= 0:
                break
            events = taken[link] = []
            while len(events) < share and budget > 0 and not link.events.empty():
                events.append(link.events.get_nowait())
                budget -= 1
            del self._ready[link]
            if not link.events.empty():
                self._ready[link] = None  # to the back of the line
        return {link: events for link, events in taken.items() if events}

    async def _write(self, taken: dict[AgentLink, list[p.Event]]) -> None:
        known = {link: self._known(link, events) for link, events in taken.items()}
        try:
            failed = await write_isolating(
                [link for link in taken if known[link]],
                lambda links: self._store([(link.agent_id, e) for link in links
                                           for e in known[link]]))
        except Exception as exc:  # the database itself: nobody's events were stored
            failed = dict.fromkeys(taken, exc)
        for error in set(failed.values()):
            links = [link.agent_id for link, e in failed.items() if e is error]
            log.error("events of %s not stored: %s", ", ".join(links) if len(links) <= 5 else
                      f"{len(links)} agents",
                      safe_text((str(error).splitlines() or [type(error).__name__])[0], 300))
        for link in failed:
            link.ws.close_timeout = 1.0  # its unread frames may hide the close handshake
        await asyncio.gather(*(link.ws.close(1011, "could not store events; retry later")
                               for link in failed))
        for link, events in taken.items():
            if link in failed:
                continue
            link.session.ack(event.seq for event in events)
            # Gone meanwhile: unacknowledged, so the agent sends them again (not stored twice).
            with contextlib.suppress(ConnectionClosed):
                await link.flush()

    def _known(self, link: AgentLink, events: list[p.Event]) -> list[p.Event]:
        """The events to store; one of an unknown kind is acknowledged and not stored."""
        known = []
        for event in events:
            if event.kind in p.EVENT_KINDS:
                known.append(event)
            else:
                self.hub.quota(link.agent_id).unknown_kinds += 1
                log.warning("agent %s sent an event of unknown kind %r; not stored",
                            link.agent_id, event.kind)
        return known

    async def _store(self, known: list[tuple[str, p.Event]]) -> None:
        now = dt.datetime.now(dt.UTC)
        async with self.db.transaction() as conn:
            new = await store.store_events(conn, [
                (agent_id, e.seq, e.kind, dt.datetime.fromtimestamp(e.at, dt.UTC), e.data)
                for agent_id, e in known], now)
            fresh = []  # stored now, each once (a seq twice in one batch counts once)
            for agent_id, event in known:
                if (agent_id, event.seq) in new:
                    new.discard((agent_id, event.seq))
                    fresh.append((agent_id, event))
            # One transaction: stored, jobs moved on, incidents updated.
            await self.updates.on_events(conn, fresh, now)
            await self.desk.on_events(conn, fresh, now)
