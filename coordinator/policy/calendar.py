"""Business calendars: when work is due, counted in the customer's own time zone.

Times come in and go out as UTC-aware datetimes (storage and wire); the customer's local time
is used only inside to find business days and closing time. Public holidays come from the
`holidays` package (Vietnam's Tết and Hùng Kings follow the lunar calendar), never hard-coded.

A due time in days is always a closing time: "same day" is today's close if the report came
in on a business day before the cutoff, else the next business day's close; "N business
days" is the close of the N-th business day after the day of the report. A response target
in hours ("business_hours:4", a hospital's contract) is N hours of business time after the
report.

Business *time* is the part of a span that falls inside opening hours on business days: what
an offline machine is charged with (a PC switched off at night or over Tết is not missing
work), and how far a due time moves when its clock was paused waiting on the customer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

_DAY = timedelta(days=1)


@lru_cache(maxsize=128)
def _holidays(country: str, year: int) -> frozenset[date]:
    """One country's public holidays in one year (building them is slow, so cached)."""
    return frozenset(holidays.country_holidays(country, years=year))


@dataclass(frozen=True)
class DueRule:
    """When an action is due: `business_days` = 0 means the same day (subject to the
    cutoff), unless `business_hours` (> 0) sets a response target in hours instead."""

    business_days: int
    business_hours: int = 0

    @classmethod
    def parse(cls, text: str) -> DueRule:
        """'same_day' | 'next_business_day' | 'business_days:N' | 'business_hours:N' (N >= 1)."""
        if text == "same_day":
            return cls(0)
        if text == "next_business_day":
            return cls(1)
        prefix, _, count = text.partition(":")
        if prefix == "business_days" and count.isdigit() and int(count) >= 1:
            return cls(int(count))
        if prefix == "business_hours" and count.isdigit() and int(count) >= 1:
            return cls(0, int(count))
        raise ValueError(
            "due must be 'same_day', 'next_business_day', 'business_days:N' or"
            f" 'business_hours:N', got {text!r}"
        )

    @property
    def uses_cutoff(self) -> bool:
        return self.business_days == 0 and not self.business_hours

    def describe(self) -> tuple[str, dict[str, int]]:
        """The rule in English words with its numbers apart (a message id to translate)."""
        if self.business_hours:
            return "within {hours} business hours", {"hours": self.business_hours}
        if self.business_days == 0:
            return "same business day if reported before the cutoff, else the next", {}
        if self.business_days == 1:
            return "next business day", {}
        return "within {days} business days", {"days": self.business_days}

    def __str__(self) -> str:
        words, numbers = self.describe()
        return words.format(**numbers)


@dataclass(frozen=True)
class BusinessCalendar:
    """A customer's working week, hours, holidays and time zone."""

    timezone: str = "Asia/Ho_Chi_Minh"
    workdays: frozenset[int] = frozenset(range(6))  # Monday = 0; default Mon-Sat
    opens: time = time(8, 0)
    closes: time = time(17, 30)
    country: str = "VN"  # holidays.country_holidays code
    # The customer's own closures (company holiday, Tết week, moving office): inclusive
    # local dates, (first, last).
    closures: tuple[tuple[date, date], ...] = ()

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r}") from None
        if not self.workdays or not self.workdays <= frozenset(range(7)):
            raise ValueError("workdays must be a non-empty set of weekdays 0 (Mon) .. 6 (Sun)")
        if any(first > last for first, last in self.closures):
            raise ValueError("a closure must not end before it starts")
        if self.opens >= self.closes:
            raise ValueError("business hours must open before they close")
        try:
            _holidays(self.country, 2000)
        except NotImplementedError:
            raise ValueError(f"no public holiday calendar for country {self.country!r}") from None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def local(self, moment: datetime) -> datetime:
        """`moment` (UTC-aware) in the customer's time zone."""
        if moment.tzinfo is None:
            raise ValueError("times must be timezone-aware (UTC)")
        return moment.astimezone(self.tz)

    def is_business_day(self, day: date) -> bool:
        """`day` is a local date on a workday, not a public holiday nor a customer closure."""
        return (
            day.weekday() in self.workdays
            and day not in _holidays(self.country, day.year)
            and not any(first <= day <= last for first, last in self.closures)
        )

    def next_business_day(self, day: date) -> date:
        """The first business day strictly after local date `day`."""
        day += _DAY
        while not self.is_business_day(day):
            day += _DAY
        return day

    def closing(self, day: date) -> datetime:
        """Closing time of local date `day`, in UTC."""
        return datetime.combine(day, self.closes, tzinfo=self.tz).astimezone(UTC)

    def same_day_due(self, reported_at: datetime, cutoff: time) -> datetime:
        """Today's close if reported on a business day before `cutoff` (and before closing),
        else the next business day's close."""
        local = self.local(reported_at)
        day = local.date()
        if self.is_business_day(day) and local.time() < min(cutoff, self.closes):
            return self.closing(day)
        return self.closing(self.next_business_day(day))

    def next_business_days(self, reported_at: datetime, n: int) -> datetime:
        """Close of the n-th business day after the local day of the report (n >= 1)."""
        if n < 1:
            raise ValueError("n must be >= 1")
        day = self.local(reported_at).date()
        for _ in range(n):
            day = self.next_business_day(day)
        return self.closing(day)

    def due_at(self, reported_at: datetime, rule: DueRule, cutoff: time) -> datetime:
        if rule.business_hours:
            return self.add_business_time(reported_at, timedelta(hours=rule.business_hours))
        if rule.business_days == 0:
            return self.same_day_due(reported_at, cutoff)
        return self.next_business_days(reported_at, rule.business_days)

    # ------------------------------------------------------------------ business time
    def _hours(self, day: date) -> tuple[datetime, datetime]:
        """Opening and closing of local date `day`, in UTC (zoneinfo resolves DST)."""
        tz = self.tz
        return (datetime.combine(day, self.opens, tzinfo=tz).astimezone(UTC),
                datetime.combine(day, self.closes, tzinfo=tz).astimezone(UTC))

    def business_time(self, start: datetime, end: datetime) -> timedelta:
        """How much of [start, end) lies in business hours (zero when end <= start)."""
        total = timedelta(0)
        if end <= start:
            return total
        day, last = self.local(start).date(), self.local(end).date()
        while day <= last:
            if self.is_business_day(day):
                opens, closes = self._hours(day)
                overlap = min(closes, end) - max(opens, start)
                if overlap > timedelta(0):
                    total += overlap
            day += _DAY
        return total

    def add_business_time(self, start: datetime, amount: timedelta) -> datetime:
        """The first moment by which `amount` of business time has passed since `start`."""
        if amount < timedelta(0):
            raise ValueError("amount must not be negative")
        if amount == timedelta(0):
            return start
        day = self.local(start).date()
        while True:
            if self.is_business_day(day):
                opens, closes = self._hours(day)
                begin = max(opens, start)
                if closes > begin:
                    if begin + amount <= closes:
                        return begin + amount
                    amount -= closes - begin
            day += _DAY
