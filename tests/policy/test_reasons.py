"""Decision reasons as data: every one the policy can give is worded in English and
Vietnamese, its values fill in, and the English is the text `incidents explain` prints."""

from __future__ import annotations

import itertools
from datetime import date, timedelta

import pytest

from careline.coordinator import i18n
from careline.coordinator.policy.config import ACTIONS, CATEGORIES, SEVERITIES
from careline.coordinator.policy.decide import IncidentFacts, Pause, decide
from careline.coordinator.policy.entitlement import NOTHING, Entitlement
from careline.coordinator.policy.reasons import (
    SET_BY,
    TEMPLATES,
    TERM_PARAMS,
    TERMS,
    Reason,
    placeholders,
    render,
)
from tests.policy.test_decide import CAL, ENTITLEMENTS, MACHINES, MON_9, POLICY, TODAY, run, vn
from tests.policy.test_overrides import LAYERS

VI = i18n.translations("vi", "web")
MESSAGES = [*TEMPLATES.values(), SET_BY, *TERMS]


def every_explanation() -> list[Reason]:
    """The reasons of decisions across categories, severities, coverage, machine states,
    fix availability, pauses (open, late, holding) and overrides at every level."""
    soon = Entitlement(TODAY, "warranty", POLICY.warranty, ends_on=TODAY, expiring_soon=True)
    pauses = (Pause(vn(2026, 1, 12, 10, 0), vn(2026, 1, 12, 11, 0), "customer", "no key"),
              Pause(vn(2026, 3, 1, 10, 0), vn(2026, 3, 2, 10, 0), "vendor"),
              Pause(vn(2026, 3, 3, 10, 0), None, "third_party"))
    said: list[Reason] = []
    for category, severity, entitlement, machine, fix in itertools.product(
            CATEGORIES, SEVERITIES, [*ENTITLEMENTS, soon], MACHINES, (True, False)):
        said += run(category, severity, machine, fix, entitlement).explanation
    for used in (0, 99):
        said += run("power", "high", entitlement=ENTITLEMENTS[3], onsite_visits_used=used).explanation
    said += run("disk", "low", paused=pauses).explanation
    lapsed = Entitlement(TODAY, "not_covered", NOTHING)
    for level, fee in (("vendor", 0), ("customer", 450_000), ("site", 0), ("machine", 0)):
        policy = LAYERS.resolve([] if level == "vendor" else [  # the vendor's file sets fees
            (level, "due.same_day_cutoff", "16:00"), (level, "fees.onsite_reinstall_vnd", fee)])
        for at in (MON_9, vn(2026, 1, 12, 16, 30)):  # before and after the cutoff
            said += decide(IncidentFacts("disk", "high", at), lapsed, MACHINES[2],
                           fix_available=False, policy=policy, calendar=CAL).explanation
    return said


def test_every_reason_and_term_the_policy_gives_is_known() -> None:
    said = every_explanation()
    assert {r.id for r in said} == set(TEMPLATES)  # and each id is given somewhere
    terms = {str(r.params[k]) for r in said for k in TERM_PARAMS if k in r.params}
    assert terms <= set(TERMS) | set(ACTIONS)
    levels = {level for r in said for _, level in r.set_by}
    assert levels == {"vendor", "customer", "site", "machine"}
    assert levels <= set(TERMS)


@pytest.mark.parametrize("message", MESSAGES + list(ACTIONS), ids=lambda m: m[:40])
def test_every_message_has_a_vietnamese_translation_with_the_same_values(message: str) -> None:
    translated = VI.gettext(message)
    assert translated != message
    names = {name.partition(":")[0] for name in placeholders(message)}
    assert {name.partition(":")[0] for name in placeholders(translated)} == names
    assert i18n.translations("en", "web").gettext(message) == message


def test_values_fill_in_english_as_the_cli_prints_and_vietnamese_in_the_readers_zone() -> None:
    fee = Reason("fee_not_included", {"label": "maintenance:{tier}", "tier": "premium",
                                      "benefit": "on-site visits ({used} of {allowed} used this year)",
                                      "used": 4, "allowed": 4, "fee_vnd": 900_000},
                 (("fees.technician_visit_vnd", "customer"),))
    assert str(fee) == ("Billable 900,000 VND: maintenance:premium does not include on-site visits"
                        " (4 of 4 used this year) [fees.technician_visit_vnd set by the customer policy]")
    vi = render(fee, VI.gettext, money=i18n.format_vnd).replace("\xa0", " ")
    assert vi == ("Tính phí 900.000 ₫: gói bảo trì premium không bao gồm lượt đến tận nơi"
                  " (đã dùng 4/4 trong năm) [fees.technician_visit_vnd do chính sách cấp khách hàng đặt]")

    due = run("disk", "high", at=vn(2026, 1, 12, 16, 0)).explanation[3]
    assert str(due) == ("Due 2026-01-13 17:30 Asia/Ho_Chi_Minh: next business day"
                        " (reported Mon 2026-01-12 16:00, after the 15:00 cutoff or not a business day)")
    # A viewer in Tokyo (UTC+9, two hours ahead) sees every instant two hours later.
    zone = "Asia/Tokyo"
    vi = render(due, VI.gettext, zone=zone, moment=lambda m: i18n.format_time(m, zone, "vi"))
    assert vi.startswith(f"Hạn {i18n.format_time(vn(2026, 1, 13, 17, 30), zone, 'vi')} (Asia/Tokyo):")
    assert "19:30" in vi
    assert "báo lúc 18:00 12/01/2026, sau giờ chốt 17:00" in vi

    covered = Reason("covered", {"label": "warranty", "ends_on": date(2026, 6, 30).isoformat()})
    assert render(covered, VI.gettext) == "Được bảo hành đến hết ngày 30/06/2026"
    pause = Reason("pause_open", {"start_at": vn(2026, 3, 3, 10, 0).isoformat(), "on": "customer",
                                  "note": "", "timezone": "Asia/Ho_Chi_Minh"})
    assert str(pause).startswith("Clock paused since 2026-03-03 10:00, waiting on customer:")
    assert "chờ khách hàng:" in render(pause, VI.gettext)


def test_a_reason_survives_json_and_refuses_an_unknown_id() -> None:
    paused = (Pause(MON_9, MON_9 + timedelta(hours=1), "customer"),)
    for reason in run("disk", "low", paused=paused).explanation:
        assert Reason.from_dict(reason.to_dict()) == reason
    with pytest.raises(ValueError, match="unknown reason"):
        Reason("made_up")


def test_the_rule_text_is_the_vendors_as_written() -> None:
    rule = run("disk", "low").explanation[1]
    assert rule.params["text"] == POLICY.rules[rule.params["index"]].reason
    assert str(rule.params["text"]) in render(rule, VI.gettext)
    assert CAL.timezone == "Asia/Ho_Chi_Minh"
