from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from careline.coordinator.policy.calendar import BusinessCalendar, DueRule

VN = BusinessCalendar()  # Asia/Ho_Chi_Minh, Mon-Sat 08:00-17:30, VN holidays
BERLIN = BusinessCalendar("Europe/Berlin", frozenset(range(5)), time(8), time(17, 30), "DE")
CUTOFF = time(15)
HCM = ZoneInfo("Asia/Ho_Chi_Minh")


def vn(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A Ho Chi Minh City local time, as the UTC datetime the code receives."""
    return datetime(year, month, day, hour, minute, tzinfo=HCM).astimezone(UTC)


def berlin(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo("Europe/Berlin")).astimezone(UTC)


@pytest.mark.parametrize(
    ("day", "business"),
    [
        (date(2026, 1, 12), True),  # Monday
        (date(2026, 1, 10), True),  # Saturday is a workday by default
        (date(2026, 1, 11), False),  # Sunday
        (date(2027, 2, 4), False),  # Tết 2027 (lunar calendar) runs Feb 4 .. Feb 10
        (date(2027, 2, 6), False),  # Lunar New Year's Day
        (date(2027, 2, 10), False),
        (date(2027, 2, 11), True),
        (date(2027, 4, 16), False),  # Hùng Kings' Commemoration Day 2027
        (date(2026, 9, 2), False),  # National Day
    ],
)
def test_vietnam_business_days(day, business):
    assert VN.is_business_day(day) is business


@pytest.mark.parametrize(
    ("reported", "due"),
    [
        (vn(2026, 1, 12, 9, 0), vn(2026, 1, 12, 17, 30)),  # Mon before cutoff -> today
        (vn(2026, 1, 12, 6, 0), vn(2026, 1, 12, 17, 30)),  # before opening counts as today
        (vn(2026, 1, 12, 14, 59), vn(2026, 1, 12, 17, 30)),
        (vn(2026, 1, 12, 15, 0), vn(2026, 1, 13, 17, 30)),  # at the cutoff -> next day
        (vn(2026, 1, 12, 23, 30), vn(2026, 1, 13, 17, 30)),  # 16:30 UTC, local is next day
        (vn(2026, 1, 10, 16, 0), vn(2026, 1, 12, 17, 30)),  # Sat after cutoff -> Monday
        (vn(2026, 1, 11, 9, 0), vn(2026, 1, 12, 17, 30)),  # Sunday -> Monday
        (vn(2027, 2, 3, 16, 0), vn(2027, 2, 11, 17, 30)),  # before Tết, after cutoff
        (vn(2027, 2, 5, 9, 0), vn(2027, 2, 11, 17, 30)),  # during Tết
        (vn(2027, 4, 15, 16, 0), vn(2027, 4, 17, 17, 30)),  # Hùng Kings Fri -> Saturday
    ],
)
def test_same_day_due_in_vietnam(reported, due):
    assert VN.same_day_due(reported, CUTOFF) == due
    assert VN.due_at(reported, DueRule(0), CUTOFF) == due


def test_cutoff_after_closing_still_means_before_closing():
    assert VN.same_day_due(vn(2026, 1, 12, 17, 45), time(18)) == vn(2026, 1, 13, 17, 30)


@pytest.mark.parametrize(
    ("reported", "due"),
    [
        (berlin(2025, 3, 28, 14, 0), datetime(2025, 3, 28, 16, 30, tzinfo=UTC)),  # CET
        (berlin(2025, 3, 28, 16, 0), datetime(2025, 3, 31, 15, 30, tzinfo=UTC)),  # CEST Monday
        (berlin(2025, 10, 24, 16, 0), datetime(2025, 10, 27, 16, 30, tzinfo=UTC)),  # back to CET
        (berlin(2025, 4, 17, 16, 0), datetime(2025, 4, 22, 15, 30, tzinfo=UTC)),  # Easter
    ],
)
def test_same_day_due_across_dst_in_berlin(reported, due):
    assert BERLIN.same_day_due(reported, CUTOFF) == due


@pytest.mark.parametrize(
    ("reported", "n", "due"),
    [
        (vn(2026, 1, 12, 9, 0), 1, vn(2026, 1, 13, 17, 30)),
        (vn(2026, 1, 12, 9, 0), 5, vn(2026, 1, 17, 17, 30)),  # Saturday counts
        (vn(2026, 1, 15, 9, 0), 5, vn(2026, 1, 21, 17, 30)),  # Sunday does not
        (vn(2027, 2, 3, 9, 0), 5, vn(2027, 2, 16, 17, 30)),  # Tết skipped
        (vn(2026, 1, 11, 9, 0), 1, vn(2026, 1, 12, 17, 30)),
    ],
)
def test_next_business_days(reported, n, due):
    assert VN.next_business_days(reported, n) == due
    assert VN.due_at(reported, DueRule(n), CUTOFF) == due


@pytest.mark.parametrize(
    ("text", "days", "shown"),
    [
        ("same_day", 0, "same business day if reported before the cutoff, else the next"),
        ("next_business_day", 1, "next business day"),
        ("business_days:1", 1, "next business day"),
        ("business_days:5", 5, "within 5 business days"),
    ],
)
def test_due_rule_parse(text, days, shown):
    rule = DueRule.parse(text)
    assert rule.business_days == days
    assert str(rule) == shown


@pytest.mark.parametrize(
    "text", ["", "today", "business_days", "business_days:0", "business_days:-1", "business_days:x"]
)
def test_due_rule_parse_rejects(text):
    with pytest.raises(ValueError, match="due must be"):
        DueRule.parse(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timezone": "Mars/Olympus"}, "time zone"),
        ({"workdays": frozenset()}, "workdays"),
        ({"workdays": frozenset({7})}, "workdays"),
        ({"opens": time(18)}, "open before"),
        ({"country": "XX"}, "country"),
    ],
)
def test_invalid_calendars(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BusinessCalendar(**kwargs)


def test_naive_times_are_rejected():
    with pytest.raises(ValueError, match="timezone-aware"):
        VN.same_day_due(datetime(2026, 1, 12, 9), CUTOFF)
    with pytest.raises(ValueError, match="n must be >= 1"):
        VN.next_business_days(vn(2026, 1, 12, 9), 0)


moments = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)


@given(moments, st.sampled_from([VN, BERLIN]), st.integers(0, 7))
def test_property_due_is_a_closing_time_after_the_report(reported, calendar, n):
    due = calendar.due_at(reported, DueRule(n), CUTOFF)
    local_due = calendar.local(due)
    assert due.tzinfo is UTC
    assert due > reported
    assert local_due.time() == calendar.closes
    assert calendar.is_business_day(local_due.date())
    reported_day = calendar.local(reported).date()
    between = [
        reported_day + timedelta(days=i) for i in range(1, (local_due.date() - reported_day).days)
    ]
    assert sum(map(calendar.is_business_day, between)) == max(n - 1, 0)
