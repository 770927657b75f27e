"""Is a newly enrolled PC one we already know? Hardware identities in, a link decision out.

A reinstall (new OS, new agent key) must come back as the same machine, with its history
and its contract seat. A strong match is the same SMBIOS UUID *and* the same boot-disk
serial; it links automatically when the known machine is not online (a PC being reinstalled
cannot be). Anything weaker (a cloned disk image in another PC: same disk, other UUID; a
new motherboard: same disk, other UUID) or a match with a machine still online is only
proposed to a technician (`careline agents candidates`, `careline agents replace`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from careline.shared.hardware import FIELDS

Strength = Literal["strong", "weak"]


def matched(new: Mapping[str, str | None], old: Mapping[str, str | None]) -> tuple[str, ...]:
    """The identity fields both machines report with the same value."""
    return tuple(f for f in FIELDS if new.get(f) and new.get(f) == old.get(f))


def strength(fields: Sequence[str]) -> Strength | None:
    if "uuid" in fields and "disk" in fields:
        return "strong"
    return "weak" if fields else None


@dataclass(frozen=True)
class Candidate:
    """A known machine of the same customer whose hardware matches the new one."""

    machine: str
    fields: tuple[str, ...]  # matching identity fields
    online: bool  # its agent is connected now
    revoked: bool = False

    @property
    def strength(self) -> Strength | None:
        return strength(self.fields)


@dataclass(frozen=True)
class Link:
    kind: Literal["auto", "propose", "new"]
    machine: str | None  # the machine linked to (auto)
    reason: str


def link_decision(candidates: Sequence[Candidate]) -> Link:
    """Link to the one strongly matching machine that is not online; otherwise a new
    machine, proposed to a technician when anything matched."""
    found = [c for c in candidates if c.strength is not None]
    if not found:
        return Link("new", None, "no known machine of this customer has this hardware")
    strong = [c for c in found if c.strength == "strong"]
    if len(strong) == 1 and not strong[0].online:
        state = "revoked" if strong[0].revoked else "offline"
        return Link("auto", strong[0].machine,
                    f"same system UUID and boot disk as {strong[0].machine} ({state})")
    if len(strong) > 1:
        why = f"several machines share this hardware: {', '.join(c.machine for c in strong)}"
    elif strong:
        why = f"same hardware as {strong[0].machine}, which is online"
    else:
        why = "; ".join(f"{c.machine} shares {', '.join(c.fields)}" for c in found)
    return Link("propose", None, why)
