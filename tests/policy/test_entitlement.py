from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from careline.coordinator.policy.config import load_policy
from careline.coordinator.policy.entitlement import (
    Contract,
    MaintenancePackage,
    Tier,
    add_months,
    entitlement_at,
    expiring,
)
from careline.shared.errors import ConfigError

POLICY = load_policy(None)
SIGNED = date(2025, 3, 15)  # warranty (12 months) covers 2025-03-15 .. 2026-03-14
CONTRACT = Contract(1, SIGNED)


def ent(at, packages=(), contract=CONTRACT, joined=None, within=30):
    return entitlement_at(
        contract,
        packages,
        at,
        machine_joined_on=joined,
        tiers=POLICY.tiers,
        warranty_tier=POLICY.warranty,
        expiring_within_days=within,
    )


def pkg(id, start, end, tier="standard", contract_id=1):
    return MaintenancePackage(id, contract_id, start, end, tier)


@pytest.mark.parametrize(
    ("day", "months", "expected"),
    [
        (date(2025, 1, 31), 1, date(2025, 2, 28)),
        (date(2024, 1, 31), 1, date(2024, 2, 29)),
        (date(2024, 2, 29), 12, date(2025, 2, 28)),
        (date(2025, 3, 31), 1, date(2025, 4, 30)),
        (date(2025, 12, 15), 1, date(2026, 1, 15)),
        (date(2025, 3, 15), 0, date(2025, 3, 15)),
        (date(2025, 3, 15), 25, date(2027, 4, 15)),
    ],
)
def test_add_months_clamps_to_month_end(day, months, expected):
    assert add_months(day, months) == expected


@pytest.mark.parametrize(
    ("signed", "months", "last_day"),
    [
        (date(2025, 3, 15), 12, date(2026, 3, 14)),
        (date(2025, 1, 31), 1, date(2025, 2, 27)),  # Jan 31 + 1 month -> Feb 28, exclusive
        (date(2024, 1, 31), 1, date(2024, 2, 28)),  # leap year
        (date(2024, 2, 29), 12, date(2025, 2, 27)),
        (date(2025, 3, 15), 0, None),
        (date(2025, 3, 15), 24, date(2027, 3, 14)),
    ],
)
def test_warranty_end(signed, months, last_day):
    contract = Contract(1, signed, months)
    assert contract.warranty_ends_on == last_day
    if last_day is None:
        assert not ent(signed, contract=contract).covered
    else:
        assert ent(last_day, contract=contract).kind == "warranty"
        assert not ent(last_day + timedelta(days=1), contract=contract).covered


PACKAGES = (
    pkg(10, date(2026, 3, 15), date(2027, 3, 14), "basic"),  # back to back with warranty
    pkg(11, date(2027, 6, 1), date(2028, 5, 31), "standard"),  # after a gap
    pkg(12, date(2027, 9, 1), date(2027, 12, 31), "premium"),  # overlaps 11
    pkg(13, date(2028, 6, 1), date(2029, 5, 31), "basic"),  # follows 11 directly
)


@pytest.mark.parametrize(
    ("at", "label", "ends_on", "next_starts", "package_id"),
    [
        (date(2025, 3, 14), "not_covered", None, date(2025, 3, 15), None),  # before signing
        (date(2025, 3, 15), "warranty", date(2027, 3, 14), date(2027, 6, 1), None),
        (date(2026, 3, 14), "warranty", date(2027, 3, 14), date(2027, 6, 1), None),
        (date(2026, 3, 15), "maintenance:basic", date(2027, 3, 14), date(2027, 6, 1), 10),
        (date(2027, 3, 15), "not_covered", None, date(2027, 6, 1), None),  # the gap
        (date(2027, 5, 31), "not_covered", None, date(2027, 6, 1), None),
        (date(2027, 6, 1), "maintenance:standard", date(2029, 5, 31), None, 11),
        (date(2027, 9, 1), "maintenance:premium", date(2029, 5, 31), None, 12),  # best wins
        (date(2027, 12, 31), "maintenance:premium", date(2029, 5, 31), None, 12),
        (date(2028, 1, 1), "maintenance:standard", date(2029, 5, 31), None, 11),
        (date(2028, 6, 1), "maintenance:basic", date(2029, 5, 31), None, 13),
        (date(2029, 6, 1), "not_covered", None, None, None),
    ],
)
def test_rows_gaps_and_overlaps(at, label, ends_on, next_starts, package_id):
    e = ent(at, PACKAGES)
    assert (e.label, e.ends_on, e.next_coverage_starts, e.package_id) == (
        label,
        ends_on,
        next_starts,
        package_id,
    )


