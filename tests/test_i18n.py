"""coordinator.i18n: languages from browsers, money with Vietnamese grouping, local times."""

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from careline.coordinator import i18n


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "vi"),
        ("", "vi"),
        ("en-US,en;q=0.9", "en"),
        ("fr-FR, vi;q=0.5, en;q=0.4", "vi"),
        ("de, en;q=0.1", "en"),
        ("de", "vi"),
        ("en;q=0.2, vi-VN;q=0.8", "vi"),
        ("en;q=bad, vi", "vi"),
    ],
)
def test_negotiate_picks_the_most_preferred_supported_language(header: str | None, expected: str) -> None:
    assert i18n.negotiate(header) == expected


@pytest.mark.parametrize(("stored", "expected"), [("en", "en"), ("en_GB", "en"), ("vi-VN", "vi"),
                                                  ("", "vi"), (None, "vi"), ("xx-nope", "vi"), ("fr", "vi")])
def test_language_of_a_stored_preference(stored: str | None, expected: str) -> None:
    assert i18n.language(stored) == expected


def test_vnd_uses_vietnamese_grouping() -> None:
    assert i18n.format_vnd(500_000) == "500.000\xa0₫"
    assert i18n.format_vnd(0) == "0\xa0₫"


@given(st.integers(min_value=0, max_value=10**12))
def test_vnd_digits_survive_formatting(amount: int) -> None:
    shown = i18n.format_vnd(amount)
    assert int(shown.removesuffix("\xa0₫").replace(".", "")) == amount


def test_times_are_shown_in_the_readers_zone() -> None:
    moment = datetime(2026, 11, 30, 2, 30, tzinfo=UTC)
    assert "09:30" in i18n.format_time(moment, "Asia/Ho_Chi_Minh", "vi")
    assert "9:30" in i18n.format_time(moment, "Asia/Ho_Chi_Minh", "en")


def test_english_needs_no_catalog_and_a_missing_catalog_falls_back() -> None:
    assert i18n.translations("en", "web").gettext("Machines") == "Machines"
    assert i18n.translations("vi", "no-such-domain").gettext("Machines") == "Machines"
