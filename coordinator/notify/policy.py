"""Who hears about what, and when: the pure rules of notification (no I/O).

Everything here takes data and returns data, so it is tested directly and exhaustively
(tests/notify/test_policy.py): which routes match an event, when a notification may go out
(quiet hours, fold windows, one message per incident), which customers' monthly care
reports are due, how retries back off, when a channel turns unhealthy, how a channel is
throttled, and how webhooks are signed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from careline.coordinator.policy.calendar import BusinessCalendar

SEVERITIES = ("low", "medium", "high", "critical")

# Every event a route can name, and what it means.
EVENTS: Mapping[str, str] = {
    "incident.opened": "an incident was opened (with its decision, fee and due time)",
    "incident.escalated": "an incident's decision moved to on-site work",
    "incident.updated": "an incident was decided again (folded into the digest)",
    "incident.overdue": "an open incident passed its due time",
    "visit.created": "an on-site visit was created for an incident",
    "visit.overdue": "an open visit passed its due time",
    "job.failed": "an update job failed, rolled back or was refused on a machine",
    "update.installed": "an update was installed on a machine",
    "rollout.paused": "a rollout paused because a wave failed",
    "rollout.deadline_at_risk": "covered machines still lack a regulation update 2 days before it is due",
    "coverage.expiring": "weekly list of machines whose coverage ends soon (sales)",
    "coverage.ending": "a customer's coverage ends soon, with the renewal offer (customers)",
    "digest.daily": "a daily digest of open work and folded updates",
    "report.care_monthly": "a customer's care report for the month just ended (PDF by e-mail; "
                           "only routes that name it)",
}
# What a customer's own contact may hear about.
CUSTOMER_EVENTS = frozenset({"visit.created", "update.installed", "coverage.ending",
                             "report.care_monthly"})
# ... and what only a customer's contact hears (staff get the weekly coverage.expiring list).
CUSTOMER_ONLY = frozenset({"coverage.ending"})
# Events a route of every event ("*") leaves out: one message per customer each month is
# wanted by few, so a route names it (`--events report.care_monthly`).
NAMED_ONLY = frozenset({"report.care_monthly"})
# Events for a thread (an incident, a visit) that has already been notified go out anyway:
# they say something got worse. Every other repeat is folded into the next digest.
THREAD_BREAKERS = frozenset({"incident.escalated", "incident.overdue", "visit.overdue"})
# Events that come in floods (a site losing power, a wave failing on 40 machines): held for
# the fold window and sent as one message naming the count.
FOLDABLE_INCIDENT_KINDS = frozenset({"agent_offline", "update_failed", "regulation_deadline"})
FOLDABLE_EVENTS = frozenset({"job.failed", "update.installed"})
# Incident kinds worth hearing about only while the customer is at work.
BUSINESS_HOURS_ONLY = frozenset({"agent_offline"})


@dataclass(frozen=True)
class Event:
    """Something happened that someone may want to hear about."""

    kind: str  # a key of EVENTS
    key: str  # unique per occurrence, e.g. "incident:12:opened"
    severity: str
    facts: Mapping[str, Any]
    customer_id: int | None = None
    thread: str = ""  # e.g. "incident:12": one immediate notification per thread
    incident_kind: str = ""  # the incident kind (disk_failing, agent_offline, ...) if any
    # From this severity on it goes out at once, quiet hours or not: the machine's
    # `notify.urgent_from` policy value (a contract may make "high" urgent).
    urgent_from: str = "critical"

    def __post_init__(self) -> None:
        if self.kind not in EVENTS:
            raise ValueError(f"unknown notification event {self.kind!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")
        if self.urgent_from not in SEVERITIES:
            raise ValueError(f"unknown severity {self.urgent_from!r}")

    @property
    def urgent(self) -> bool:
        return SEVERITIES.index(self.severity) >= SEVERITIES.index(self.urgent_from)

    @property
    def fold_key(self) -> str | None:
        """Notifications sharing this key (per recipient) may be sent as one."""
        if self.kind in FOLDABLE_EVENTS or self.incident_kind in FOLDABLE_INCIDENT_KINDS:
            return f"{self.kind}:{self.incident_kind}:{self.customer_id}"
        return None


@dataclass(frozen=True)
class Route:
    recipient_id: int
    events: frozenset[str] | None  # None: every event
    customer_id: int | None = None  # None: every customer
    min_severity: str = "low"
    kinds: frozenset[str] | None = None  # incident kinds; None: any

    @staticmethod
    def parse_list(text: str) -> frozenset[str] | None:
        items = frozenset(part.strip() for part in text.split(",") if part.strip())
        return None if not items or "*" in items else items


@dataclass(frozen=True)
class Recipient:
    id: int
    calendar: BusinessCalendar
    customer_id: int | None = None  # a customer's own contact


def validate_events(events: Iterable[str]) -> None:
    unknown = sorted(set(events) - set(EVENTS))
    if unknown:
        raise ValueError(f"unknown events {unknown}; known: {', '.join(EVENTS)}")


def route_matches(route: Route, recipient: Recipient, event: Event) -> bool:
    if route.events is None and event.kind in NAMED_ONLY:
        return False
    if route.events is not None and event.kind not in route.events:
        return False
    if recipient.customer_id is not None and (
            event.kind not in CUSTOMER_EVENTS or event.customer_id != recipient.customer_id):
        return False
    if recipient.customer_id is None and event.kind in CUSTOMER_ONLY:
        return False
    if route.customer_id is not None and route.customer_id != event.customer_id:
        return False
    if SEVERITIES.index(event.severity) < SEVERITIES.index(route.min_severity):
        return False
    return route.kinds is None or not event.incident_kind or event.incident_kind in route.kinds


def recipients_for(routes: Sequence[Route], recipients: Mapping[int, Recipient],
                   event: Event) -> list[int]:
    """Ids of the recipients some route sends `event` to, each once, in id order."""
    return sorted({r.recipient_id for r in routes if r.recipient_id in recipients
                   and route_matches(r, recipients[r.recipient_id], event)})


def is_open(calendar: BusinessCalendar, now: dt.datetime) -> bool:
    """Within business hours on a business day, in the calendar's zone."""
    local = calendar.local(now)
    return calendar.is_business_day(local.date()) and calendar.opens <= local.time() < calendar.closes


