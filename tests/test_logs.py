"""Log lines no peer can forge (issue 12, item 8): shared/logs.py."""

from __future__ import annotations

import io
import logging

import pytest

from careline.shared.logs import LOG_FORMAT, SafeFormatter, safe_text


@pytest.mark.parametrize(("raw", "shown"), [
    ("pc-01", "pc-01"),
    ("Kế toán", "Kế toán"),  # Vietnamese stays readable
    ("pc\n2026-01-01 ERROR forged", "pc\\n2026-01-01 ERROR forged"),
    ("a\rb\x1b[31mred", "a\\rb\\x1b[31mred"),
    ("nul\x00", "nul\\x00"),
])
def test_safe_text_escapes_what_could_forge_a_line_or_drive_a_terminal(raw, shown):
    assert safe_text(raw) == shown


def test_safe_text_cuts_long_values():
    assert safe_text("x" * 500, limit=10) == "x" * 10 + "…"


def test_formatter_keeps_one_line_per_record_and_marks_tracebacks():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(SafeFormatter(LOG_FORMAT))
    logger = logging.getLogger("careline.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("enrolled %s", "pc\n2026-01-01 00:00:00,000 ERROR careline: forged")
        try:
            raise ValueError("bad hostname\nWARNING injected")
        except ValueError:
            logger.exception("flush failed")
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert "\\n2026-01-01" in lines[0]
    assert len([ln for ln in lines if "forged" in ln]) == 1
    records = [ln for ln in lines if not ln.startswith("| ")]
    assert len(records) == 2  # every traceback line, injected or not, is marked
    assert any(ln == "| WARNING injected" for ln in lines)
