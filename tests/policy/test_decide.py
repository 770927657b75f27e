import itertools
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from careline.coordinator.policy.calendar import BusinessCalendar
from careline.coordinator.policy.config import (
    ACTIONS,
    CATEGORIES,
    SEVERITIES,
    load_policy,
)
from careline.coordinator.policy.decide import Decision, IncidentFacts, MachineState, decide
from careline.coordinator.policy.entitlement import NOTHING, Entitlement

POLICY = load_policy(None)
ONSITE_ACTIONS = {"technician_visit", "onsite_reinstall"}
CAL = POLICY.calendar
HCM = ZoneInfo("Asia/Ho_Chi_Minh")
TODAY = date(2026, 1, 12)  # a Monday


def vn(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=HCM).astimezone(UTC)


MON_9 = vn(2026, 1, 12, 9, 0)
WARRANTY = Entitlement(TODAY, "warranty", POLICY.warranty, ends_on=date(2026, 6, 30))


def maintenance(tier):
    return Entitlement(TODAY, "maintenance", POLICY.tier(tier), ends_on=date(2026, 12, 31))


NONE = Entitlement(TODAY, "not_covered", NOTHING, next_coverage_starts=date(2026, 3, 1))
ENTITLEMENTS = [
    WARRANTY,
    maintenance("basic"),
    maintenance("standard"),
    maintenance("premium"),
    NONE,
]

ONLINE = MachineState(online=True, integrity_restorable=True)
ONLINE_UNHEALTHY = MachineState(online=True, healthy_for_remote=False)
OFFLINE_SHORT = MachineState(online=False, offline_for=timedelta(hours=2))
OFFLINE_LONG = MachineState(online=False, offline_for=timedelta(days=5))
OFFLINE_UNKNOWN = MachineState(online=False)
MACHINES = [ONLINE, ONLINE_UNHEALTHY, OFFLINE_SHORT, OFFLINE_LONG, OFFLINE_UNKNOWN]


def run(category, severity, machine=ONLINE, fix=False, entitlement=WARRANTY, at=MON_9, **kw):
    return decide(
        IncidentFacts(category, severity, at),
        entitlement,
        machine,
        fix_available=fix,
        policy=POLICY,
        calendar=kw.pop("calendar", CAL),
        **kw,
    )


# One input per row of default.toml, in order: (category, severity, machine, fix_available).
ROW_INPUTS = {
    0: ("bug", "medium", ONLINE, True),
    1: ("bug", "medium", ONLINE, False),
    2: ("regulation", "high", ONLINE, True),
    3: ("regulation", "high", OFFLINE_LONG, True),
    4: ("regulation", "medium", OFFLINE_SHORT, True),
    5: ("disk", "low", ONLINE, False),
    6: ("power", "high", ONLINE, False),
    7: ("power", "low", ONLINE, False),
    8: ("virus", "high", ONLINE, False),
    9: ("virus", "critical", ONLINE, False),
    10: ("config", "low", ONLINE, False),
    11: ("other", "critical", OFFLINE_UNKNOWN, False),
    12: ("other", "low", ONLINE, False),
}
# What the customer pays under warranty: remote work is free, on-site costs its fee.
WARRANTY_FEE = {
    "remote_update": 0,
    "remote_reinstall": 0,
    "remote_guidance": 0,
    "physical_media": 0,
    "technician_visit": 800_000,
    "onsite_reinstall": 500_000,
}
EXPECTED_ACTION = {
    0: "remote_update",
    1: "remote_guidance",
    2: "remote_update",
    3: "physical_media",
    4: "remote_guidance",
    5: "onsite_reinstall",
    6: "onsite_reinstall",
    7: "remote_guidance",
    8: "remote_reinstall",
    9: "onsite_reinstall",
    10: "remote_guidance",
    11: "technician_visit",
    12: "remote_guidance",
}


def test_the_table_covers_every_default_rule():
    assert sorted(ROW_INPUTS) == list(range(len(POLICY.rules)))
    assert {i: rule.action for i, rule in enumerate(POLICY.rules)} == EXPECTED_ACTION


@pytest.mark.parametrize("index", range(len(POLICY.rules)))
def test_every_default_rule_under_warranty(index):
    category, severity, machine, fix = ROW_INPUTS[index]
    decision = run(category, severity, machine, fix)
    rule = POLICY.rules[index]
    assert (decision.rule, decision.action) == (index, rule.action)
    assert decision.covered
    assert decision.fee_vnd == WARRANTY_FEE[rule.action]
    assert decision.quote_vnd == POLICY.fees[rule.action]
    assert decision.billable == (decision.fee_vnd > 0)
    assert decision.reasons[1] == f"rules[{index}]: {rule.reason}"


