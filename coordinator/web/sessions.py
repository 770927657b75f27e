"""Server-side web sessions: a technician's token is exchanged once for a random session id.

The browser holds only the session id (HttpOnly, Secure, SameSite=Strict cookie); the token's
hash stays here, and every request re-reads that technician's row, so a revocation or a role
change bites on the next click. Pure: no I/O, the clock is injected.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "careline_session"
IDLE_SECONDS = 8 * 3600.0
LIFETIME_SECONDS = 24 * 3600.0
MAX_SESSIONS = 10_000


@dataclass
class Session:
    id: str
    technician: str
    token_hash: str
    csrf: str
    lang: str
    timezone: str
    created: float
    last_seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, text) shown once

    def check_csrf(self, submitted: str | None) -> bool:
        return bool(submitted) and secrets.compare_digest(self.csrf, submitted or "")

    def pop_flash(self) -> list[tuple[str, str]]:
        shown, self.flash = self.flash, []
        return shown


class Sessions:
    def __init__(self, clock: Callable[[], float] = time.monotonic, idle: float = IDLE_SECONDS,
                 lifetime: float = LIFETIME_SECONDS) -> None:
        self._clock, self._idle, self._lifetime = clock, idle, lifetime
        self._by_id: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def open(self, technician: str, token_hash: str, lang: str, timezone: str) -> Session:
        now = self._clock()
        if len(self._by_id) >= MAX_SESSIONS:  # drop the least recently used, never grow unbounded
            oldest = min(self._by_id.values(), key=lambda s: s.last_seen)
            del self._by_id[oldest.id]
        session = Session(secrets.token_urlsafe(32), technician, token_hash, secrets.token_urlsafe(32),
                          lang, timezone, now, now)
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, touched; None when unknown, idle too long or too old."""
        session = self._by_id.get(session_id or "")
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen > self._idle or now - session.created > self._lifetime:
            del self._by_id[session.id]
            return None
        session.last_seen = now
        return session

    def close(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)

    def close_for(self, token_hash: str) -> int:
        """End every session opened with this token (it was revoked); how many there were."""
        doomed = [s.id for s in self._by_id.values() if s.token_hash == token_hash]
        for session_id in doomed:
            del self._by_id[session_id]
        return len(doomed)


def safe_next(target: str | None, default: str = "/") -> str:
    """A redirect target from a form, only if it is a path on this site (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def page_of(total: int, page: int, size: int) -> tuple[int, int, int]:
    """(page clamped to 1..last, offset, last page) for `total` rows shown `size` at a time."""
    last = max(1, -(-total // size))
    page = min(max(1, page), last)
    return page, (page - 1) * size, last
