"""Policy overrides: vendor -> customer -> site -> machine.

Contracts differ: a big customer has its own on-site reinstall fee, a shop's alert
thresholds differ. The vendor file is merged over the built-in defaults (config.py); each
customer, site and machine may then override single values, stored in the database as
(level, key, value). Keys are dotted paths of the policy file (`fees.onsite_reinstall_vnd`,
`alerts.agent_offline.open_after`, `rules[5].due`); only values under OVERRIDABLE may vary
by customer, and only keys the policy already has. The effective policy is validated as a
whole by the same code as the file, so an override is refused exactly like a bad file.

Pure: data in, a Policy (with `sources`: which level set each value) out.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from careline.shared.errors import ConfigError

from .config import Policy, build_policy, merge

LEVELS = ("default", "vendor", "customer", "site", "machine")
OVERRIDE_LEVELS = LEVELS[2:]
# What may vary by customer: money, due times and their rules, alert thresholds, the
# offline rules, install windows, when notifications ignore quiet hours. Tiers, warranty
# and incident kinds are the vendor's product, not a contract.
OVERRIDABLE = ("fees.", "due.", "machine.", "alerts.", "rollouts.", "notify.", "rules[")
# The customer's own setting decides these (`careline customers add --timezone`).
_NOT_OVERRIDABLE = {"due.timezone": "set the customer's time zone instead"}
# What a rule does and by when may differ by contract; what it matches and says may not.
_RULE_FIELDS = ("action", "due")
_RULE_KEY = re.compile(r"^rules\[(\d+)\]\.(\w+)$")

Override = tuple[str, str, Any]  # (level, key, value), applied in order: later wins


def target(level: str, ident: int | str) -> str:
    """How an override's owner is stored: "customer:3", "site:7", "machine:ag-..."."""
    if level not in OVERRIDE_LEVELS:
        raise ConfigError(f"unknown override level {level!r}")
    return f"{level}:{ident}"


def chain(
    by_target: Mapping[str, Mapping[str, Any]], customer_id: int | None,
    site_id: int | None = None, machine_id: str | None = None,
) -> list[Override]:
    """The overrides in the order they apply: the customer's, the site's, the machine's
    (a level left None is skipped: a customer's own policy has no site or machine)."""
    owners = [("customer", customer_id), ("site", site_id), ("machine", machine_id)]
    return [
        (level, key, value)
        for level, ident in owners if ident is not None
        for key, value in sorted(by_target.get(target(level, ident), {}).items())
    ]


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every leaf of policy data by its dotted key; `[[rules]]` as `rules[i].field`."""
    leaves: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            leaves.update(flatten(value, f"{name}."))
        elif key == "rules" and not prefix and isinstance(value, list):
            for index, rule in enumerate(value):
                if isinstance(rule, dict):
                    leaves.update(flatten(rule, f"rules[{index}]."))
        else:
            leaves[name] = value
    return leaves


def parse_assignment(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` as on the command line; VALUE is read as a TOML value (450000, true,
    ["mon", "tue"], "16:00"), and taken as a plain string when it is not one (16:00)."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key or not raw:
        raise ConfigError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    return "a string"


def _assign(data: dict[str, Any], key: str, value: Any) -> None:
    rule = _RULE_KEY.match(key)
    if rule:
        data["rules"][int(rule.group(1))][rule.group(2)] = value
        return
    *tables, leaf = key.split(".")
    for table in tables:
        data = data[table]
    data[leaf] = value


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class PolicyLayers:
    """The built-in defaults and the vendor file, raw; overrides resolve on top of them
    (each distinct set of overrides is built and validated once, then cached)."""

    def __init__(self, default: dict[str, Any], vendor: dict[str, Any] | None = None) -> None:
        self.vendor = vendor or {}
        self.base = merge(default, self.vendor)
        self._leaves = flatten(self.base)
        vendor_keys = set(flatten(self.vendor))
        if "rules" in self.vendor:  # a vendor rule list replaces the defaults whole
            vendor_keys |= {k for k in flatten(self.base) if k.startswith("rules[")}
        self._vendor_keys = frozenset(vendor_keys)
        self._resolve = lru_cache(maxsize=256)(self._build)

    def check(self, key: str, value: Any) -> None:
        """Refuse an override of a key the policy lacks, may not vary, or of the wrong
        type; the error names the key."""
        leaves = flatten(self.base)
        if key not in leaves:
            raise ConfigError(f"unknown policy key {key!r}")
        if key in _NOT_OVERRIDABLE:
            raise ConfigError(f"{key} cannot be overridden: {_NOT_OVERRIDABLE[key]}")
        rule = _RULE_KEY.match(key)
        if rule and rule.group(2) not in _RULE_FIELDS:
            raise ConfigError(f"{key} cannot be overridden (of a rule, only"
                              f" {' and '.join(_RULE_FIELDS)})")
        if not key.startswith(OVERRIDABLE):
            raise ConfigError(f"{key} cannot be overridden per customer, site or machine"
                              f" (only {', '.join(k.rstrip('.[') for k in OVERRIDABLE)})")
        expected = _kind(leaves[key])
        if _kind(value) != expected:
            raise ConfigError(f"{key} must be {expected}, got {value!r}")

    def resolve(self, overrides: Iterable[Override] = ()) -> Policy:
        """The effective policy with `overrides` applied in order (customer, site,
        machine); ConfigError names the key when the result is not a valid policy."""
        return self._resolve(tuple((lvl, k, _frozen(v)) for lvl, k, v in overrides))

    def _build(self, overrides: tuple[Override, ...]) -> Policy:
        data = copy.deepcopy(self.base)
        sources = dict.fromkeys(self._vendor_keys, "vendor")
        for level, key, value in overrides:
            if level not in OVERRIDE_LEVELS:
                raise ConfigError(f"unknown override level {level!r}")
            self.check(key, list(value) if isinstance(value, tuple) else value)
            _assign(data, key, list(value) if isinstance(value, tuple) else value)
            sources[key] = level
        try:
            return build_policy(data, sources)
        except ConfigError as e:
            where = ", ".join(f"{lvl} {k}" for lvl, k, _ in overrides)
            raise ConfigError(f"{e} (with the overrides: {where})" if where else str(e)) from None

    def value(
        self, key: str, by_target: Mapping[str, Mapping[str, Any]], customer_id: int | None,
        site_id: int | None = None, machine_id: str | None = None,
    ) -> tuple[Any, str]:
        """One value in effect for a machine and the level it comes from, without building
        its whole policy: what a loop over thousands of machines asks (rollout windows).
        Agrees with `resolve(chain(...))` for every set of overrides `resolve` accepts."""
        found = self._leaves[key], ("vendor" if key in self._vendor_keys else "default")
        for level, ident in (("customer", customer_id), ("site", site_id),
                             ("machine", machine_id)):
            owned = by_target.get(target(level, ident), {}) if ident is not None else {}
            if key in owned:
                found = owned[key], level
        return found

    def show(self, overrides: Iterable[Override] = ()) -> list[dict[str, Any]]:
        """Every overridable value in effect and the level it comes from."""
        applied = list(overrides)
        policy = self.resolve(applied)
        data = copy.deepcopy(self.base)
        for _level, key, value in applied:
            _assign(data, key, value)
        return [
            {"key": key, "value": value, "source": policy.source(key)}
            for key, value in flatten(data).items() if _overridable(key)
        ]


def _overridable(key: str) -> bool:
    rule = _RULE_KEY.match(key)
    return (key.startswith(OVERRIDABLE) and key not in _NOT_OVERRIDABLE
            and (rule is None or rule.group(2) in _RULE_FIELDS))
