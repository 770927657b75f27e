"""Warranty and maintenance entitlement: what covers a machine on a given day.

Warranty and every maintenance package are *rows*: a first day, a last day (inclusive) and a
tier saying what is included. A machine's entitlement on a day is the best row covering that
day. Rows that overlap or touch (one ends the day before the next starts) form one stretch of
continuous coverage; `ends_on` is the last day of that stretch, so a customer who renewed on
time is not reported as expiring.

Choices (documented for the lead):
- "Best" of overlapping rows: the tier that includes most (count of remote_fixes,
  regulation_updates, bug_fixes, fee waiver; then more on-site visits), tie -> the row that
  ends latest, tie -> maintenance over warranty, then the higher package id.
- Warranty runs from `signed_on` for `warranty_months` calendar months; month ends clamp, so a
  contract signed Jan 31 with 1 month of warranty is covered through Feb 27 (the day before
  "Feb 31" clamped to Feb 28). `warranty_months = 0` means no warranty.
- A machine that joined a contract late is covered from the day it joined, but the warranty
  still ends `warranty_months` after the contract was signed (warranty belongs to the contract).
- Pure: no clock is read; callers pass the customer's local date.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Any, Literal

from careline.shared.errors import ConfigError

Kind = Literal["warranty", "maintenance", "not_covered"]
_DAY = timedelta(days=1)


@dataclass(frozen=True)
class Tier:
    """What a coverage row includes. Warranty is a tier too (the policy's [warranty] table)."""

    name: str
    remote_fixes: bool
    regulation_updates: bool
    onsite_visits_per_year: int
    waive_onsite_reinstall_fee: bool
    bug_fixes: bool = True

    def __post_init__(self) -> None:
        if self.onsite_visits_per_year < 0:
            raise ValueError("onsite_visits_per_year must be >= 0")

    @property
    def rank(self) -> tuple[int, int]:
        """How much the tier includes, to pick the best of overlapping rows."""
        flags = (
            self.remote_fixes,
            self.regulation_updates,
            self.bug_fixes,
            self.waive_onsite_reinstall_fee,
        )
        return sum(flags), self.onsite_visits_per_year


NOTHING = Tier("not_covered", False, False, 0, False, bug_fixes=False)
"""What a machine without coverage gets included: nothing, so everything is billable."""


def add_months(day: date, months: int) -> date:
    """`day` moved by whole calendar months, clamped to the end of a shorter month."""
    years, month0 = divmod(day.month - 1 + months, 12)
    year, month = day.year + years, month0 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


@dataclass(frozen=True)
class Contract:
    id: int
    signed_on: date
    warranty_months: int = 12

    def __post_init__(self) -> None:
        if self.warranty_months < 0:
            raise ValueError("warranty_months must be >= 0")

    @property
    def warranty_ends_on(self) -> date | None:
        """Last day of warranty, or None when the contract has no warranty."""
        if self.warranty_months == 0:
            return None
        return add_months(self.signed_on, self.warranty_months) - _DAY


@dataclass(frozen=True)
class MaintenancePackage:
    id: int
    contract_id: int
    start: date
    end: date  # last covered day, inclusive
    tier: str

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"maintenance package {self.id} ends before it starts")


@dataclass(frozen=True)
class _Row:
    start: date
    end: date
    tier: Tier
    package_id: int | None  # None: the contract's warranty


