"""Technicians' open connections and refused attempts, for /admin and the web console alike:
a revoked technician keeps no open door, and a stranger guessing tokens cannot flood the
log or the audit table."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection

from careline.coordinator.hub import close
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage.db import Database
from careline.shared import protocol as p
from careline.shared.logs import safe_text

log = logging.getLogger("careline.coordinator")

# Failed technician logins from one address are logged and audited at most this often (with
# a count of the rest).
LOGIN_FAILURE_AUDIT_SECONDS = 10.0


@dataclass(eq=False)
class AdminSession:
    """One open technician connection: its token is re-checked on every request and by
    the revocation poll."""

    ws: ServerConnection
    token_hash: str
    name: str


class Technicians:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.sessions: set[AdminSession] = set()
        # source address -> (when last reported, failed logins since then)
        self._login_failures: dict[str, tuple[float, int]] = {}

    async def disconnect(self, name: str) -> None:
        """After a technician's revocation is committed: close their open connections here
        (other processes close theirs at their next revocation check)."""
        for session in [s for s in self.sessions if s.name == name]:
            await close(session.ws, p.CloseCode.REVOKED, "technician token revoked")

    async def close_revoked(self) -> None:
        sessions = list(self.sessions)
        if not sessions:
            return
        async with self.db.connect() as conn:
            active = await store.active_token_hashes(conn, {s.token_hash for s in sessions})
        for session in sessions:
            if session.token_hash not in active:
                await close(session.ws, p.CloseCode.REVOKED, "technician token revoked")

    async def login_failed(self, source: str) -> None:
        """Logged and audited at most once per LOGIN_FAILURE_AUDIT_SECONDS per address, with
        how many more failed meanwhile. The web console reports its failed sign-ins and API
        calls here too."""
        now = time.monotonic()
        since, suppressed = self._login_failures.get(source, (-LOGIN_FAILURE_AUDIT_SECONDS, 0))
        if now - since < LOGIN_FAILURE_AUDIT_SECONDS:
            self._login_failures[source] = (since, suppressed + 1)
            return
        if len(self._login_failures) > 10_000:
            self._login_failures.clear()
        self._login_failures[source] = (now, 0)
        log.warning("technician login refused from %s: token unknown or revoked "
                    "(%d more refused since the last report)", source, suppressed)
        async with self.db.transaction() as conn:
            await store.record_audit(conn, actor="unknown", action="admin.login_refused",
                                     target=f"address:{source}",
                                     detail={"refused_since_last": suppressed},
                                     now=dt.datetime.now(dt.UTC))

    async def refused(self, actor: str, method: str, reason: str) -> None:
        """A technician request refused for who is asking: logged and audited."""
        log.warning("refused %s to %s: %s", safe_text(method), actor, reason)
        async with self.db.transaction() as conn:
            await store.record_audit(conn, actor=actor, action="admin.refused",
                                     target=f"method:{method[:100]}", detail={"reason": reason},
                                     now=dt.datetime.now(dt.UTC))