def test_coverage_before_gap_reports_the_next_start_after_it():
    e = ent(date(2026, 3, 15), PACKAGES)
    assert e.ends_on == date(2027, 3, 14)
    assert e.next_coverage_starts == date(2027, 6, 1)


def test_overlap_tie_goes_to_latest_end_then_maintenance_over_warranty():
    same = (pkg(20, SIGNED, date(2025, 12, 31)), pkg(21, SIGNED, date(2026, 6, 30)))
    assert ent(SIGNED, same).package_id == 21
    warranty_like = Tier("warrantyish", True, True, 0, False)
    tiers = {"w": warranty_like}
    e = entitlement_at(
        CONTRACT,
        [pkg(22, SIGNED, CONTRACT.warranty_ends_on, "w")],
        SIGNED,
        tiers=tiers,
        warranty_tier=POLICY.warranty,
    )
    assert e.kind == "maintenance"


def test_premium_during_warranty_wins_because_it_includes_more():
    e = ent(date(2025, 6, 1), [pkg(30, date(2025, 6, 1), date(2025, 6, 30), "premium")])
    assert e.label == "maintenance:premium"
    assert e.includes.waive_onsite_reinstall_fee
    assert e.ends_on == date(2026, 3, 14)  # still the warranty's stretch


def test_future_contract_is_not_covered_yet():
    future = Contract(2, date(2030, 1, 1))
    e = ent(date(2029, 12, 31), contract=future)
    assert not e.covered
    assert e.next_coverage_starts == date(2030, 1, 1)


def test_machine_joined_late_is_covered_from_joining_until_the_contract_warranty_ends():
    joined = date(2025, 9, 1)
    assert not ent(date(2025, 8, 31), joined=joined).covered
    assert ent(date(2025, 8, 31), joined=joined).next_coverage_starts == joined
    assert ent(joined, joined=joined).kind == "warranty"
    assert ent(date(2026, 3, 14), joined=joined).covered
    assert not ent(date(2026, 3, 15), joined=joined).covered  # not 12 months from joining


def test_machine_joined_after_warranty_gets_only_packages():
    joined = date(2026, 8, 1)
    e = ent(date(2026, 8, 1), PACKAGES, joined=joined)
    assert e.label == "maintenance:basic"
    assert not ent(date(2026, 7, 31), PACKAGES, joined=joined).covered


def test_unknown_tier_is_a_config_error_even_when_not_covering_the_day():
    with pytest.raises(ConfigError, match="tier 'gold'"):
        ent(SIGNED, [pkg(40, date(2030, 1, 1), date(2030, 12, 31), "gold")])


def test_packages_of_other_contracts_are_ignored():
    other = pkg(41, date(2026, 3, 15), date(2027, 3, 14), "premium", contract_id=99)
    assert not ent(date(2026, 4, 1), [other]).covered


def test_invalid_rows_are_rejected():
    with pytest.raises(ValueError, match="ends before it starts"):
        pkg(42, date(2026, 1, 2), date(2026, 1, 1))
    with pytest.raises(ValueError, match="warranty_months must be >= 0"):
        Contract(3, SIGNED, -1)


@pytest.mark.parametrize(
    ("at", "within", "soon"),
    [
        (date(2026, 2, 11), 30, False),  # 31 days left
        (date(2026, 2, 12), 30, True),  # 30 days left
        (date(2026, 3, 14), 30, True),  # last day
        (date(2026, 2, 1), 60, True),
        (date(2026, 3, 7), 7, True),
        (date(2026, 3, 6), 7, False),
    ],
)
def test_expiring_soon(at, within, soon):
    e = ent(at, within=within)
    assert e.expiring_soon is soon
    assert e.expiring_soon == (e.days_left <= within)


