"""The care report: periods, handling, reasons (pure), and the PDF it renders (WeasyPrint)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import re
from importlib import resources
from typing import Any

import msgspec
import pytest

from careline.coordinator import care_report as cr
from careline.coordinator import i18n
from careline.coordinator.storage.views import IncidentLine
from careline.shared.errors import ConfigError

UTC = dt.UTC


def test_month_bounds_are_the_customers_local_month() -> None:
    start, end = cr.month_bounds("2026-11", "Asia/Ho_Chi_Minh")
    assert start == dt.datetime(2026, 10, 31, 17, tzinfo=UTC)
    assert end == dt.datetime(2026, 11, 30, 17, tzinfo=UTC)
    start, end = cr.month_bounds("2026-12", "UTC")
    assert (start.month, end.year, end.month) == (12, 2027, 1)
    for bad in ("2026-13", "11/2026", "2026", ""):
        with pytest.raises(ConfigError):
            cr.month_bounds(bad, "UTC")


def incident(opened: dt.datetime, **changes: Any) -> IncidentLine:
    """A resolved high disk incident on KT-01, handled on site within its due time."""
    row = IncidentLine(
        id=1, agent_id="a1", customer_id=1, kind="reported", subject="", category="disk",
        severity="high", status="resolved", opened_by="lan", opened_at=opened,
        updated_at=opened, resolved_at=opened + dt.timedelta(hours=5), signals=1, touched=True,
        detail="", resolution="done", waiting_on=None, customer="Minh Anh", hostname="KT-01",
        action="onsite_reinstall", covered=True, fee_vnd=500_000,
        due_at=opened + dt.timedelta(hours=6))
    return dataclasses.replace(row, **changes)


def test_handling_and_time_to_resolution() -> None:
    opened = dt.datetime(2026, 11, 3, 2, tzinfo=UTC)
    line = cr.incident_line(incident(opened))
    assert (line["handled"], line["hours_to_resolve"], line["on_time"]) == ("on_site", 5.0, True)
    late = cr.incident_line(incident(opened, due_at=opened + dt.timedelta(hours=4)))
    assert late["on_time"] is False
    still_open = cr.incident_line(incident(opened, resolved_at=None, action="remote_update"))
    assert (still_open["handled"], still_open["on_time"], still_open["hours_to_resolve"]) == (
        "remote", None, None)
    assert cr.handled(None) is None


def test_attention_reasons() -> None:
    assert cr.attention_reasons("online", "warranty", 0) == []
    assert cr.attention_reasons("off", "warranty", 0) == []
    assert cr.attention_reasons("offline", "not_covered", 2) == ["open_incidents", "offline", "not_covered"]


def sample() -> dict[str, Any]:
    """What `report.care` returns, as it arrives over the wire (ISO strings)."""
    t = dt.datetime(2026, 11, 10, 3, tzinfo=UTC)
    data = {
        "customer": {"id": 1, "name": "Công ty Minh Anh", "timezone": "Asia/Ho_Chi_Minh"},
        "month": "2026-11", "first_day": dt.date(2026, 11, 1), "last_day": dt.date(2026, 11, 30),
        "generated_at": t, "vendor": {"name": "Phần mềm Kế Toán Việt", "logo": None},
        "machines": [
            {"id": "a1", "hostname": "KETOAN-01", "status": "online", "coverage": "warranty",
             "tier": None, "until": dt.date(2027, 1, 14), "products": {"KeToan": "2026.2"}},
            {"id": "a2", "hostname": "<b>PC</b>", "status": "offline", "coverage": "maintenance",
             "tier": "standard", "until": dt.date(2027, 6, 1), "products": {}},
        ],
        "incidents": [cr.incident_line(incident(
            t, id=7, hostname="KETOAN-01", resolved_at=t + dt.timedelta(hours=3)))],
        "updates": [{"product": "KeToan", "version": "2026.2", "kind": "regulation",
                     "regulation_ref": "Thông tư 99/2025/TT-BTC", "effective": dt.date(2026, 1, 1),
                     "machines": 2, "first": t, "last": t}],
        "visits": [{"id": 3, "hostname": "KETOAN-01", "action": "onsite_reinstall", "due_at": t,
                    "completed_at": t, "status": "completed", "fee_vnd": 500_000, "charged": True}],
        "attention": [{"hostname": "<b>PC</b>", "reasons": ["offline"]}],
        "renewal": [{"hostname": "KETOAN-01", "coverage": "warranty", "tier": None,
                     "ends_on": dt.date(2027, 1, 14), "days_left": 45}],
        "totals": {"incidents": 1, "resolved": 1, "on_time": 1, "on_site": 1, "remote": 0,
                   "fees_vnd": 500_000, "visits_waived": 0, "updates_installed": 2},
    }
    return msgspec.json.decode(msgspec.json.encode(data))


def test_html_escapes_agent_chosen_names_and_speaks_vietnamese() -> None:
    html = cr.render_html(sample(), "vi")
    assert "&lt;b&gt;PC&lt;/b&gt;" in html
    assert "<b>PC</b>" not in html
    assert "Báo cáo chăm sóc" in html
    assert "500.000\xa0₫" in html
    english = cr.render_html(sample(), "en")
    assert "Care report" in english
    assert "Báo cáo chăm sóc" not in english


def test_pdf_has_the_machines_amounts_and_embedded_vietnamese_font() -> None:
    from pypdf import PdfReader
    from pypdf.generic import DictionaryObject

    pdf = cr.render_pdf(sample(), "vi")
    reader = PdfReader(io.BytesIO(pdf))
    text = "\n".join(page.extract_text() for page in reader.pages)
    for expected in ("Công ty Minh Anh", "KETOAN-01", "<b>PC</b>", "500.000", "Thông tư 99/2025/TT-BTC",
                     "Bảo hành", "Gia hạn", "còn 45 ngày", "Phần mềm Kế Toán Việt"):
        assert expected in text, expected
    fonts = set()
    for page in reader.pages:
        resources = page["/Resources"].get_object()
        assert isinstance(resources, DictionaryObject)
        page_fonts = resources["/Font"].get_object()
        assert isinstance(page_fonts, DictionaryObject)
        for font in page_fonts.values():
            font = font.get_object()
            descriptor = (font.get("/FontDescriptor") or
                          font["/DescendantFonts"][0].get_object()["/FontDescriptor"]).get_object()
            assert any(k in descriptor for k in ("/FontFile", "/FontFile2", "/FontFile3")), font
            fonts.add(str(font["/BaseFont"]))
    assert any("DejaVu" in f for f in fonts), fonts


def _msgids(template_text: str) -> set[str]:
    return set(re.findall(r"""_\(\s*["']([^"']+)["']""", template_text))


@pytest.mark.parametrize("domain", ["web", "report"])
def test_every_text_has_a_vietnamese_translation(domain: str) -> None:
    templates = resources.files("careline.coordinator.web") / "templates"
    ids: set[str] = set()
    for template in templates.iterdir():
        is_report = template.name == "care_report.html"
        if template.name.endswith(".html") and is_report == (domain == "report"):
            ids |= _msgids(template.read_text())
    catalog = i18n.translations("vi", domain)
    missing = sorted(i for i in ids if catalog.gettext(i) == i)
    assert not missing, missing


def test_the_vendor_logo_is_inlined(tmp_path) -> None:
    logo = tmp_path / "logo.png"
    logo.write_bytes(b"\x89PNG\r\n\x1a\n-not-really")
    assert cr.logo_data_uri(str(logo)) == "data:image/png;base64,iVBORw0KGgotbm90LXJlYWxseQ=="
    assert cr.logo_data_uri("") is None
    with pytest.raises(ConfigError, match="vendor_logo"):
        cr.logo_data_uri(str(tmp_path / "missing.svg"))
    data = sample()
    data["vendor"]["logo"] = cr.logo_data_uri(str(logo))
    assert 'src="data:image/png;base64,' in cr.render_html(data, "vi")
