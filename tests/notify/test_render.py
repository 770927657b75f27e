"""coordinator.notify.render: messages in the recipient's language and zone, money in VND,
every text of every template translated in notify.po."""

from __future__ import annotations

import io
from collections.abc import Sequence
from importlib import resources

import pytest
from babel.messages.pofile import read_po
from jinja2.ext import babel_extract

from careline.coordinator.notify import render

DISK = {"incident": 7, "kind": "disk_failing", "subject": "sda", "category": "disk",
        "severity": "high", "detail": "SMART health check failed", "machine": "ab" * 20,
        "hostname": "KT-01", "customer": "Minh Anh", "action": "onsite_reinstall",
        "covered": True, "fee_vnd": 500_000, "due_at": "2026-12-01T10:30:00+00:00",
        "opened_at": "2026-12-01T03:00:00+00:00"}


def singular(text: str | Sequence[str | None] | None) -> str:
    """A message's text; babel and jinja give a plural message as (singular, plural, ...)."""
    if text is None or isinstance(text, str):
        return text or ""
    return text[0] or ""


def catalog_ids() -> dict[str, str]:
    source = resources.files("careline.coordinator").joinpath("locale/vi/LC_MESSAGES/notify.po")
    with source.open("rb") as po:
        return {singular(m.id): singular(m.string) for m in read_po(po) if m.id}


def template_ids() -> set[str]:
    found = set(render.LABELS.values())
    for template in resources.files("careline.coordinator.notify").joinpath("templates").iterdir():
        for _, _, message, _ in babel_extract(io.BytesIO(template.read_bytes()), ("_", "gettext"), [], {
                "trim_blocks": "true", "lstrip_blocks": "true"}):
            found.add(singular(message))
    return found


def test_every_text_has_a_vietnamese_translation():
    catalog = catalog_ids()
    used = template_ids()
    assert used, "no texts found in the templates"
    missing = sorted(m for m in used if not catalog.get(m))
    assert missing == []
    assert sorted(set(catalog) - used) == []  # nothing stale either


def test_incident_in_vietnamese_with_fee_and_local_due_time():
    subject, text = render.render("incident.opened", [DISK], lang="vi",
                                  timezone="Asia/Ho_Chi_Minh", recipient="lan")
    assert subject == "Sự cố #7: ổ cứng hỏng trên máy KT-01 (Minh Anh)"
    assert "Phí: 500.000\xa0₫" in text
    assert "Hạn xử lý: 17:30 1/12/26" in text  # 10:30 UTC in Ho Chi Minh City
    assert "Quyết định: cài đặt lại tại chỗ" in text


def test_same_incident_in_english_in_another_zone():
    subject, text = render.render("incident.opened", [DISK], lang="en", timezone="Europe/Berlin",
                                  recipient="anna")
    assert subject == "Incident #7: failing disk on KT-01 (Minh Anh)"
    assert "Fee: 500.000\xa0₫" in text  # đồng keep their own grouping in English too
    assert "11:30" in text.split("Due:")[1]  # 10:30 UTC is 11:30 in Berlin in December


def test_mass_event_names_the_count():
    items = [{**DISK, "kind": "agent_offline", "hostname": f"pc{n}", "detail": ""}
             for n in range(40)]
    subject, text = render.render("incident.opened", items, lang="vi",
                                  timezone="Asia/Ho_Chi_Minh", recipient="lan")
    assert subject == "40 máy của Minh Anh mất kết nối"
    assert "- pc0" in text
    assert "... và 10 máy khác" in text


@pytest.mark.parametrize("event", ["job.failed", "update.installed"])
def test_job_messages(event):
    facts = {"hostname": "KT-01", "customer": "Minh Anh", "product": "KeToan",
             "version": "2026.2", "outcome": "rolled_back" if event == "job.failed" else "installed",
             "reason": "check failed"}
    subject, text = render.render(event, [facts], lang="en", timezone="UTC", recipient="x")
    assert "KT-01" in subject
    assert "KeToan 2026.2" in text


def test_coverage_offer_and_digest_render():
    machines = [{"customer": "Minh Anh", "hostname": "KT-01", "coverage": "warranty",
                 "ends_on": "2026-12-20", "days_left": 19}]
    subject, text = render.render("coverage.ending", [{"within_days": 30, "machines": machines}],
                                  lang="vi", timezone="Asia/Ho_Chi_Minh", recipient="c")
    assert "sắp hết hạn: 1 máy" in subject
    assert "gia hạn" in text
    subject, text = render.render("digest.daily", [{
        "visits": [{"id": 3, "customer": "Minh Anh", "hostname": "KT-01",
                    "action": "onsite_reinstall", "due_at": DISK["due_at"], "overdue": True}],
        "open_incidents": 2, "updates": [{"event": "incident.updated", "hostname": "KT-01",
                                          "customer": "Minh Anh", "incident": 7}]}],
        lang="en", timezone="Asia/Ho_Chi_Minh", recipient="lan")
    assert subject == "Careline daily digest for lan"
    assert "#3 Minh Anh / KT-01: on-site reinstall" in text
    assert "OVERDUE" in text
    assert "incident updated: KT-01 (#7)" in text


def test_vendor_template_override(tmp_path):
    (tmp_path / "job.txt").write_text("{{ _('Update failed on %(host)s (%(customer)s)', "
                                      "host=first.hostname, customer=first.customer) }}\nCall us!\n")
    subject, text = render.render("job.failed", [{"hostname": "KT-01", "customer": "Minh Anh"}],
                                  lang="vi", timezone="UTC", recipient="x", overrides=tmp_path)
    assert subject == "Cập nhật thất bại trên máy KT-01 (Minh Anh)"
    assert text == "Call us!\n"


def test_care_report_summary_in_vietnamese_and_english():
    facts = {"customer_id": 1, "customer": "Minh Anh", "month": "2026-11",
             "machines": ["KT-01", "KT-02"], "attention": ["KT-02"], "renewal": [],
             "totals": {"incidents": 3, "resolved": 2, "on_time": 2, "on_site": 1, "remote": 2,
                        "fees_vnd": 500_000, "updates_installed": 4}}
    subject, text = render.render("report.care_monthly", [facts], lang="vi",
                                  timezone="Asia/Ho_Chi_Minh", recipient="c", attached=True)
    assert subject == "Báo cáo chăm sóc tháng 2026-11: Minh Anh"
    assert "- KT-01" in text
    assert "Máy cần chú ý: KT-02" in text
    assert "500.000\xa0₫" in text
    assert "đính kèm" in text
    subject, text = render.render("report.care_monthly", [facts], lang="en", timezone="UTC",
                                  recipient="c")
    assert subject == "Care report 2026-11: Minh Anh"
    assert "Incidents: 3 (1 on site, 2 remotely), 2 of 2 resolved on time" in text
    assert "attached" not in text
    assert "web console" in text
