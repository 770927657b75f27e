"""A PC's hardware identity: what stays when its disk is wiped and the agent reinstalled.

The agent reads the SMBIOS system UUID and serial, the boot disk's serial and the primary
network card's MAC (agent/platform.py), and sends only salted SHA-256 hashes of them: the
coordinator can tell two reports of the same PC apart from two different PCs without
learning the serial numbers. Placeholder values that many boards report ("To Be Filled By
O.E.M.", all-zero UUIDs) are dropped, or every such PC would look like the same one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

FIELDS = ("uuid", "serial", "disk", "mac")
_PLACEHOLDERS = frozenset({
    "", "none", "null", "n/a", "na", "default string", "to be filled by o.e.m.",
    "system serial number", "not specified", "not applicable", "0", "123456789",
    "system product name", "o.e.m.", "oem",
})


def _normal(field: str, value: str) -> str | None:
    """The value as compared, or None for a placeholder that identifies nothing."""
    text = value.strip().lower()
    if field in ("uuid", "mac"):
        text = re.sub(r"[^0-9a-z]", "", text)
        if not text or set(text) <= {"0"} or set(text) <= {"f"}:
            return None
    if text in _PLACEHOLDERS:
        return None
    return text


def hashed(raw: Mapping[str, str | None]) -> dict[str, str]:
    """Hash each known field that has a real value; unknown fields are ignored."""
    out = {}
    for field in FIELDS:
        value = raw.get(field)
        text = _normal(field, value) if isinstance(value, str) else None
        if text is not None:
            out[field] = hashlib.sha256(f"careline-hw\0{field}\0{text}".encode()).hexdigest()
    return out


def valid(report: Mapping[str, str]) -> bool:
    """A report as the coordinator accepts it: known fields, each a SHA-256 hex digest."""
    return all(field in FIELDS and re.fullmatch(r"[0-9a-f]{64}", value) is not None
               for field, value in report.items())