def next_opening(calendar: BusinessCalendar, now: dt.datetime) -> dt.datetime:
    """`now` if open, else the next time business hours begin (UTC)."""
    if is_open(calendar, now):
        return now
    local = calendar.local(now)
    day = local.date()
    if not (calendar.is_business_day(day) and local.time() < calendar.opens):
        day = calendar.next_business_day(day)
    return dt.datetime.combine(day, calendar.opens, tzinfo=calendar.tz).astimezone(dt.UTC)


@dataclass(frozen=True)
class Placement:
    status: str  # "pending" (goes out on its own) or "digest" (waits for the next digest)
    not_before: dt.datetime
    reason: str


def place(event: Event, recipient: Recipient, now: dt.datetime, *, thread_notified: bool,
          customer_open: bool = True) -> Placement:
    """Whether a notification goes out by itself or into the digest, and from when."""
    if thread_notified and event.kind not in THREAD_BREAKERS:
        return Placement("digest", now, f"{event.thread} already notified: folded into the digest")
    if event.incident_kind in BUSINESS_HOURS_ONLY and not customer_open and event.severity != "critical":
        return Placement("digest", now, "outside the customer's business hours")
    if event.severity == "critical":
        return Placement("pending", now, "critical: sent at once, quiet hours or not")
    if event.urgent:
        return Placement("pending", now, f"{event.severity}, urgent from {event.urgent_from} by"
                                         " the customer's policy: sent at once, quiet hours or not")
    at = next_opening(recipient.calendar, now)
    return Placement("pending", at, "in business hours" if at == now else "quiet hours")


