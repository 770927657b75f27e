"""Nights, weekends and holidays are not incidents: agent_offline checks counted in the
customer's business time, simulated over a month with the default policy's thresholds."""

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from careline.coordinator.policy.alerts import Transition, observe
from careline.coordinator.policy.calendar import BusinessCalendar
from careline.coordinator.policy.config import load_policy
from careline.coordinator.policy.offline import Presence, offline_check, silent_for

POLICY = load_policy()
RULE = POLICY.alerts["agent_offline"]
VN = BusinessCalendar()
HCM = ZoneInfo("Asia/Ho_Chi_Minh")
SWEEP = timedelta(minutes=20)


def vn(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=HCM).astimezone(UTC)


def simulate(start, end, is_on, *, clean_stop, calendar=VN, counts="business_hours"):
    """Sweep every 20 minutes from `start` to `end`; `is_on(local)` says whether the PC
    runs (and heartbeats) then. Returns the local times an incident would open."""
    state, opened = None, []
    heard, off_since, now = start, None, start
    while now < end:
        if is_on(now.astimezone(HCM)):
            heard, off_since = now, None
        elif clean_stop and off_since is None:
            off_since = now
        failing, _ = offline_check(Presence(heard, off_since), now, calendar=calendar,
                                   limit=POLICY.offline_incident_after, counts=counts)
        state, transition = observe(state, failing, now, RULE)
        if transition is Transition.OPEN:
            opened.append(now.astimezone(HCM))
        now += SWEEP
    return opened


def office_hours(local):
    """On 07:45-17:40 on business days, off every night, Sunday and holiday."""
    return VN.is_business_day(local.date()) and time(7, 45) <= local.time() < time(17, 40)


@pytest.mark.parametrize("clean_stop", [True, False])
def test_pc_off_every_night_for_a_month_opens_nothing(clean_stop):
    assert simulate(vn(2026, 3, 1), vn(2026, 4, 1), office_hours, clean_stop=clean_stop) == []


def test_the_same_month_on_the_wall_clock_opens_every_night():
    opened = simulate(vn(2026, 3, 2), vn(2026, 3, 9), office_hours, clean_stop=False,
                      counts="wall_clock")
    assert len(opened) >= 5  # what the old rule did: an incident a night


def test_silent_five_business_hours_on_a_tuesday_opens_one():
    def crashed_at_nine(local):
        return local < datetime(2026, 3, 3, 9, 0, tzinfo=HCM)  # Tuesday 09:00

    opened = simulate(vn(2026, 3, 3, 8, 0), vn(2026, 3, 4, 8, 0), crashed_at_nine,
                      clean_stop=False)
    assert len(opened) == 1
    assert opened[0].date() == date(2026, 3, 3)
    assert time(13, 0) <= opened[0].time() <= time(14, 20)  # 4 h limit + 3 checks


def test_shut_down_cleanly_is_off_all_day_long():
    def shut_down_at_nine(local):
        return local < datetime(2026, 3, 3, 9, 0, tzinfo=HCM)

    assert simulate(vn(2026, 3, 3, 8, 0), vn(2026, 3, 6, 8, 0), shut_down_at_nine,
                    clean_stop=True) == []


@pytest.mark.parametrize("clean_stop", [True, False])
def test_tet_week_opens_nothing(clean_stop):
    """Tết 2027 (Feb 4-10 by the lunar calendar): off from Feb 3 evening to Feb 11."""
    assert simulate(vn(2027, 1, 25), vn(2027, 2, 20), office_hours, clean_stop=clean_stop) == []


def test_customer_closure_week_opens_nothing_but_an_open_day_does():
    closed = BusinessCalendar(closures=((date(2026, 3, 9), date(2026, 3, 14)),))

    def away_the_second_week(local):
        return office_hours(local) and not date(2026, 3, 9) <= local.date() <= date(2026, 3, 14)

    assert simulate(vn(2026, 3, 2), vn(2026, 3, 21), away_the_second_week, clean_stop=False,
                    calendar=closed) == []
    opened = simulate(vn(2026, 3, 2), vn(2026, 3, 21), away_the_second_week, clean_stop=False)
    assert [o.date() for o in opened] == [date(2026, 3, 9)]


def test_detail_says_off_or_how_long_silent():
    heard = vn(2026, 3, 3, 9, 0)
    failing, detail = offline_check(Presence(heard), vn(2026, 3, 3, 14, 30), calendar=VN,
                                    limit=timedelta(hours=4), counts="business_hours")
    assert failing
    assert "silent over 4h00m of business time (the limit passed at 2026-03-03 06:00Z)" in detail
    failing, detail = offline_check(Presence(heard), vn(2026, 3, 3, 12, 0), calendar=VN,
                                    limit=timedelta(hours=4), counts="business_hours")
    assert not failing
    assert "silent 3h00m of business time (limit 4h00m)" in detail
    failing, detail = offline_check(Presence(heard, heard), vn(2026, 3, 9), calendar=VN,
                                    limit=timedelta(hours=4), counts="business_hours")
    assert not failing
    assert detail.startswith("switched off cleanly")
    assert silent_for(Presence(heard), vn(2026, 3, 3, 8, 0), VN, "wall_clock") == timedelta(0)


@given(st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31),
                    timezones=st.just(UTC)),
       st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)),
       st.sampled_from([timedelta(hours=4), timedelta(minutes=1), timedelta(hours=72)]))
def test_property_failing_is_exactly_silent_longer_than_the_limit(heard, span, limit):
    failing, _ = offline_check(Presence(heard), heard + span, calendar=VN, limit=limit,
                               counts="business_hours")
    assert failing == (VN.business_time(heard, heard + span) > limit)
