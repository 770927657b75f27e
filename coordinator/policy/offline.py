"""Is a silent machine missing, or just switched off? Presence facts in, one check out.

Accounting PCs are switched off at 17:30 and over Tết, so silence is counted in the
customer's business time (their hours, workdays, public holidays and own closures), not on
the wall clock: a PC off every night never reaches the limit, one silent through a working
Tuesday afternoon does. A machine whose agent stopped cleanly (someone shut the PC down) is
"off", not "offline", and never fails the check; power loss is the separate
`unclean_shutdown` signal the agent sends when it comes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .calendar import BusinessCalendar

# How silence is counted: `business_hours` (the customer's calendar) or `wall_clock`.
OFFLINE_COUNTS = ("business_hours", "wall_clock")
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class Presence:
    heard: datetime  # last heartbeat, or enrollment if never heard from (UTC)
    off_since: datetime | None = None  # stopped cleanly, and not connected since


def silent_for(presence: Presence, now: datetime, calendar: BusinessCalendar,
               counts: str) -> timedelta:
    """How long the machine has been silent, counted the way the policy says."""
    if counts == "wall_clock":
        return max(now - presence.heard, timedelta(0))
    return calendar.business_time(presence.heard, now)


def offline_check(presence: Presence, now: datetime, *, calendar: BusinessCalendar,
                  limit: timedelta, counts: str) -> tuple[bool, str]:
    """One agent_offline check: (failing, detail for the incident).

    Run for every machine every minute, so its cost must not grow with how long a machine
    has been gone: past the limit it stops counting (the limit is reached within days)."""
    if presence.off_since is not None:
        return False, f"switched off cleanly at {presence.off_since:%Y-%m-%d %H:%M}Z"
    heard = f"last heard from {presence.heard:%Y-%m-%d %H:%M}Z"
    if counts == "wall_clock":
        silent = max(now - presence.heard, timedelta(0))
        return silent > limit, f"{heard}; silent {_hours(silent)} (limit {_hours(limit)})"
    # Silent longer than the limit <=> now is past the first moment with limit + 1 us of
    # business time since (datetimes count in microseconds).
    over = calendar.add_business_time(presence.heard, limit + _TICK)
    if now >= over:
        return True, (f"{heard}; silent over {_hours(limit)} of business time"
                      f" (the limit passed at {over:%Y-%m-%d %H:%M}Z)")
    silent = calendar.business_time(presence.heard, now)
    return False, f"{heard}; silent {_hours(silent)} of business time (limit {_hours(limit)})"


def _hours(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"
