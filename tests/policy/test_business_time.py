"""Business time: the part of a span inside the customer's opening hours on business days.

What an offline machine is charged with and how far a paused due time moves; checked on
fixed cases (nights, weekends, Tết, the customer's own closures, DST) and by properties.
"""

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from careline.coordinator.policy.calendar import BusinessCalendar

VN = BusinessCalendar()  # Asia/Ho_Chi_Minh, Mon-Sat 08:00-17:30, VN holidays
BERLIN = BusinessCalendar("Europe/Berlin", frozenset(range(5)), time(8), time(17, 30), "DE")
TET_CLOSED = BusinessCalendar(closures=((date(2027, 2, 1), date(2027, 2, 3)),
                                        (date(2027, 2, 11), date(2027, 2, 13))))
HCM = ZoneInfo("Asia/Ho_Chi_Minh")
H = timedelta(hours=1)


def vn(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=HCM).astimezone(UTC)


def berlin(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo("Europe/Berlin")).astimezone(UTC)


@pytest.mark.parametrize(
    ("calendar", "start", "end", "business"),
    [
        (VN, vn(2026, 1, 13, 17, 30), vn(2026, 1, 14, 8, 0), timedelta(0)),  # a night
        (VN, vn(2026, 1, 13, 17, 0), vn(2026, 1, 14, 9, 0), 1.5 * H),  # night around it
        (VN, vn(2026, 1, 13, 9, 0), vn(2026, 1, 13, 14, 0), 5 * H),  # a Tuesday afternoon
        (VN, vn(2026, 1, 10, 17, 30), vn(2026, 1, 12, 8, 0), timedelta(0)),  # Sat night..Mon
        (VN, vn(2026, 1, 12, 8, 0), vn(2026, 1, 19, 8, 0), 6 * 9.5 * H),  # a week: Mon-Sat
        (VN, vn(2027, 2, 3, 17, 30), vn(2027, 2, 11, 8, 0), timedelta(0)),  # Tết 2027
        (VN, vn(2027, 2, 1, 8, 0), vn(2027, 2, 4, 8, 0), 3 * 9.5 * H),
        (TET_CLOSED, vn(2027, 2, 1, 8, 0), vn(2027, 2, 4, 8, 0), timedelta(0)),  # closed
        (TET_CLOSED, vn(2027, 1, 30, 17, 30), vn(2027, 2, 15, 8, 0), timedelta(0)),
        (VN, vn(2026, 1, 13, 12, 0), vn(2026, 1, 13, 11, 0), timedelta(0)),  # end before start
        # Berlin's clocks go forward on Sunday 2025-03-30: Friday and Monday are full days.
        (BERLIN, berlin(2025, 3, 28, 8, 0), berlin(2025, 3, 31, 17, 30), 19 * H),
        (BERLIN, berlin(2025, 10, 24, 17, 0), berlin(2025, 10, 27, 9, 0), 1.5 * H),
    ],
)
def test_business_time(calendar, start, end, business):
    assert calendar.business_time(start, end) == business


@pytest.mark.parametrize(
    ("calendar", "start", "amount", "end"),
    [
        (VN, vn(2026, 1, 13, 17, 0), 2 * H, vn(2026, 1, 14, 9, 30)),
        (VN, vn(2026, 1, 13, 22, 0), 1 * H, vn(2026, 1, 14, 9, 0)),
        (VN, vn(2026, 1, 10, 17, 0), 1 * H, vn(2026, 1, 12, 8, 30)),  # over Sunday
        (VN, vn(2027, 2, 3, 17, 0), 1 * H, vn(2027, 2, 11, 8, 30)),  # over Tết
        (TET_CLOSED, vn(2027, 2, 3, 17, 0), 1 * H, vn(2027, 2, 15, 9, 0)),  # and closures
        (VN, vn(2026, 1, 13, 10, 0), timedelta(0), vn(2026, 1, 13, 10, 0)),
    ],
)
def test_add_business_time(calendar, start, amount, end):
    assert calendar.add_business_time(start, amount) == end


def test_closures_are_not_business_days_and_must_be_ordered():
    assert not TET_CLOSED.is_business_day(date(2027, 2, 2))
    assert TET_CLOSED.is_business_day(date(2027, 2, 15))
    with pytest.raises(ValueError, match="closure"):
        BusinessCalendar(closures=((date(2027, 2, 3), date(2027, 2, 1)),))
    with pytest.raises(ValueError, match="negative"):
        VN.add_business_time(vn(2026, 1, 13, 10, 0), -H)


moments = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC))
calendars = st.sampled_from([VN, BERLIN, TET_CLOSED])
spans = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=40))


@given(calendars, moments, spans, spans)
def test_property_business_time_is_additive_and_bounded(calendar, start, first, second):
    middle, end = start + first, start + first + second
    whole = calendar.business_time(start, end)
    assert whole == calendar.business_time(start, middle) + calendar.business_time(middle, end)
    assert timedelta(0) <= whole <= end - start


@given(calendars, moments, st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=20)))
def test_property_add_business_time_inverts_business_time(calendar, start, amount):
    end = calendar.add_business_time(start, amount)
    assert end >= start
    assert calendar.business_time(start, end) == amount
    if amount:  # the earliest such moment: a minute less is not enough
        assert calendar.business_time(start, end - timedelta(minutes=1)) < amount


@given(calendars, moments)
def test_property_a_whole_day_is_its_opening_hours_or_nothing(calendar, moment):
    day = calendar.local(moment).date()
    tz = calendar.tz
    midnight = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
    next_midnight = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
    hours = (datetime.combine(day, calendar.closes, tzinfo=tz)
             - datetime.combine(day, calendar.opens, tzinfo=tz))
    expected = hours if calendar.is_business_day(day) else timedelta(0)
    assert calendar.business_time(midnight, next_midnight) == expected


@pytest.mark.parametrize(
    ("reported", "due"),
    [
        (vn(2026, 1, 13, 9, 0), vn(2026, 1, 13, 13, 0)),  # Tuesday morning: same afternoon
        (vn(2026, 1, 13, 16, 0), vn(2026, 1, 14, 10, 30)),  # 1.5 h today, 2.5 h tomorrow
        (vn(2026, 1, 13, 22, 0), vn(2026, 1, 14, 12, 0)),  # at night: from the opening
        (vn(2027, 2, 3, 17, 0), vn(2027, 2, 11, 11, 30)),  # over Tết
    ],
)
def test_response_target_in_business_hours(reported, due):
    from careline.coordinator.policy.calendar import DueRule

    rule = DueRule.parse("business_hours:4")
    assert (rule.business_days, rule.business_hours, str(rule)) == (
        0, 4, "within 4 business hours")
    assert not rule.uses_cutoff
    assert DueRule.parse("same_day").uses_cutoff
    assert VN.due_at(reported, rule, time(15)) == due
