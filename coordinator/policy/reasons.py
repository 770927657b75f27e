"""Why a decision is what it is, as data: a message id and its values, worded per reader.

The policy code says *which* reason applies and with *what* values; the English words live
here, once. They are the message ids of the web catalog (translated in
``coordinator/locale/vi/LC_MESSAGES/web.po``), so the CLI, the stored decision and the console
read the same reasons, each in its reader's language. Nothing here reads a catalog or a
clock: `render` is given the translation function, the money format and the zone.

Values are JSON-friendly (str, int); their names say how they are shown:
    *_vnd     an amount of đồng (the CLI: ``450,000 VND``; the console: ``450.000 ₫``)
    *_at      a UTC instant, ISO 8601, shown in the reader's zone (the CLI: the customer's,
              `timezone`); a template may give a strftime format: ``{due_at:%H:%M}``
    *_on      a calendar day, ISO 8601 (``{ends_on:%d/%m/%Y}`` works)
    note      free text a technician wrote: `` (note)`` when there is one, else nothing
    timezone  the zone the instants are shown in
    TERMS     words from a closed set (an action, whom a pause waits on, a benefit...),
              translated too; a term may itself use the other values (``{used}``)
Anything else (a rule's own text from the vendor's policy file, a policy key) is shown as
written.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

TEMPLATES: dict[str, str] = {
    "covered": "Covered by {label} until {ends_on}",
    "covered_expiring": "Covered by {label} until {ends_on} (expiring soon)",
    "not_covered": "Not covered on {checked_on}: any action is billable",
    "not_covered_until": "Not covered on {checked_on}; coverage starts {starts_on}: any action is billable",
    "rule": "rules[{index}]: {text}",
    "fee_included": "Free: {label} includes {benefit}",
    "fee_no_price": "Free: {action} has no list price",
    "fee_not_included": "Billable {fee_vnd}: {label} does not include {benefit}",
    "fee_not_covered": "Billable {fee_vnd}: list price of {action} without coverage",
    "due": "Due {due_at:%Y-%m-%d %H:%M} {timezone}: {due_rule}",
    "due_same_day": "Due {due_at:%Y-%m-%d %H:%M} {timezone}: same business day"
                    " (reported {reported_at:%H:%M}, before the {cutoff_at:%H:%M} cutoff)",
    "due_next_day": "Due {due_at:%Y-%m-%d %H:%M} {timezone}: next business day"
                    " (reported {reported_at:%a %Y-%m-%d %H:%M}, after the {cutoff_at:%H:%M}"
                    " cutoff or not a business day)",
    "pause_open": "Clock paused since {start_at:%Y-%m-%d %H:%M}, waiting on {on}{note}:"
                  " the due time moves out when it resumes",
    "pause_late": "Paused {start_at:%Y-%m-%d %H:%M} to {end_at:%Y-%m-%d %H:%M} waiting on"
                  " {on}{note}: after the due time, so it does not move it",
    "pause_held": "Paused {start_at:%Y-%m-%d %H:%M} to {end_at:%Y-%m-%d %H:%M} waiting on"
                  " {on}{note}: {held_h}h{held_m:02d}m of business time added,"
                  " due {due_at:%Y-%m-%d %H:%M}",
}
SET_BY = "{key} set by the {level} policy"
"""One override behind a reason, appended as `` [a set by the customer policy; b ...]``."""

TERM_PARAMS = ("label", "benefit", "action", "on", "due_rule")
TERMS = (
    # coverage (Entitlement.label: "maintenance:<tier name from the policy>")
    "warranty", "maintenance:{tier}",
    # what coverage includes (decide._included)
    "regulation updates", "bug fixes", "remote fixes",
    "on-site visits ({used} of {allowed} used this year)", "a waiver of the on-site reinstall fee",
    # due rules (calendar.DueRule.describe)
    "within {hours} business hours", "same business day if reported before the cutoff, else the next",
    "next business day", "within {days} business days",
    # whom a pause waits on (incidents.wait --on)
    "customer", "vendor", "third_party",
    # policy levels that override (overrides.OVERRIDE_LEVELS)
    "site", "machine",
)
"""Every word a term value may be, besides the actions (config.ACTIONS): the catalog must
translate each."""


@dataclass(frozen=True)
class Reason:
    """One line of an explanation: a `TEMPLATES` id, its values, and the policy keys an
    override (not the built-in policy) set, with the level that set each."""

    id: str
    params: Mapping[str, str | int] = field(default_factory=dict)
    set_by: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.id not in TEMPLATES:
            raise ValueError(f"unknown reason {self.id!r}")

    def __str__(self) -> str:
        return render(self)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "params": dict(self.params), "set_by": [list(s) for s in self.set_by]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reason:
        return cls(data["id"], dict(data["params"]), tuple((k, v) for k, v in data["set_by"]))


def english_vnd(amount: int) -> str:
    return f"{amount:,} VND"


class _Moment:
    """An instant that formats in the reader's zone: a strftime spec, else `default`."""

    def __init__(self, moment: datetime, default: Callable[[datetime], str]) -> None:
        self.moment, self.default = moment, default

    def __format__(self, spec: str) -> str:
        return self.moment.strftime(spec) if spec else self.default(self.moment)


class _Text:
    """A value already worded: format specs do not apply to it."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __format__(self, spec: str) -> str:
        return self.text


def render(
    reason: Reason,
    translate: Callable[[str], str] = str,
    *,
    money: Callable[[int], str] = english_vnd,
    zone: str | None = None,
    moment: Callable[[datetime], str] | None = None,
) -> str:
    """`reason` in words: `translate` a message id (identity: English), instants in `zone`
    (default: the customer's, named in the reason), amounts by `money`."""
    params = reason.params
    shown_zone = zone or str(params.get("timezone", "UTC"))
    tz = ZoneInfo(shown_zone)
    default = moment or (lambda m: f"{m:%Y-%m-%d %H:%M}")
    values: dict[str, Any] = {}
    for key, value in params.items():
        if key.endswith("_vnd"):
            values[key] = _Text(money(int(value)))
        elif key.endswith("_at"):
            values[key] = _Moment(datetime.fromisoformat(str(value)).astimezone(tz), default)
        elif key.endswith("_on"):
            values[key] = date.fromisoformat(str(value))
        elif key == "note":
            values[key] = _Text(f" ({value})" if value else "")
        elif key == "timezone":
            values[key] = _Text(shown_zone)
        else:
            values[key] = value
    for key in TERM_PARAMS:
        if key in params:
            values[key] = _Text(translate(str(params[key])).format(**params))
    text = translate(TEMPLATES[reason.id]).format(**values)
    if reason.set_by:
        levels = [translate(SET_BY).format(key=key, level=translate(level)) for key, level in reason.set_by]
        text += f" [{'; '.join(levels)}]"
    return text


def placeholders(template: str) -> set[str]:
    """The value names a template uses (to check a translation uses the same ones)."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}