@pytest.mark.parametrize("index", range(len(POLICY.rules)))
def test_every_default_rule_without_coverage_is_billable_not_dropped(index):
    category, severity, machine, fix = ROW_INPUTS[index]
    decision = run(category, severity, machine, fix, entitlement=NONE)
    assert (decision.rule, decision.action) == (index, POLICY.rules[index].action)
    assert not decision.covered
    assert decision.billable
    assert decision.fee_vnd == decision.quote_vnd == POLICY.fees[decision.action] > 0
    assert (
        decision.reasons[0]
        == "Not covered on 2026-01-12; coverage starts 2026-03-01: any action is billable"
    )
    assert decision.reasons[2].startswith(f"Billable {decision.fee_vnd:,} VND: list price")


@pytest.mark.parametrize(
    ("category", "severity", "machine", "fix", "rule"),
    [
        ("bug", "low", ONLINE_UNHEALTHY, True, 1),  # online but cannot take remote work
        ("bug", "high", OFFLINE_LONG, True, 1),
        ("regulation", "low", OFFLINE_UNKNOWN, True, 4),  # offline, but not known to be long
        ("regulation", "low", OFFLINE_LONG, False, 4),  # nothing to post yet
        ("regulation", "low", MachineState(False, offline_for=timedelta(hours=72)), True, 3),
        ("power", "critical", OFFLINE_SHORT, False, 6),
        ("power", "medium", OFFLINE_SHORT, False, 7),  # guidance by phone
        ("virus", "medium", MachineState(online=True, integrity_restorable=False), False, 9),
        ("virus", "low", OFFLINE_SHORT, False, 9),
        ("virus", "high", ONLINE_UNHEALTHY, False, 9),
        ("disk", "critical", OFFLINE_LONG, False, 5),
        ("other", "high", ONLINE, False, 12),
    ],
)
def test_rule_boundaries(category, severity, machine, fix, rule):
    assert run(category, severity, machine, fix).rule == rule


@pytest.mark.parametrize(
    ("entitlement", "fee", "benefit"),
    [
        (WARRANTY, 500_000, "Billable 500,000 VND: warranty does not include a waiver"),
        (maintenance("basic"), 500_000, "Billable 500,000 VND: maintenance:basic does not"),
        (maintenance("standard"), 500_000, "Billable 500,000 VND: maintenance:standard does"),
        (maintenance("premium"), 0, "Free: maintenance:premium includes a waiver"),
        (NONE, 500_000, "Billable 500,000 VND: list price of onsite_reinstall"),
    ],
)
def test_onsite_reinstall_fee_waiver(entitlement, fee, benefit):
    decision = run("disk", "high", entitlement=entitlement)
    assert decision.action == "onsite_reinstall"
    assert (decision.fee_vnd, decision.quote_vnd) == (fee, 500_000)
    assert decision.billable == (fee > 0)
    assert decision.reasons[2].startswith(benefit)


@pytest.mark.parametrize(
    ("tier", "category", "fix", "fee"),
    [
        ("basic", "virus", False, 300_000),  # basic has no remote fixes
        ("basic", "config", False, 100_000),
        ("basic", "bug", True, 0),  # but it has bug fixes ...
        ("basic", "regulation", True, 0),  # ... and regulation updates
        ("standard", "virus", False, 0),
    ],
)
def test_what_tiers_include(tier, category, fix, fee):
    assert run(category, "medium", fix=fix, entitlement=maintenance(tier)).fee_vnd == fee


@pytest.mark.parametrize(
    ("tier", "used", "fee"),
    [("standard", 0, 0), ("standard", 1, 800_000), ("premium", 3, 0), ("premium", 4, 800_000)],
)
def test_technician_visits_count_against_the_yearly_allowance(tier, used, fee):
    decision = run("other", "critical", entitlement=maintenance(tier), onsite_visits_used=used)
    assert decision.action == "technician_visit"
    assert decision.fee_vnd == fee
    assert f"on-site visits ({used} of" in decision.reasons[2]


@pytest.mark.parametrize(
    ("reported", "category", "due"),
    [
        (vn(2026, 1, 12, 14, 59), "disk", vn(2026, 1, 12, 17, 30)),  # before the cutoff
        (vn(2026, 1, 12, 15, 1), "disk", vn(2026, 1, 13, 17, 30)),  # after it
        (vn(2026, 1, 10, 16, 0), "disk", vn(2026, 1, 12, 17, 30)),  # Sat late -> Monday
        (vn(2026, 1, 11, 8, 0), "disk", vn(2026, 1, 12, 17, 30)),  # Sunday -> Monday
        (vn(2027, 2, 3, 16, 0), "disk", vn(2027, 2, 11, 17, 30)),  # over Tết 2027
        (vn(2026, 1, 12, 9, 0), "config", vn(2026, 1, 13, 17, 30)),  # remote: next day
        (vn(2026, 1, 10, 9, 0), "config", vn(2026, 1, 12, 17, 30)),
    ],
)
def test_due_times(reported, category, due):
    assert run(category, "high", at=reported).due_at == due


