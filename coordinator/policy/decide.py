"""What to do about an incident, who pays, and by when: data in, a decision with reasons out.

The first matching rule of the policy picks the action and due time; entitlement only decides
the money. An incident outside coverage gets the same action, billable at the list price, so
nothing is ever dropped for lack of a contract.

What coverage includes, per action:
    remote_update, physical_media   regulation_updates (category regulation) else bug_fixes
    remote_reinstall, remote_guidance   remote_fixes
    technician_visit                on-site visits left this year
    onsite_reinstall                waive_onsite_reinstall_fee (the fee applies even in warranty
                                    unless the tier waives it)
Included -> fee 0; otherwise fee = the action's list price from [fees]. `quote_vnd` is always
the list price, so a technician can tell the customer what coverage saved them.

The due-time clock stops while an incident waits on the customer: every business hour of a
pause that began before the (running) due time moves it out by as much.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from .calendar import BusinessCalendar, DueRule
from .config import CATEGORIES, SEVERITIES, Policy, Situation
from .entitlement import Entitlement
from .reasons import Reason


@dataclass(frozen=True)
class IncidentFacts:
    category: str  # one of config.CATEGORIES
    severity: str  # one of config.SEVERITIES
    reported_at: datetime  # UTC-aware

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown incident category {self.category!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown incident severity {self.severity!r}")
        if self.reported_at.tzinfo is None:
            raise ValueError("reported_at must be timezone-aware (UTC)")


@dataclass(frozen=True)
class MachineState:
    online: bool
    healthy_for_remote: bool = True  # online but unable to run remote work (e.g. disk full)
    offline_for: timedelta | None = None  # how long the agent has been unreachable
    integrity_restorable: bool = False  # the install can be restored from signed packages


@dataclass(frozen=True)
class Pause:
    """A span the incident waited on someone else (`end` None: still waiting)."""

    start: datetime
    end: datetime | None
    on: str  # whom it waits on, e.g. "customer"
    note: str = ""


@dataclass(frozen=True)
class Decision:
    action: str
    covered: bool  # the machine was under warranty or maintenance when reported
    billable: bool  # fee_vnd > 0
    fee_vnd: int  # what the customer pays for this action
    quote_vnd: int  # the action's list price
    due_at: datetime  # UTC
    explanation: tuple[Reason, ...]  # entitlement, rule, fee, due, pauses: `incidents explain`
    rule: int  # index into policy.rules

    @property
    def reasons(self) -> tuple[str, ...]:
        """The explanation in English, in the customer's zone (the CLI's and the stored text)."""
        return tuple(str(reason) for reason in self.explanation)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "covered": self.covered,
            "billable": self.billable,
            "fee_vnd": self.fee_vnd,
            "quote_vnd": self.quote_vnd,
            "due_at": self.due_at.isoformat(),
            "reasons": list(self.reasons),
            "explanation": [reason.to_dict() for reason in self.explanation],
            "rule": self.rule,
        }


def decide(
    incident: IncidentFacts,
    entitlement: Entitlement,
    machine: MachineState,
    *,
    fix_available: bool,
    policy: Policy,
    calendar: BusinessCalendar,
    onsite_visits_used: int = 0,
    paused: tuple[Pause, ...] = (),
) -> Decision:
    """Decide action, fee and due time for one machine's incident.

    `entitlement` is the machine's entitlement on the local day of the report; `calendar` is
    the customer's; `onsite_visits_used` counts technician visits already used this year.
    """
    offline_long = (
        not machine.online
        and machine.offline_for is not None
        and machine.offline_for >= policy.offline_long_after
    )
    situation = Situation(
        category=incident.category,
        severity=incident.severity,
        online=machine.online and machine.healthy_for_remote,
        fix_available=fix_available,
        integrity_restorable=machine.integrity_restorable,
        offline_long=offline_long,
        covered=entitlement.covered,
    )
    rule = policy.first_rule(situation)
    quote = policy.fees[rule.action]
    included, what = _included(rule.action, incident.category, entitlement, onsite_visits_used)
    fee = 0 if included else quote
    base_due = calendar.due_at(incident.reported_at, rule.due, policy.same_day_cutoff)
    due_at, pause_reasons = paused_due(base_due, paused, calendar)
    return Decision(
        action=rule.action,
        covered=entitlement.covered,
        billable=fee > 0,
        fee_vnd=fee,
        quote_vnd=quote,
        due_at=due_at,
        explanation=(
            _entitlement_reason(entitlement),
            Reason("rule", {"index": rule.index, "text": rule.reason},
                   _set_by(policy, f"rules[{rule.index}].action")),
            _fee_reason(entitlement, rule.action, included, what, fee, policy),
            _due_reason(incident.reported_at, base_due, calendar, rule.due,
                        policy.same_day_cutoff,
                        _set_by(policy, f"rules[{rule.index}].due",
                                *(["due.same_day_cutoff"] if rule.due.uses_cutoff else []))),
            *pause_reasons,
        ),
        rule=rule.index,
    )


def paused_due(
    due_at: datetime, paused: tuple[Pause, ...], calendar: BusinessCalendar
) -> tuple[datetime, tuple[Reason, ...]]:
    """Move `due_at` out by the business time of each finished pause that began before it;
    one reason per pause (an open pause holds the clock: the due time moves when it ends)."""
    reasons = []
    for pause in sorted(paused, key=lambda p: p.start):
        said = {"start_at": pause.start.isoformat(), "on": pause.on, "note": pause.note,
                "timezone": calendar.timezone}
        if pause.end is None:
            reasons.append(Reason("pause_open", said))
            continue
        said["end_at"] = pause.end.isoformat()
        if pause.start >= due_at:
            reasons.append(Reason("pause_late", said))
            continue
        held = calendar.business_time(pause.start, pause.end)
        due_at = calendar.add_business_time(due_at, held)
        hours, minutes = divmod(int(held.total_seconds() // 60), 60)
        reasons.append(Reason("pause_held", {**said, "held_h": hours, "held_m": minutes,
                                             "due_at": due_at.isoformat()}))
    return due_at, tuple(reasons)


def _included(
    action: str, category: str, entitlement: Entitlement, visits_used: int
) -> tuple[bool, tuple[str, dict[str, int]]]:
    """Whether coverage includes `action`, and the benefit that decides it (a `reasons.TERMS`
    phrase with its numbers)."""
    if not entitlement.covered:
        return False, ("", {})
    includes = entitlement.includes
    if action in ("remote_update", "physical_media"):
        if category == "regulation":
            return includes.regulation_updates, ("regulation updates", {})
        return includes.bug_fixes, ("bug fixes", {})
    if action in ("remote_reinstall", "remote_guidance"):
        return includes.remote_fixes, ("remote fixes", {})
    if action == "technician_visit":
        allowed = includes.onsite_visits_per_year
        return visits_used < allowed, ("on-site visits ({used} of {allowed} used this year)",
                                       {"used": visits_used, "allowed": allowed})
    return includes.waive_onsite_reinstall_fee, ("a waiver of the on-site reinstall fee", {})


def _set_by(policy: Policy, *keys: str) -> tuple[tuple[str, str], ...]:
    """Which policy level set the values a reason rests on, when not the built-in one."""
    return tuple((key, policy.source(key)) for key in keys if policy.source(key) != "default")


def _coverage(entitlement: Entitlement) -> dict[str, str | int]:
    """The coverage's name as a term: its kind, and the vendor's tier name apart."""
    if entitlement.kind == "maintenance":
        return {"label": "maintenance:{tier}", "tier": entitlement.tier or ""}
    return {"label": entitlement.kind}


def _entitlement_reason(entitlement: Entitlement) -> Reason:
    if entitlement.covered:
        return Reason("covered_expiring" if entitlement.expiring_soon else "covered",
                      {**_coverage(entitlement), "ends_on": str(entitlement.ends_on)})
    later = entitlement.next_coverage_starts
    checked: dict[str, str | int] = {"checked_on": entitlement.at.isoformat()}
    if later:
        return Reason("not_covered_until", {**checked, "starts_on": later.isoformat()})
    return Reason("not_covered", checked)


def _fee_reason(entitlement: Entitlement, action: str, included: bool,
                what: tuple[str, dict[str, int]], fee: int, policy: Policy) -> Reason:
    set_by = _set_by(policy, f"fees.{action}_vnd")
    benefit: dict[str, str | int] = {"benefit": what[0], **what[1]}
    if included:
        return Reason("fee_included", {**_coverage(entitlement), **benefit}, set_by)
    if fee == 0:
        return Reason("fee_no_price", {"action": action}, set_by)
    if entitlement.covered:
        return Reason("fee_not_included", {**_coverage(entitlement), **benefit, "fee_vnd": fee},
                      set_by)
    return Reason("fee_not_covered", {"action": action, "fee_vnd": fee}, set_by)


def _due_reason(
    reported_at: datetime,
    due_at: datetime,
    calendar: BusinessCalendar,
    rule: DueRule,
    same_day_cutoff: time,
    set_by: tuple[tuple[str, str], ...],
) -> Reason:
    when: dict[str, str | int] = {"due_at": due_at.isoformat(), "timezone": calendar.timezone}
    if not rule.uses_cutoff:
        words, numbers = rule.describe()
        return Reason("due", {**when, "due_rule": words, **numbers}, set_by)
    reported = calendar.local(reported_at)
    # The cutoff on the day it was reported, as an instant: shown in any zone, it still
    # compares with the report time.
    cutoff = datetime.combine(reported.date(), same_day_cutoff, reported.tzinfo)
    when.update(reported_at=reported_at.isoformat(), cutoff_at=cutoff.isoformat())
    same_day = calendar.local(due_at).date() == reported.date()
    return Reason("due_same_day" if same_day else "due_next_day", when, set_by)
