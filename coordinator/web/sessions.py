"""Web sessions: a technician's token is exchanged once for a random session id.

The browser holds only that id (HttpOnly, Secure, SameSite=Strict cookie); the database holds
its SHA-256 with the technician's token hash, so every coordinator process behind one address
knows the session and a restart keeps it. Every request re-reads the technician's row, so a
revocation or a role change bites on the next click. This module is the policy (lifetimes,
CSRF, redirects, pages) and is pure; coordinator/storage/sessions.py stores the rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

COOKIE = "careline_session"
IDLE = dt.timedelta(hours=8)
LIFETIME = dt.timedelta(hours=24)
TOUCH_EVERY = dt.timedelta(minutes=1)  # last_seen is written at most this often


def id_hash(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


@dataclass
class Session:
    id_hash: str
    token_hash: str
    csrf: str
    lang: str
    timezone: str
    created_at: dt.datetime
    last_seen: dt.datetime
    flash: list[list[str]] = field(default_factory=list)  # [kind, text], shown once

    @classmethod
    def new(cls, token_hash: str, lang: str, timezone: str, now: dt.datetime) -> tuple[str, Session]:
        """A fresh session and the cookie value that names it (only its hash is kept)."""
        cookie = secrets.token_urlsafe(32)
        return cookie, cls(id_hash(cookie), token_hash, secrets.token_urlsafe(32), lang, timezone,
                           now, now)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Session:
        return cls(row["id_hash"], row["token_hash"], row["csrf"], row["lang"], row["timezone"],
                   row["created_at"], row["last_seen"], [list(f) for f in row["flash"]])

    def row(self) -> dict[str, Any]:
        return {"id_hash": self.id_hash, "token_hash": self.token_hash, "csrf": self.csrf,
                "lang": self.lang, "timezone": self.timezone, "created_at": self.created_at,
                "last_seen": self.last_seen, "flash": self.flash}

    def live(self, now: dt.datetime) -> bool:
        """Not idle longer than IDLE, nor older than LIFETIME."""
        return now - self.last_seen <= IDLE and now - self.created_at <= LIFETIME

    def needs_touch(self, now: dt.datetime) -> bool:
        return now - self.last_seen >= TOUCH_EVERY

    def check_csrf(self, submitted: str | None) -> bool:
        return bool(submitted) and secrets.compare_digest(self.csrf, submitted or "")


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
