"""The support policy: one TOML file a vendor can change without touching code.

The built-in defaults *are* `default.toml` next to this module; read it for the schema. A
vendor file is merged over the defaults (tables key by key; arrays such as `workdays` and
`[[rules]]` are replaced whole), then everything is validated. Any unknown key, action,
category, severity, tier field or due spec raises ConfigError naming the key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import time, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from careline.shared.errors import ConfigError

from .alerts import CONDITION_KINDS, EVENT_KINDS, KINDS, AlertRule
from .calendar import BusinessCalendar, DueRule
from .entitlement import Tier
from .offline import OFFLINE_COUNTS
from .waves import ANY_TIME, InstallWindow

ACTIONS = (
    "remote_update",
    "remote_reinstall",
    "remote_guidance",
    "physical_media",
    "technician_visit",
    "onsite_reinstall",
)
CATEGORIES = ("virus", "power", "disk", "bug", "regulation", "config", "other")
SEVERITIES = ("low", "medium", "high", "critical")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
RESERVED_TIER_NAMES = frozenset({"warranty", "not_covered"})


@dataclass(frozen=True)
class Situation:
    """The facts a rule can match on; `decide` builds it from an incident."""

    category: str
    severity: str
    online: bool  # agent online and healthy enough for remote work
    fix_available: bool
    integrity_restorable: bool
    offline_long: bool
    covered: bool


_CHOICE_CONDITIONS = {"category": CATEGORIES, "severity": SEVERITIES}
_BOOL_CONDITIONS = tuple(f.name for f in fields(Situation) if f.name not in _CHOICE_CONDITIONS)


@dataclass(frozen=True)
class Rule:
    """One row of [[rules]]: conditions (omitted = any) -> action, due time and reason."""

    index: int  # position in the policy's rule list, 0-based
    when: Mapping[str, frozenset[str] | bool]
    action: str
    due: DueRule
    reason: str

    def matches(self, situation: Situation) -> bool:
        for key, wanted in self.when.items():
            value = getattr(situation, key)
            if not (value in wanted if isinstance(wanted, frozenset) else value == wanted):
                return False
        return True


@dataclass(frozen=True)
class Policy:
    fees: Mapping[str, int]  # action -> list price in VND when not included by coverage
    warranty: Tier
    tiers: Mapping[str, Tier]
    expiring_within_days: int
    same_day_cutoff: time
    calendar: BusinessCalendar  # default hours for customers without their own
    offline_long_after: timedelta
    offline_incident_after: timedelta  # silent this long -> an agent_offline check fails
    offline_counts: str  # how silence is counted: see offline.OFFLINE_COUNTS
    alerts: Mapping[str, AlertRule]
    # kind of an incident opened from agent reports -> (category, severity) for the rules
    kinds: Mapping[str, tuple[str, str]]
    rules: tuple[Rule, ...]
    install_window: InstallWindow | None = None  # None: any time the product is closed
    urgent_from: str = "critical"  # incident notifications this severe ignore quiet hours
    # Where each value that is not the built-in default came from: key -> "vendor",
    # "customer", "site" or "machine" (see overrides.py), so decisions can say so.
    sources: Mapping[str, str] = field(default_factory=dict)

    def source(self, key: str) -> str:
        return self.sources.get(key, "default")

    def tier(self, name: str) -> Tier:
        try:
            return self.tiers[name]
        except KeyError:
            known = ", ".join(sorted(self.tiers))
            raise ConfigError(f"unknown tier {name!r} (known tiers: {known})") from None

    def first_rule(self, situation: Situation) -> Rule:
        """The first matching rule; the last rule matches everything (checked on load)."""
        return next(rule for rule in self.rules if rule.matches(situation))


def load_policy(path: Path | None = None) -> Policy:
    """The built-in policy, or a vendor file at `path` merged over it."""
    default, vendor = load_policy_data(path)
    source = "built-in policy" if path is None else f"policy file {path}"
    try:
        return build_policy(merge(default, vendor))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_policy_data(path: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The built-in defaults and the vendor file's own data (empty without a file), raw:
    what overrides (overrides.py) are layered on."""
    default = tomllib.loads(
        resources.files(__package__).joinpath("default.toml").read_text("utf-8"))
    if path is None:
        return default, {}
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read policy file {path}: {e}") from None
    try:
        return default, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"policy file {path} is not valid TOML: {e}") from None


