"""Policy overrides: vendor file -> customer -> site -> machine, validated like the file."""

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from careline.coordinator.policy.calendar import BusinessCalendar
from careline.coordinator.policy.config import load_policy_data
from careline.coordinator.policy.decide import IncidentFacts, MachineState, decide
from careline.coordinator.policy.entitlement import NOTHING, Entitlement
from careline.coordinator.policy.overrides import PolicyLayers, chain, parse_assignment, target
from careline.shared.errors import ConfigError

DEFAULT, _ = load_policy_data()
VENDOR = {"fees": {"onsite_reinstall_vnd": 550_000, "technician_visit_vnd": 900_000}}
LAYERS = PolicyLayers(DEFAULT, VENDOR)
FEE = "fees.onsite_reinstall_vnd"


def fee(overrides=()):
    return LAYERS.resolve(overrides).fees["onsite_reinstall"]


def test_each_level_overrides_the_one_above_and_falls_back_when_unset():
    assert PolicyLayers(DEFAULT).resolve().fees["onsite_reinstall"] == 500_000  # default
    assert fee() == 550_000  # vendor file
    customer = ("customer", FEE, 450_000)
    site = ("site", FEE, 400_000)
    machine = ("machine", FEE, 0)
    assert fee([customer]) == 450_000
    assert fee([customer, site]) == 400_000
    assert fee([customer, site, machine]) == 0
    assert fee([customer, machine]) == 0  # no site override: the machine's still wins
    assert fee([site]) == 400_000
    policy = LAYERS.resolve([customer, site])
    assert policy.source(FEE) == "site"
    assert policy.source("fees.technician_visit_vnd") == "vendor"
    assert policy.source("fees.remote_update_vnd") == "default"


def test_chain_orders_customer_site_machine_and_skips_missing_levels():
    by_target = {
        target("machine", "ag-1"): {FEE: 1},
        target("customer", 3): {FEE: 3, "alerts.disk_full.open_after": 5},
        target("site", 7): {FEE: 7},
        target("customer", 4): {FEE: 4},
    }
    assert chain(by_target, 3, 7, "ag-1") == [
        ("customer", "alerts.disk_full.open_after", 5), ("customer", FEE, 3),
        ("site", FEE, 7), ("machine", FEE, 1)]
    assert chain(by_target, 3, None, "ag-2") == [
        ("customer", "alerts.disk_full.open_after", 5), ("customer", FEE, 3)]
    assert chain(by_target, 3) == chain(by_target, 3, None, None)
    with pytest.raises(ConfigError, match="unknown override level"):
        target("vendor", 1)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("fees.onsite_reinstal_vnd", 1, "unknown policy key 'fees.onsite_reinstal_vnd'"),
        ("fees", 1, "unknown policy key 'fees'"),
        (FEE, "cheap", "fees.onsite_reinstall_vnd must be a number, got 'cheap'"),
        (FEE, True, "fees.onsite_reinstall_vnd must be a number, got True"),
        ("alerts.disk_full.open_after", "2", "must be a number"),
        ("due.same_day_cutoff", 16, "due.same_day_cutoff must be a string, got 16"),
        ("due.workdays", "mon", "due.workdays must be a list"),
        ("tiers.premium.onsite_visits_per_year", 9, "tiers.premium.onsite_visits_per_year"
         " cannot be overridden"),
        ("kinds.disk_full.severity", "low", "cannot be overridden"),
        ("due.timezone", "Asia/Bangkok", "set the customer's time zone instead"),
        ("rules[5].category", "virus", "rules[5].category cannot be overridden (of a rule,"
         " only action and due)"),
    ],
)
def test_bad_overrides_are_refused_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        LAYERS.check(key, value)
    with pytest.raises(ConfigError):
        LAYERS.resolve([("customer", key, value)])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (FEE, -1, "fees.onsite_reinstall_vnd must be an integer >= 0"),
        (FEE, 1.5, "fees.onsite_reinstall_vnd must be an integer"),
        ("alerts.disk_full.open_after", 0, "alerts.disk_full.open_after must be an integer >= 1"),
        ("due.same_day_cutoff", "3pm", "due.same_day_cutoff must be a time"),
        ("due.opens", "18:00", "business hours must open before they close"),
        ("rules[5].due", "tomorrow", "rules[5].due: due must be"),
        ("rules[5].action", "pray", "rules[5].action: unknown value 'pray'"),
        ("machine.offline_counts", "sometimes", "machine.offline_counts: unknown value"),
    ],
)
def test_values_are_validated_as_a_whole_policy(key, value, message):
    LAYERS.check(key, value)  # the right type ...
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")) as refused:
        LAYERS.resolve([("customer", key, value)])  # ... but not a valid policy
    assert f"customer {key}" in str(refused.value)