def test_physical_media_due_in_five_business_days():
    decision = run("regulation", "low", OFFLINE_LONG, True)
    assert decision.action == "physical_media"
    assert decision.due_at == vn(2026, 1, 17, 17, 30)  # Tue..Sat
    assert decision.reasons[3] == "Due 2026-01-17 17:30 Asia/Ho_Chi_Minh: within 5 business days"


def test_customer_calendar_is_used():
    berlin = BusinessCalendar("Europe/Berlin", frozenset(range(5)), time(9), time(17), "DE")
    reported = datetime(2026, 1, 16, 13, 0, tzinfo=UTC)  # Friday 14:00 in Berlin
    decision = run("disk", "high", at=reported, calendar=berlin)
    assert decision.due_at == datetime(2026, 1, 16, 16, 0, tzinfo=UTC)
    late = run("disk", "high", at=reported + timedelta(hours=2), calendar=berlin)
    assert late.due_at == datetime(2026, 1, 19, 16, 0, tzinfo=UTC)  # Monday, no Saturday work


def test_reasons_in_order_and_to_dict():
    decision = run("virus", "high", at=vn(2026, 1, 12, 10, 5))
    assert decision.reasons == (
        "Covered by warranty until 2026-06-30",
        "rules[8]: " + POLICY.rules[8].reason,
        "Free: warranty includes remote fixes",
        "Due 2026-01-12 17:30 Asia/Ho_Chi_Minh: same business day"
        " (reported 10:05, before the 15:00 cutoff)",
    )
    late = run("virus", "high", at=vn(2026, 1, 12, 16, 0))
    assert late.reasons[3] == (
        "Due 2026-01-13 17:30 Asia/Ho_Chi_Minh: next business day"
        " (reported Mon 2026-01-12 16:00, after the 15:00 cutoff or not a business day)"
    )
    assert decision.to_dict() == {
        "action": "remote_reinstall",
        "covered": True,
        "billable": False,
        "fee_vnd": 0,
        "quote_vnd": 300_000,
        "due_at": "2026-01-12T10:30:00+00:00",
        "reasons": list(decision.reasons),
        "explanation": [r.to_dict() for r in decision.explanation],
        "rule": 8,
    }
    soon = Entitlement(TODAY, "warranty", POLICY.warranty, ends_on=TODAY, expiring_soon=True)
    assert run("bug", "low", entitlement=soon).reasons[0].endswith("(expiring soon)")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"category": "hardware"}, "category"),
        ({"severity": "urgent"}, "severity"),
        ({"reported_at": datetime(2026, 1, 12, 9)}, "timezone-aware"),
    ],
)
def test_invalid_incident_facts(kwargs, message):
    facts = {"category": "bug", "severity": "low", "reported_at": MON_9} | kwargs
    with pytest.raises(ValueError, match=message):
        IncidentFacts(**facts)


def check_invariants(decision: Decision, entitlement: Entitlement, reported: datetime) -> None:
    assert decision.action in ACTIONS
    assert decision.quote_vnd == POLICY.fees[decision.action]
    assert decision.billable == (decision.fee_vnd > 0)
    assert decision.fee_vnd in (0, decision.quote_vnd)
    assert decision.covered == entitlement.covered
    if not entitlement.covered:
        assert decision.fee_vnd == decision.quote_vnd
    if entitlement is WARRANTY:
        assert decision.fee_vnd == WARRANTY_FEE[decision.action]
    assert decision.due_at > reported
    assert CAL.local(decision.due_at).time() == CAL.closes
    if decision.action in ONSITE_ACTIONS:
        assert decision.due_at <= CAL.same_day_due(reported, POLICY.same_day_cutoff)
    assert len(decision.reasons) == 4
    assert decision.reasons[1].startswith(f"rules[{decision.rule}]: ")


def test_exhaustive_inputs_always_decide_and_reach_every_rule():
    hit = set()
    for category, severity, machine, fix, restorable, entitlement in itertools.product(
        CATEGORIES, SEVERITIES, MACHINES, [False, True], [False, True], ENTITLEMENTS
    ):
        machine = MachineState(
            machine.online, machine.healthy_for_remote, machine.offline_for, restorable
        )
        decision = run(category, severity, machine, fix, entitlement)
        check_invariants(decision, entitlement, MON_9)
        hit.add(decision.rule)
    assert hit == set(range(len(POLICY.rules)))  # no rule is shadowed by those above it


moments = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)


@given(
    st.sampled_from(CATEGORIES),
    st.sampled_from(SEVERITIES),
    st.sampled_from(MACHINES),
    st.booleans(),
    st.sampled_from(ENTITLEMENTS),
    moments,
)
def test_property_decisions_are_consistent(category, severity, machine, fix, entitlement, at):
    check_invariants(run(category, severity, machine, fix, entitlement, at=at), entitlement, at)