@dataclass(frozen=True)
class Entitlement:
    """A machine's coverage on one day (`at`), with what the reports and `decide` need."""

    at: date
    kind: Kind
    includes: Tier
    ends_on: date | None = None  # last day of the continuous coverage containing `at`
    next_coverage_starts: date | None = None  # first covered day after `at`'s stretch or gap
    expiring_soon: bool = False  # ends_on within the configured days of `at`
    package_id: int | None = None  # the maintenance package chosen, None for warranty

    @property
    def covered(self) -> bool:
        return self.kind != "not_covered"

    @property
    def tier(self) -> str | None:
        """The maintenance tier's name; None under warranty or without coverage."""
        return self.includes.name if self.kind == "maintenance" else None

    @property
    def label(self) -> str:
        return f"maintenance:{self.tier}" if self.kind == "maintenance" else self.kind

    @property
    def days_left(self) -> int | None:
        """Covered days left after `at` (0 on the last day); None when not covered."""
        return None if self.ends_on is None else (self.ends_on - self.at).days

    def to_dict(self) -> dict[str, Any]:
        def iso(day: date | None) -> str | None:
            return None if day is None else day.isoformat()

        return {
            "at": self.at.isoformat(),
            "kind": self.kind,
            "tier": self.tier,
            "label": self.label,
            "ends_on": iso(self.ends_on),
            "days_left": self.days_left,
            "next_coverage_starts": iso(self.next_coverage_starts),
            "expiring_soon": self.expiring_soon,
            "package_id": self.package_id,
            "includes": asdict(self.includes),
        }


def entitlement_at(
    contract: Contract,
    packages: Iterable[MaintenancePackage],
    at: date,
    *,
    machine_joined_on: date | None = None,
    tiers: Mapping[str, Tier],
    warranty_tier: Tier,
    expiring_within_days: int = 30,
) -> Entitlement:
    """The entitlement of a machine on `contract` on local date `at`.

    Packages of other contracts are ignored. A package naming a tier missing from `tiers`
    raises ConfigError (checked for every package, not only the ones covering `at`).
    """
    rows = _rows(contract, packages, machine_joined_on, tiers, warranty_tier)
    covering = [row for row in rows if row.start <= at <= row.end]
    if not covering:
        later = min((row.start for row in rows if row.start > at), default=None)
        return Entitlement(at, "not_covered", NOTHING, next_coverage_starts=later)
    best = max(
        covering,
        key=lambda r: (r.tier.rank, r.end, r.package_id is not None, r.package_id or 0),
    )
    ends_on = _stretch_end(rows, max(row.end for row in covering))
    return Entitlement(
        at,
        "warranty" if best.package_id is None else "maintenance",
        best.tier,
        ends_on=ends_on,
        next_coverage_starts=min((r.start for r in rows if r.start > ends_on), default=None),
        expiring_soon=(ends_on - at).days <= expiring_within_days,
        package_id=best.package_id,
    )


def expiring(entitlement: Entitlement, within_days: int) -> bool:
    """Whether to offer a renewal: coverage ends within `within_days` and none is booked later.

    Unlike `expiring_soon`, a package already bought to start after a gap suppresses the offer.
    Use with 30/15/7 for the usual reminder steps.
    """
    days_left = entitlement.days_left
    return (
        days_left is not None
        and days_left <= within_days
        and entitlement.next_coverage_starts is None
    )


def _rows(
    contract: Contract,
    packages: Iterable[MaintenancePackage],
    joined_on: date | None,
    tiers: Mapping[str, Tier],
    warranty_tier: Tier,
) -> list[_Row]:
    """Coverage rows sorted by start, clipped to the day the machine joined."""
    rows = []
    if contract.warranty_ends_on is not None:
        rows.append(_Row(contract.signed_on, contract.warranty_ends_on, warranty_tier, None))
    for package in packages:
        if package.contract_id != contract.id:
            continue
        tier = tiers.get(package.tier)
        if tier is None:
            raise ConfigError(
                f"maintenance package {package.id} has tier {package.tier!r}, which the policy"
                f" does not define (known tiers: {', '.join(sorted(tiers)) or 'none'})"
            )
        rows.append(_Row(package.start, package.end, tier, package.id))
    if joined_on is not None:
        rows = [
            _Row(max(row.start, joined_on), row.end, row.tier, row.package_id)
            for row in rows
            if row.end >= joined_on
        ]
    return sorted(rows, key=lambda row: row.start)


def _stretch_end(rows: list[_Row], end: date) -> date:
    """Follow rows that overlap or touch `end` (rows sorted by start) to the stretch's last day."""
    for row in rows:
        if row.start > end + _DAY:
            break
        end = max(end, row.end)
    return end