def test_rules_due_and_lists_can_be_overridden():
    policy = LAYERS.resolve([("customer", "rules[5].due", "next_business_day"),
                             ("machine", "due.workdays", ["mon", "tue", "wed", "thu", "fri"])])
    assert policy.rules[5].due.business_days == 1
    assert policy.calendar.workdays == frozenset(range(5))
    assert policy.source("rules[5].due") == "customer"
    assert LAYERS.resolve([("site", "due.workdays", ["mon"])]) is LAYERS.resolve(
        [("site", "due.workdays", ["mon"])])  # cached


def test_vendor_rules_replace_the_defaults_and_are_vendor_sourced():
    layers = PolicyLayers(DEFAULT, {"rules": [{"action": "remote_guidance", "due": "same_day",
                                                "reason": "always"}]})
    assert layers.resolve().source("rules[0].due") == "vendor"
    with pytest.raises(ConfigError, match=r"unknown policy key 'rules\[5\].due'"):
        layers.check("rules[5].due", "same_day")


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("fees.onsite_reinstall_vnd=450000", FEE, 450_000),
        ("fees.onsite_reinstall_vnd=450_000", FEE, 450_000),
        ("due.same_day_cutoff=16:00", "due.same_day_cutoff", "16:00"),
        ('due.same_day_cutoff="16:00"', "due.same_day_cutoff", "16:00"),
        ("machine.offline_counts=wall_clock", "machine.offline_counts", "wall_clock"),
        ('due.workdays=["mon", "tue"]', "due.workdays", ["mon", "tue"]),
        ("x.y = true", "x.y", True),
        ("machine.offline_incident_after_minutes=90.5", "machine.offline_incident_after_minutes",
         90.5),
    ],
)
def test_parse_assignment(text, key, value):
    assert parse_assignment(text) == (key, value)


@pytest.mark.parametrize("text", ["fees.x", "=1", "fees.x=", ""])
def test_parse_assignment_refuses(text):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignment(text)