def backoff(attempts: int, base: float, cap: float) -> dt.timedelta:
    """Delay before retry number `attempts` (1, 2, ...): doubling from `base`, at most `cap`."""
    return dt.timedelta(seconds=min(cap, base * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class Health:
    healthy: bool
    failures: int


def after_attempt(health: Health, ok: bool, unhealthy_after: int) -> tuple[Health, str | None]:
    """A channel's health after one delivery attempt, and the change to audit, if any."""
    if ok:
        return Health(True, 0), (None if health.healthy else "recovered")
    failures = health.failures + 1
    if health.healthy and failures >= unhealthy_after:
        return Health(False, failures), "unhealthy"
    return Health(health.healthy, failures), None


@dataclass
class Throttle:
    """At most `per_minute` messages per channel in any 60 s (per coordinator process)."""

    sent: dict[int, deque[float]] = field(default_factory=dict)

    def wait(self, channel_id: int, per_minute: int, now: float) -> float:
        """Seconds until the channel may send again (0: now)."""
        window = self.sent.setdefault(channel_id, deque())
        while window and now - window[0] >= 60.0:
            window.popleft()
        if per_minute <= 0 or len(window) < per_minute:
            return 0.0
        return 60.0 - (now - window[0])

    def record(self, channel_id: int, now: float) -> None:
        self.sent.setdefault(channel_id, deque()).append(now)


# ----------------------------------------------------------------------------- care reports
# Days after the 1st on which a month's care report is still queued: a coordinator that was
# down on the 1st sends it when it is back; later, the month is left to `careline report care`.
CARE_REPORT_CATCH_UP_DAYS = 7


def care_report_month(now: dt.datetime, timezone: str,
                      catch_up_days: int = CARE_REPORT_CATCH_UP_DAYS) -> str | None:
    """The month (YYYY-MM) whose care report is due at `now` for a customer in `timezone`:
    the local month just ended, from the local 1st for `catch_up_days` more days; else None."""
    local = now.astimezone(ZoneInfo(timezone)).date()
    if local.day > 1 + catch_up_days:
        return None
    last = local.replace(day=1) - dt.timedelta(days=1)
    return f"{last.year:04d}-{last.month:02d}"


def care_report_key(customer_id: int, month: str) -> str:
    """The event key: one care report per customer and month, whichever process queues it."""
    return f"report:care:{customer_id}:{month}"


def care_reports_due(customers: Iterable[tuple[int, str]], routes: Sequence[Route],
                     recipients: Mapping[int, Recipient], now: dt.datetime,
                     catch_up_days: int = CARE_REPORT_CATCH_UP_DAYS) -> list[tuple[int, str]]:
    """(customer id, month) for each customer, given as (id, time zone), whose care report is
    due at `now` and whom some route sends it to (the customer's opted-in contact, or staff)."""
    due = []
    for customer_id, timezone in customers:
        month = care_report_month(now, timezone, catch_up_days)
        if month is None:
            continue
        probe = Event("report.care_monthly", care_report_key(customer_id, month), "low", {},
                      customer_id=customer_id)
        if recipients_for(routes, recipients, probe):
            due.append((customer_id, month))
    return due


# ----------------------------------------------------------------------------- webhooks
SIGNATURE_HEADER = "X-Careline-Signature"
TIMESTAMP_HEADER = "X-Careline-Timestamp"
DELIVERY_HEADER = "X-Careline-Delivery"
REPLAY_WINDOW_SECONDS = 300


def sign_webhook(secret: bytes, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 over "<timestamp>.<body>": the receiver recomputes it with the shared secret."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_webhook(secret: bytes, timestamp: str, body: bytes, signature: str, now: float,
                   window: int = REPLAY_WINDOW_SECONDS) -> bool:
    """What a receiver checks: a fresh timestamp (no replays) and a matching signature."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > window:
        return False
    return hmac.compare_digest(sign_webhook(secret, ts, body), signature)


# ----------------------------------------------------------------------------- folding
RowT = TypeVar("RowT", bound=Mapping[str, Any])


def fold_groups(rows: Sequence[RowT]) -> list[list[RowT]]:
    """Claimed notifications as messages: rows of one recipient sharing a fold key become
    one message; every other row is a message of its own. A row claimed before (its
    delivery id set) stays in the message it was first part of. Ordered by first id."""
    groups: dict[tuple[int, str], list[RowT]] = {}
    for row in sorted(rows, key=lambda r: r["id"]):
        key = (row["recipient_id"], row["delivery"] or row["fold_key"] or f"#{row['id']}")
        groups.setdefault(key, []).append(row)
    return list(groups.values())


def delivery_id(group: Sequence[Mapping[str, Any]]) -> str:
    """The idempotency key of one message: the same on every retry, after any restart."""
    return next((r["delivery"] for r in group if r["delivery"]), f"n{min(r['id'] for r in group)}")
