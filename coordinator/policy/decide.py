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
    reasons: tuple[str, ...]  # entitlement, rule, fee, due: for `careline incidents explain`
    rule: int  # index into policy.rules

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "covered": self.covered,
            "billable": self.billable,
            "fee_vnd": self.fee_vnd,
            "quote_vnd": self.quote_vnd,
            "due_at": self.due_at.isoformat(),
            "reasons": list(self.reasons),
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
        reasons=(
            _entitlement_reason(entitlement),
            f"rules[{rule.index}]: {rule.reason}"
            + _set_by(policy, f"rules[{rule.index}].action"),
            _fee_reason(entitlement, rule.action, included, what, fee)
            + _set_by(policy, f"fees.{rule.action}_vnd"),
            _due_reason(incident.reported_at, base_due, calendar, rule.due,
                        policy.same_day_cutoff)
            + _set_by(policy, f"rules[{rule.index}].due",
                      *(["due.same_day_cutoff"] if rule.due.uses_cutoff else [])),
            *pause_reasons,
        ),
        rule=rule.index,
    )


def paused_due(
    due_at: datetime, paused: tuple[Pause, ...], calendar: BusinessCalendar
) -> tuple[datetime, tuple[str, ...]]:
    """Move `due_at` out by the business time of each finished pause that began before it;
    one reason per pause (an open pause holds the clock: the due time moves when it ends)."""
    reasons = []
    for pause in sorted(paused, key=lambda p: p.start):
        start = calendar.local(pause.start)
        note = f" ({pause.note})" if pause.note else ""
        if pause.end is None:
            reasons.append(f"Clock paused since {start:%Y-%m-%d %H:%M}, waiting on {pause.on}"
                           f"{note}: the due time moves out when it resumes")
            continue
        end = calendar.local(pause.end)
        span = f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}"
        if pause.start >= due_at:
            reasons.append(f"Paused {span} waiting on {pause.on}{note}: after the due time,"
                           " so it does not move it")
            continue
        held = calendar.business_time(pause.start, pause.end)
        due_at = calendar.add_business_time(due_at, held)
        minutes = int(held.total_seconds() // 60)
        reasons.append(f"Paused {span} waiting on {pause.on}{note}: {minutes // 60}h{minutes % 60:02d}m"
                       f" of business time added, due {calendar.local(due_at):%Y-%m-%d %H:%M}")
    return due_at, tuple(reasons)


def _included(
    action: str, category: str, entitlement: Entitlement, visits_used: int
) -> tuple[bool, str]:
    """Whether coverage includes `action`, and the name of the benefit that decides it."""
    if not entitlement.covered:
        return False, ""
    includes = entitlement.includes
    if action in ("remote_update", "physical_media"):
        if category == "regulation":
            return includes.regulation_updates, "regulation updates"
        return includes.bug_fixes, "bug fixes"
    if action in ("remote_reinstall", "remote_guidance"):
        return includes.remote_fixes, "remote fixes"
    if action == "technician_visit":
        allowed = includes.onsite_visits_per_year
        return visits_used < allowed, f"on-site visits ({visits_used} of {allowed} used this year)"
    return includes.waive_onsite_reinstall_fee, "a waiver of the on-site reinstall fee"


def _set_by(policy: Policy, *keys: str) -> str:
    """Which policy level set the values a reason rests on, when not the built-in one."""
    levels = [f"{key} set by the {policy.source(key)} policy"
              for key in keys if policy.source(key) != "default"]
    return f" [{'; '.join(levels)}]" if levels else ""


def _entitlement_reason(entitlement: Entitlement) -> str:
    if entitlement.covered:
        soon = " (expiring soon)" if entitlement.expiring_soon else ""
        return f"Covered by {entitlement.label} until {entitlement.ends_on}{soon}"
    later = entitlement.next_coverage_starts
    resumes = f"; coverage starts {later}" if later else ""
    return f"Not covered on {entitlement.at}{resumes}: any action is billable"


def _fee_reason(entitlement: Entitlement, action: str, included: bool, what: str, fee: int) -> str:
    if included:
        return f"Free: {entitlement.label} includes {what}"
    if fee == 0:
        return f"Free: {action} has no list price"
    if entitlement.covered:
        return f"Billable {fee:,} VND: {entitlement.label} does not include {what}"
    return f"Billable {fee:,} VND: list price of {action} without coverage"


def _due_reason(
    reported_at: datetime,
    due_at: datetime,
    calendar: BusinessCalendar,
    rule: DueRule,
    same_day_cutoff: time,
) -> str:
    reported, due = calendar.local(reported_at), calendar.local(due_at)
    when = f"Due {due:%Y-%m-%d %H:%M} {calendar.timezone}"
    if not rule.uses_cutoff:
        return f"{when}: {rule}"
    cutoff = f"{same_day_cutoff:%H:%M}"
    if due.date() == reported.date():
        return f"{when}: same business day (reported {reported:%H:%M}, before the {cutoff} cutoff)"
    return (
        f"{when}: next business day (reported {reported:%a %Y-%m-%d %H:%M},"
        f" after the {cutoff} cutoff or not a business day)"
    )