def test_a_customer_override_changes_the_decision_and_the_reason_says_so():
    reported = datetime(2026, 3, 3, 9, 0, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh")).astimezone(UTC)
    facts = IncidentFacts("disk", "high", reported)
    lapsed = Entitlement(reported.date(), "not_covered", NOTHING)
    machine = MachineState(online=False, offline_for=timedelta(hours=1))

    def decided(overrides):
        return decide(facts, lapsed, machine, fix_available=False,
                      policy=LAYERS.resolve(overrides), calendar=BusinessCalendar())

    vendor = decided([])
    assert vendor.fee_vnd == 550_000
    assert "[fees.onsite_reinstall_vnd set by the vendor policy]" in vendor.reasons[2]
    ours = decided([("customer", FEE, 450_000), ("customer", "rules[5].due", "business_days:2")])
    assert ours.action == "onsite_reinstall"
    assert ours.fee_vnd == 450_000
    assert "Billable 450,000 VND" in ours.reasons[2]
    assert "[fees.onsite_reinstall_vnd set by the customer policy]" in ours.reasons[2]
    assert "[rules[5].due set by the customer policy]" in ours.reasons[3]
    assert ours.due_at > vendor.due_at


def test_show_lists_every_overridable_value_and_its_source():
    shown = {row["key"]: row for row in LAYERS.show([("customer", FEE, 450_000),
                                                     ("machine", "due.same_day_cutoff", "16:00")])}
    assert shown[FEE] == {"key": FEE, "value": 450_000, "source": "customer"}
    assert shown["due.same_day_cutoff"]["source"] == "machine"
    assert shown["fees.technician_visit_vnd"] == {
        "key": "fees.technician_visit_vnd", "value": 900_000, "source": "vendor"}
    assert shown["alerts.agent_offline.open_after"]["source"] == "default"
    assert "rules[12].due" in shown
    assert "rules[12].reason" not in shown
    assert "rules[11].severity" not in shown
    assert not any(key.startswith(("tiers.", "kinds.", "warranty.")) for key in shown)


def test_a_four_hour_response_for_a_hospital():
    reported = datetime(2026, 3, 3, 9, 0, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh")).astimezone(UTC)
    policy = LAYERS.resolve([("customer", "rules[5].due", "business_hours:4")])
    decision = decide(IncidentFacts("disk", "high", reported),
                      Entitlement(reported.date(), "not_covered", NOTHING),
                      MachineState(online=True), fix_available=False, policy=policy,
                      calendar=BusinessCalendar())
    assert decision.due_at == reported + timedelta(hours=4)
    assert decision.reasons[3] == (
        "Due 2026-03-03 13:00 Asia/Ho_Chi_Minh: within 4 business hours"
        " [rules[5].due set by the customer policy]")


# ------------------------------------------------------------------ install windows
WINDOW = "rollouts.install_window"


def test_install_window_is_a_policy_value_any_time_by_default():
    from datetime import time

    from careline.coordinator.policy.waves import InstallWindow

    assert LAYERS.resolve().install_window is None
    assert {"key": WINDOW, "value": "any", "source": "default"} in LAYERS.show()
    night = InstallWindow(time(18), time(7))
    vendor = PolicyLayers(DEFAULT, {"rollouts": {"install_window": "18:00-07:00"}})
    assert vendor.resolve().install_window == night
    assert vendor.resolve().source(WINDOW) == "vendor"
    lunch = vendor.resolve([("customer", WINDOW, "12:00-13:30")])
    assert lunch.install_window == InstallWindow(time(12), time(13, 30))
    assert lunch.source(WINDOW) == "customer"
    anytime = vendor.resolve([("customer", WINDOW, "12:00-13:30"), ("machine", WINDOW, "any")])
    assert anytime.install_window is None
    assert anytime.source(WINDOW) == "machine"


@pytest.mark.parametrize("value", ["25:00-07:00", "18:00", "09:00-09:00", "always"])
def test_a_bad_install_window_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match=re.escape(WINDOW)):
        LAYERS.resolve([("site", WINDOW, value)])
    with pytest.raises(ConfigError, match=re.escape(WINDOW)):
        PolicyLayers(DEFAULT, {"rollouts": {"install_window": value}}).resolve()
    with pytest.raises(ConfigError, match=re.escape(WINDOW)):
        LAYERS.check(WINDOW, 1800)  # a string, not a number


LEVEL_VALUES = {"customer": "18:00-07:00", "site": "12:00-13:30", "machine": "any"}


@pytest.mark.parametrize("vendor_window", [None, "20:00-06:00"])
@pytest.mark.parametrize("levels", [
    (), ("customer",), ("site",), ("machine",), ("customer", "site"), ("customer", "machine"),
    ("site", "machine"), ("customer", "site", "machine")])
def test_value_agrees_with_the_whole_policy(levels, vendor_window):
    """What the rollout sender reads per machine is what `policy show` and `resolve` say."""
    layers = PolicyLayers(DEFAULT, {"rollouts": {"install_window": vendor_window}}
                          if vendor_window else {})
    ids: dict[str, int | str] = {"customer": 3, "site": 7, "machine": "ag-1"}
    by_target = {target(level, ids[level]): {WINDOW: LEVEL_VALUES[level], FEE: 1}
                 for level in levels}
    by_target[target("machine", "ag-other")] = {WINDOW: "01:00-02:00"}  # a stranger's
    policy = layers.resolve(chain(by_target, 3, 7, "ag-1"))
    value, source = layers.value(WINDOW, by_target, 3, 7, "ag-1")
    assert source == policy.source(WINDOW)
    shown = {r["key"]: r["value"] for r in layers.show(chain(by_target, 3, 7, "ag-1"))}
    assert value == shown[WINDOW]
    assert layers.value(WINDOW, by_target, 3, None, None) == (
        (LEVEL_VALUES["customer"], "customer") if "customer" in levels
        else (vendor_window or "any", "vendor" if vendor_window else "default"))


def test_notify_urgent_from_is_overridable_and_checked():
    assert LAYERS.resolve().urgent_from == "critical"
    hospital = LAYERS.resolve([("customer", "notify.urgent_from", "high")])
    assert hospital.urgent_from == "high"
    assert hospital.source("notify.urgent_from") == "customer"
    assert LAYERS.resolve([("customer", "notify.urgent_from", "high"),
                           ("machine", "notify.urgent_from", "critical")]).urgent_from == "critical"
    with pytest.raises(ConfigError, match=re.escape("notify.urgent_from")):
        LAYERS.resolve([("site", "notify.urgent_from", "urgent")])
