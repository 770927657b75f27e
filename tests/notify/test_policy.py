"""coordinator.notify.policy: routes, quiet hours, one message per incident, folding,
backoff, channel health, throttling and webhook signatures (pure code, no I/O)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from careline.coordinator.notify import policy
from careline.coordinator.notify.policy import Event, Recipient, Route
from careline.coordinator.policy.calendar import BusinessCalendar

HCM = BusinessCalendar(timezone="Asia/Ho_Chi_Minh", workdays=frozenset(range(5)),
                       opens=dt.time(8), closes=dt.time(17, 30))
# Tuesday 2026-12-01: 03:00 UTC is 10:00 in Ho Chi Minh City (open), 12:00 UTC is 19:00 (closed).
OPEN = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.UTC)
CLOSED = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def event(kind: str = "incident.opened", severity: str = "high", customer: int | None = 1,
          incident_kind: str = "disk_failing", thread: str = "incident:1") -> Event:
    return Event(kind, f"{thread}:{kind}", severity, {}, customer_id=customer, thread=thread,
                 incident_kind=incident_kind)


STAFF = Recipient(1, HCM)
CONTACT = Recipient(2, HCM, customer_id=1)


def test_unknown_event_or_severity_is_refused():
    with pytest.raises(ValueError, match="unknown notification event"):
        Event("incident.exploded", "k", "high", {})
    with pytest.raises(ValueError, match="unknown severity"):
        Event("incident.opened", "k", "urgent", {})
    with pytest.raises(ValueError, match="unknown events"):
        policy.validate_events(["incident.opened", "nope"])


@pytest.mark.parametrize(("route", "recipient", "ev", "expected"), [
    (Route(1, None), STAFF, event(), True),
    (Route(1, frozenset({"job.failed"})), STAFF, event(), False),
    (Route(1, None, customer_id=2), STAFF, event(customer=1), False),
    (Route(1, None, customer_id=1), STAFF, event(customer=1), True),
    (Route(1, None, min_severity="critical"), STAFF, event(severity="high"), False),
    (Route(1, None, min_severity="high"), STAFF, event(severity="critical"), True),
    (Route(1, None, kinds=frozenset({"agent_offline"})), STAFF, event(), False),
    (Route(1, None, kinds=frozenset({"disk_failing"})), STAFF, event(), True),
    (Route(1, None, kinds=frozenset({"disk_failing"})), STAFF,
     event("rollout.paused", incident_kind=""), True),
    # A customer's contact hears only customer-facing events, and only their own.
    (Route(2, None), CONTACT, event(), False),
    (Route(2, None), CONTACT, event("visit.created"), True),
    (Route(2, None), CONTACT, event("visit.created", customer=7), False),
    (Route(2, None), CONTACT, event("coverage.ending", customer=None), False),
    (Route(2, None), CONTACT, event("coverage.ending"), True),
    (Route(1, None), STAFF, event("coverage.ending"), False),  # sales get coverage.expiring
])
def test_route_matches(route, recipient, ev, expected):
    assert policy.route_matches(route, recipient, ev) is expected


def test_recipients_for_names_each_recipient_once():
    routes = [Route(1, None), Route(1, frozenset({"incident.opened"})), Route(2, None), Route(9, None)]
    assert policy.recipients_for(routes, {1: STAFF, 2: CONTACT}, event()) == [1]
    assert policy.recipients_for(routes, {1: STAFF, 2: CONTACT}, event("visit.created")) == [1, 2]


def test_parse_list():
    assert Route.parse_list("*") is None
    assert Route.parse_list("") is None
    assert Route.parse_list(" a, b ,") == frozenset({"a", "b"})


def test_place_one_message_per_incident_then_digest():
    first = policy.place(event(), STAFF, OPEN, thread_notified=False)
    assert first == policy.Placement("pending", OPEN, "in business hours")
    again = policy.place(event("incident.updated"), STAFF, OPEN, thread_notified=True)
    assert again.status == "digest"
    # Getting worse breaks through: overdue and escalation go out on their own.
    for kind in policy.THREAD_BREAKERS:
        assert policy.place(event(kind), STAFF, OPEN, thread_notified=True).status == "pending"


def test_place_quiet_hours_hold_until_opening_except_critical():
    held = policy.place(event(), STAFF, CLOSED, thread_notified=False)
    assert held.status == "pending"
    assert held.reason == "quiet hours"
    assert held.not_before == dt.datetime(2026, 12, 2, 1, 0, tzinfo=dt.UTC)  # Wed 08:00 +07
    critical = policy.place(event(severity="critical"), STAFF, CLOSED, thread_notified=False)
    assert critical.not_before == CLOSED


def test_machine_offline_outside_customer_hours_goes_to_digest():
    offline = event(incident_kind="agent_offline", severity="medium")
    assert policy.place(offline, STAFF, OPEN, thread_notified=False,
                        customer_open=False).status == "digest"
    assert policy.place(offline, STAFF, OPEN, thread_notified=False,
                        customer_open=True).status == "pending"


def test_fold_keys_group_mass_events_per_customer():
    assert event(incident_kind="agent_offline").fold_key == "incident.opened:agent_offline:1"
    assert event(incident_kind="agent_offline", customer=2).fold_key != event(
        incident_kind="agent_offline").fold_key
    assert event(incident_kind="disk_failing").fold_key is None
    assert event("job.failed", incident_kind="").fold_key == "job.failed::1"


@given(st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2035, 1, 1),
                    timezones=st.just(dt.UTC)))
def test_next_opening_is_open_and_not_before_now(now):
    at = policy.next_opening(HCM, now)
    assert at >= now
    assert policy.is_open(HCM, at)
    if policy.is_open(HCM, now):
        assert at == now
    else:  # nothing open in between: it is the first opening
        assert HCM.local(at).time() == HCM.opens


@given(st.integers(min_value=1, max_value=60))
def test_backoff_doubles_up_to_the_cap(attempts):
    delay = policy.backoff(attempts, 10, 3600)
    assert dt.timedelta(seconds=10) <= delay <= dt.timedelta(seconds=3600)
    assert policy.backoff(attempts + 1, 10, 3600) >= delay
    if attempts <= 5:
        assert delay == dt.timedelta(seconds=10 * 2 ** (attempts - 1))


def test_channel_turns_unhealthy_after_failures_and_recovers():
    health, changes = policy.Health(True, 0), []
    for _ in range(4):
        health, change = policy.after_attempt(health, False, unhealthy_after=3)
        changes.append(change)
    assert changes == [None, None, "unhealthy", None]
    assert health == policy.Health(False, 4)
    health, change = policy.after_attempt(health, True, unhealthy_after=3)
    assert change == "recovered"
    assert health == policy.Health(True, 0)
    assert policy.after_attempt(health, True, 3) == (policy.Health(True, 0), None)


def test_throttle_allows_rate_per_minute():
    throttle = policy.Throttle()
    for t in range(3):
        assert throttle.wait(1, 3, float(t)) == 0
        throttle.record(1, float(t))
    assert throttle.wait(1, 3, 10.0) == pytest.approx(50.0)
    assert throttle.wait(2, 3, 10.0) == 0  # per channel
    assert throttle.wait(1, 3, 60.0) == 0  # the first left the window
    assert throttle.wait(1, 0, 10.0) == 0  # 0: no limit


@given(st.binary(max_size=200), st.binary(min_size=1, max_size=40))
def test_webhook_signature_verifies_and_detects_tampering(body, secret):
    signature = policy.sign_webhook(secret, 1_700_000_000, body)
    assert policy.verify_webhook(secret, "1700000000", body, signature, 1_700_000_010)
    assert not policy.verify_webhook(secret, "1700000000", body + b"x", signature, 1_700_000_010)
    assert not policy.verify_webhook(secret + b"x", "1700000000", body, signature, 1_700_000_010)
    # The timestamp is signed: changing it breaks the signature; an old one is a replay.
    assert not policy.verify_webhook(secret, "1700000001", body, signature, 1_700_000_010)
    assert not policy.verify_webhook(secret, "1700000000", body, signature, 1_700_000_000 + 301)
    assert not policy.verify_webhook(secret, "soon", body, signature, 1_700_000_010)


def test_fold_groups_and_stable_delivery_ids():
    rows: list[dict[str, Any]] = [
        {"id": 5, "recipient_id": 1, "fold_key": "f", "delivery": None},
        {"id": 3, "recipient_id": 1, "fold_key": "f", "delivery": None},
        {"id": 4, "recipient_id": 2, "fold_key": "f", "delivery": None},
        {"id": 6, "recipient_id": 1, "fold_key": None, "delivery": None},
        {"id": 7, "recipient_id": 1, "fold_key": "f", "delivery": "n2"},  # claimed before
        {"id": 2, "recipient_id": 1, "fold_key": "f", "delivery": "n2"},
    ]
    groups = policy.fold_groups(rows)
    assert [[r["id"] for r in g] for g in groups] == [[2, 7], [3, 5], [4], [6]]
    assert [policy.delivery_id(g) for g in groups] == ["n2", "n3", "n4", "n6"]


@pytest.mark.parametrize("severity", policy.SEVERITIES)
@pytest.mark.parametrize("urgent_from", policy.SEVERITIES)
def test_a_customer_policy_can_make_lower_severities_ignore_quiet_hours(severity, urgent_from):
    """`notify.urgent_from` (per customer, site or machine): from that severity on an incident
    notification goes out at once at night; below it, it waits for the opening."""
    placed = policy.place(dataclasses.replace(event(severity=severity), urgent_from=urgent_from),
                          STAFF, CLOSED, thread_notified=False)
    urgent = policy.SEVERITIES.index(severity) >= policy.SEVERITIES.index(urgent_from)
    assert placed.status == "pending"
    assert (placed.not_before == CLOSED) == (urgent or severity == "critical")
    if urgent and severity != "critical":
        assert f"urgent from {urgent_from}" in placed.reason
    # Inside business hours nothing changes; one message per incident still holds.
    assert policy.place(dataclasses.replace(event(severity=severity), urgent_from=urgent_from),
                        STAFF, OPEN, thread_notified=False).not_before == OPEN
    assert policy.place(dataclasses.replace(event(severity=severity), urgent_from=urgent_from),
                        STAFF, CLOSED, thread_notified=True).status == "digest"


def test_urgent_from_must_be_a_severity():
    with pytest.raises(ValueError, match="unknown severity"):
        Event("incident.opened", "k", "high", {}, urgent_from="urgent")


# ----------------------------------------------------------------------------- care reports
def test_care_report_month_is_the_local_month_just_ended() -> None:
    # 17:00 UTC on 30 November is already 1 December in Ho Chi Minh City (UTC+7), not in UTC.
    turn = dt.datetime(2026, 11, 30, 17, 0, tzinfo=dt.UTC)
    assert policy.care_report_month(turn, "Asia/Ho_Chi_Minh") == "2026-11"
    assert policy.care_report_month(turn, "UTC") is None
    assert policy.care_report_month(turn - dt.timedelta(seconds=1), "Asia/Ho_Chi_Minh") is None
    # January's report is December's of the year before.
    assert policy.care_report_month(dt.datetime(2027, 1, 1, 5, tzinfo=dt.UTC), "UTC") == "2026-12"
    # A coordinator down on the 1st catches up for a week, then leaves the month alone.
    assert policy.care_report_month(dt.datetime(2026, 12, 8, 12, tzinfo=dt.UTC), "UTC") == "2026-11"
    assert policy.care_report_month(dt.datetime(2026, 12, 9, 0, tzinfo=dt.UTC), "UTC") is None
    assert policy.care_report_month(dt.datetime(2026, 12, 2, tzinfo=dt.UTC), "UTC",
                                    catch_up_days=0) is None


@given(st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1),
                    timezones=st.just(dt.UTC)),
       st.sampled_from(["UTC", "Asia/Ho_Chi_Minh", "America/Los_Angeles", "Pacific/Kiritimati"]))
def test_care_report_month_is_always_the_month_before(now: dt.datetime, zone: str) -> None:
    from zoneinfo import ZoneInfo

    month = policy.care_report_month(now, zone)
    local = now.astimezone(ZoneInfo(zone)).date()
    assert (month is not None) == (local.day <= 1 + policy.CARE_REPORT_CATCH_UP_DAYS)
    if month is not None:
        year, number = map(int, month.split("-"))
        assert (year * 12 + number) + 1 == local.year * 12 + local.month


def test_care_reports_due_only_for_customers_someone_is_routed() -> None:
    first = dt.datetime(2026, 12, 1, 2, tzinfo=dt.UTC)  # 09:00 in Ho Chi Minh City
    customers = [(1, "Asia/Ho_Chi_Minh"), (2, "Asia/Ho_Chi_Minh"), (3, "America/Los_Angeles")]
    # Customer 1's contact opted in to the report; customer 2's contact only to visits.
    contact_1, contact_2 = Recipient(2, HCM, customer_id=1), Recipient(3, HCM, customer_id=2)
    routes = [Route(2, frozenset({"report.care_monthly"}), customer_id=1),
              Route(3, frozenset({"visit.created"}), customer_id=2)]
    people = {2: contact_1, 3: contact_2}
    assert policy.care_reports_due(customers, routes, people, first) == [(1, "2026-11")]
    assert policy.care_reports_due(customers, routes, people, first - dt.timedelta(hours=10)) == []
    # A manager routed the event for every customer: each customer whose 1st it is, once.
    manager = [*routes, Route(1, frozenset({"report.care_monthly"}))]
    people[1] = STAFF
    assert policy.care_reports_due(customers, manager, people, first) == [(1, "2026-11"),
                                                                          (2, "2026-11")]
    later = first + dt.timedelta(hours=10)  # 1 December in Los Angeles too
    assert [c for c, _ in policy.care_reports_due(customers, manager, people, later)] == [1, 2, 3]
    # A route of everything ("*") leaves it out (a report per customer is asked for by name),
    # and so does one keyed to another customer.
    assert policy.care_reports_due(customers[:1], [Route(1, None)], {1: STAFF}, first) == []
    assert policy.route_matches(Route(1, None), STAFF, event("incident.opened"))
    assert policy.care_reports_due(customers[:1], [Route(1, None, customer_id=2)], {1: STAFF},
                                   first) == []
    # Customers may opt in to it; the key is one per customer and month.
    assert "report.care_monthly" in policy.CUSTOMER_EVENTS
    assert policy.care_report_key(1, "2026-11") != policy.care_report_key(2, "2026-11")