def test_expiring_soon_follows_back_to_back_packages():
    e = ent(date(2026, 3, 1), PACKAGES)
    assert e.ends_on == date(2027, 3, 14)
    assert not e.expiring_soon


def test_expiring_report_skips_customers_with_a_renewal_booked_after_a_gap():
    e = ent(date(2027, 3, 1), PACKAGES)
    assert e.expiring_soon  # coverage does lapse on 2027-03-14 ...
    assert not expiring(e, 30)  # ... but the customer already bought the next package
    lapsing = ent(date(2026, 3, 1))
    assert expiring(lapsing, 15)
    assert not expiring(lapsing, 7)
    assert not expiring(ent(date(2024, 1, 1)), 30)


def test_to_dict():
    d = ent(date(2026, 4, 1), PACKAGES).to_dict()
    assert d["label"] == "maintenance:basic"
    assert d["tier"] == "basic"
    assert d["ends_on"] == "2027-03-14"
    assert d["next_coverage_starts"] == "2027-06-01"
    assert d["includes"]["remote_fixes"] is False
    assert ent(date(2020, 1, 1)).to_dict()["includes"]["bug_fixes"] is False
    assert ent(SIGNED).to_dict()["tier"] is None


# --- properties over arbitrary contracts, packages and days -----------------------------------

BASE = date(2024, 1, 1)
days = st.integers(min_value=0, max_value=2000).map(lambda n: BASE + timedelta(days=n))


@st.composite
def scenarios(draw):
    signed = draw(days)
    contract = Contract(1, signed, draw(st.sampled_from([0, 1, 6, 12, 24])))
    packages = []
    for i in range(draw(st.integers(0, 5))):
        start = signed + timedelta(days=draw(st.integers(0, 1500)))
        end = start + timedelta(days=draw(st.integers(0, 500)))
        packages.append(pkg(i, start, end, draw(st.sampled_from(sorted(POLICY.tiers)))))
    joined = draw(st.none() | days)
    return contract, packages, joined


@given(scenarios(), days)
def test_property_coverage_is_consistent(scenario, at):
    contract, packages, joined = scenario
    e = ent(at, packages, contract=contract, joined=joined)
    first_day = max(contract.signed_on, joined or contract.signed_on)
    if at < first_day:
        assert not e.covered
    if e.covered:
        assert e.ends_on >= at
        assert e.expiring_soon == ((e.ends_on - at).days <= 30)
        day_after = ent(e.ends_on + timedelta(days=1), packages, contract=contract, joined=joined)
        assert not day_after.covered
        assert day_after.next_coverage_starts == e.next_coverage_starts
    else:
        assert e.ends_on is None
        assert not e.expiring_soon
        assert e.tier is None
        if e.next_coverage_starts is not None:
            assert e.next_coverage_starts > at
            nxt = ent(e.next_coverage_starts, packages, contract=contract, joined=joined)
            assert nxt.covered
            before = e.next_coverage_starts - timedelta(days=1)
            assert not ent(before, packages, contract=contract, joined=joined).covered
    if e.next_coverage_starts is not None:
        assert e.next_coverage_starts > at


@given(scenarios(), days, st.integers(1, 60))
def test_property_coverage_is_continuous_until_ends_on(scenario, at, step):
    contract, packages, joined = scenario
    e = ent(at, packages, contract=contract, joined=joined)
    if e.covered:
        later = min(at + timedelta(days=step), e.ends_on)
        f = ent(later, packages, contract=contract, joined=joined)
        assert f.covered
        assert f.ends_on == e.ends_on


@given(scenarios(), days)
def test_property_best_row_is_chosen(scenario, at):
    contract, packages, joined = scenario
    e = ent(at, packages, contract=contract, joined=joined)
    if not e.covered:
        return
    assert joined is None or at >= joined
    ranks = [POLICY.tiers[p.tier].rank for p in packages if p.start <= at <= p.end]
    if contract.warranty_ends_on and contract.signed_on <= at <= contract.warranty_ends_on:
        ranks.append(POLICY.warranty.rank)
    assert e.includes.rank == max(ranks)