def build_policy(data: dict[str, Any], sources: Mapping[str, str] | None = None) -> Policy:
    """Validate merged policy data into a Policy; ConfigError names the first bad key."""
    policy = _policy(_Table(data, ""))
    return policy if sources is None else replace(policy, sources=dict(sources))


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; anything else (arrays, values) in `over` replaces `base`."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_MISSING: Any = object()


class _Table:
    """Takes typed values out of one TOML table; keys left over at `done()` are unknown."""

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a table")
        self._items = dict(value)
        self.path = path

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        if key in self._items:
            return self._items.pop(key)
        if default is _MISSING:
            raise ConfigError(f"{self.name(key)} is missing")
        return default

    def table(self, key: str) -> _Table:
        return _Table(self.raw(key), self.name(key))

    def integer(self, key: str, *, minimum: int = 0) -> int:
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{self.name(key)} must be an integer >= {minimum}, got {value!r}")
        return value

    def number(self, key: str) -> float:
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{self.name(key)} must be a number > 0, got {value!r}")
        return float(value)

    def flag(self, key: str, default: bool = _MISSING) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.name(key)} must be true or false, got {value!r}")
        return value

    def text(self, key: str) -> str:
        value = self.raw(key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{self.name(key)} must be a non-empty string, got {value!r}")
        return value

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self.text(key)
        if value not in options:
            raise ConfigError(
                f"{self.name(key)}: unknown value {value!r} (expected one of {', '.join(options)})"
            )
        return value

    def choices(self, key: str, options: tuple[str, ...]) -> frozenset[str]:
        """A string or a non-empty list of strings, each one of `options`."""
        value = self.raw(key)
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{self.name(key)} must be a string or a non-empty list of strings")
        bad = [v for v in values if v not in options]
        if bad:
            raise ConfigError(
                f"{self.name(key)}: unknown value {bad[0]!r} (expected one of {', '.join(options)})"
            )
        return frozenset(values)

    def time(self, key: str) -> time:
        text = self.text(key)
        try:
            hours, minutes = text.split(":")
            return time(int(hours), int(minutes))
        except ValueError:
            raise ConfigError(f"{self.name(key)} must be a time 'HH:MM', got {text!r}") from None

    def done(self) -> None:
        if self._items:
            keys = ", ".join(self.name(key) for key in self._items)
            raise ConfigError(f"unknown key(s): {keys}")


def _policy(root: _Table) -> Policy:
    fees_table = root.table("fees")
    fees = {action: fees_table.integer(f"{action}_vnd") for action in ACTIONS}
    fees_table.done()

    warranty = _tier("warranty", root.table("warranty"))
    tiers_table = root.table("tiers")
    tiers = {name: _tier(name, tiers_table.table(name)) for name in tiers_table}
    reserved = RESERVED_TIER_NAMES & tiers.keys()
    if reserved:
        raise ConfigError(f"tiers.{min(reserved)}: this tier name is reserved")

    entitlement = root.table("entitlement")
    expiring_within_days = entitlement.integer("expiring_within_days")
    entitlement.done()

    due = root.table("due")
    cutoff = due.time("same_day_cutoff")
    calendar = _calendar(due)

    machine = root.table("machine")
    offline_long_after = timedelta(hours=machine.integer("offline_long_after_hours", minimum=1))
    offline_incident_after = timedelta(minutes=machine.number("offline_incident_after_minutes"))
    offline_counts = machine.choice("offline_counts", OFFLINE_COUNTS)
    machine.done()

    alerts_table = root.table("alerts")
    alerts = {kind: _alert(alerts_table.table(kind)) for kind in CONDITION_KINDS}
    alerts_table.done()  # event kinds have no settings: see AlertRule.event
    alerts.update((kind, AlertRule.event()) for kind in EVENT_KINDS)

    install_window = _install_window(root.table("rollouts"))
    notify = root.table("notify")
    urgent_from = notify.choice("urgent_from", SEVERITIES)
    notify.done()

    kinds_table = root.table("kinds")
    kinds = {kind: _kind(kinds_table.table(kind)) for kind in KINDS}
    kinds_table.done()

    rules = _rules(root.raw("rules"))
    root.done()
    return Policy(
        fees=fees,
        warranty=warranty,
        tiers=tiers,
        expiring_within_days=expiring_within_days,
        same_day_cutoff=cutoff,
        calendar=calendar,
        offline_long_after=offline_long_after,
        offline_incident_after=offline_incident_after,
        offline_counts=offline_counts,
        alerts=alerts,
        kinds=kinds,
        rules=rules,
        install_window=install_window,
        urgent_from=urgent_from,
    )


def _tier(name: str, table: _Table) -> Tier:
    tier = Tier(
        name=name,
        remote_fixes=table.flag("remote_fixes"),
        regulation_updates=table.flag("regulation_updates"),
        bug_fixes=table.flag("bug_fixes"),
        onsite_visits_per_year=table.integer("onsite_visits_per_year"),
        waive_onsite_reinstall_fee=table.flag("waive_onsite_reinstall_fee"),
    )
    table.done()
    return tier


def _calendar(due: _Table) -> BusinessCalendar:
    workdays = due.raw("workdays")
    if not isinstance(workdays, list) or any(day not in WEEKDAYS for day in workdays):
        raise ConfigError(f"{due.name('workdays')} must be a list of {', '.join(WEEKDAYS)}")
    try:
        calendar = BusinessCalendar(
            timezone=due.text("timezone"),
            workdays=frozenset(WEEKDAYS.index(day) for day in workdays),
            opens=due.time("opens"),
            closes=due.time("closes"),
            country=due.text("country"),
        )
    except ValueError as e:
        raise ConfigError(f"{due.path}: {e}") from None
    due.done()
    return calendar


def _install_window(table: _Table) -> InstallWindow | None:
    text = table.text("install_window")
    table.done()
    try:
        return InstallWindow.setting(text)
    except ValueError as e:
        raise ConfigError(f"{table.name('install_window')}: {e} (or {ANY_TIME!r})") from None


def _alert(table: _Table) -> AlertRule:
    rule = AlertRule(
        open_after=table.integer("open_after", minimum=1),
        close_after=table.integer("close_after", minimum=1),
    )
    table.done()
    return rule


def _kind(table: _Table) -> tuple[str, str]:
    kind = table.choice("category", CATEGORIES), table.choice("severity", SEVERITIES)
    table.done()
    return kind


def _rules(value: object) -> tuple[Rule, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError("rules must be a non-empty array of tables ([[rules]])")
    rules = tuple(_rule(index, _Table(item, f"rules[{index}]")) for index, item in enumerate(value))
    if rules[-1].when:
        raise ConfigError(
            f"rules[{len(rules) - 1}] is the last rule, so it must have no conditions:"
            " every incident needs a decision"
        )
    return rules


def _rule(index: int, table: _Table) -> Rule:
    when: dict[str, frozenset[str] | bool] = {}
    for key, options in _CHOICE_CONDITIONS.items():
        if key in table:
            when[key] = table.choices(key, options)
    for key in _BOOL_CONDITIONS:
        if key in table:
            when[key] = table.flag(key)
    action = table.choice("action", ACTIONS)
    due_text = table.text("due")
    try:
        due = DueRule.parse(due_text)
    except ValueError as e:
        raise ConfigError(f"{table.name('due')}: {e}") from None
    reason = table.text("reason")
    table.done()
    return Rule(index=index, when=when, action=action, due=due, reason=reason)
